"""The Ray task that qualifies a pool's engine: the engine loaded with the tasks' settings and transformers beside
it, both run on the longest rows of the input sample, a verdict per task (engines/qualification.py judges); an
encoder pool that agrees is then timed on the same rows against transformers in float32 (`pace`).

It runs before the pools start, on a worker (the driver loads no model); the driver gets the verdicts alone.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict
from typing import Any

import pyarrow as pa

from nlp_tasks.config import ComputeConfig, TaskSpec
from nlp_tasks.engines.decoding import generation_settings
from nlp_tasks.engines.qualification import (
    ROWS,
    Speed,
    Verdict,
    judge_generation,
    judge_values,
    precision,
    text_tokens,
)
from nlp_tasks.models import node_cpu
from nlp_tasks.tasks.base import RowError
from nlp_tasks.tasks.seq2seq import GenerationTask
from nlp_tasks.workers.annotator import Annotator, Rows, preprocess_rows


def longest(texts: list[str], rows: int = ROWS) -> list[str]:
    return sorted(texts, key=len, reverse=True)[:rows]


def judged(spec: TaskSpec) -> TaskSpec:
    """What is compared for a task: itself, or for a task with labelled examples its embeddings (the head is then
    the same arithmetic on them, fitted later: heads.py)."""
    if getattr(spec.options, "examples", None) is None:
        return spec
    return TaskSpec.model_validate({"task": "feature-extraction", "model": spec.model, "revision": spec.revision,
                                    "engine": spec.engine, **spec.options.embedding_options()})


def one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"[:300]


def qualify_pool(specs: dict[str, TaskSpec], compute: ComputeConfig, sample: list[str],
                 calibration: list[str] | None = None) -> dict[str, dict]:
    """Each task's verdict (a Verdict as a dict) for the engine its spec names, on the longest rows of `sample`;
    `calibration`: what static int8 calibrates on, as the pool will (engines/calibration.py)."""
    import os

    started = time.perf_counter()
    if compute.device != "cuda":  # before the pools start: every core of the node
        compute = compute.model_copy(update={"torch_threads": os.cpu_count(), "inter_threads": os.cpu_count()})
    texts = longest(sample)
    specs = {column: judged(spec) for column, spec in specs.items()}
    reasons: dict[str, tuple[str | None, int]] = {}
    speed = None
    try:
        engine = Annotator(specs, compute, "text", "errors", calibration=calibration)
    except Exception as error:  # noqa: BLE001 - whatever stops the engine loading is the verdict
        reasons = {column: (f"it does not load: {one_line(error)}", 0) for column in specs}
    else:
        reference = Annotator({column: spec.model_copy(update={"engine": "transformers"})
                               for column, spec in specs.items()}, compute.model_copy(update={"dtype": "float32"}),
                              "text", "errors")
        reference.kernels_key = None  # timing its kernel paths would run the reference four times more
        table = pa.table({"text": texts})
        for column, spec in specs.items():
            judge = generation_reason if isinstance(engine.adapters[column], GenerationTask) else values_reason
            try:
                reasons[column] = judge(column, spec.engine, engine, reference, table, compute)
            except Exception as error:  # noqa: BLE001
                reasons[column] = (f"it fails with the task's settings: {one_line(error)}", 0)
        encoders = not any(isinstance(adapter, GenerationTask) for adapter in engine.adapters.values())
        if encoders and all(reason is None for reason, _ in reasons.values()):
            speed = asdict(pace(engine, reference, table, compute.torch_threads or 1))
    seconds = round(time.perf_counter() - started, 2)
    return {column: asdict(Verdict(reason is None, reason or f"agrees with transformers on {rows} of the input's "
                                   "longest rows", rows, seconds, speed)) for column, (reason, rows) in reasons.items()}


def pace(engine: Annotator, reference: Annotator, table: pa.Table, threads: int) -> Speed:
    """Rows per second of the engine and of transformers over `table`. Transformers runs with plain linear layers
    and, where they can be, packed ones (models/cpu_linear.py: the actors choose between the two on their node), and
    the faster counts. The comparison warmed the engine and plain transformers; packed runs once untimed first. Each
    variant then runs twice, the order reversed the second time, so that a drift in the machine's speed favours
    none."""
    from nlp_tasks.models.cpu_linear import can_pack, pack_linears, unpack_linears  # torch: imported in workers only

    model = next(iter(reference.adapters.values())).model
    variants = ["engine", "plain", *(["packed"] if can_pack(model) else [])]

    def run(variant: str) -> float:
        swaps = pack_linears(model) if variant == "packed" else []
        try:
            started = time.perf_counter()
            (engine if variant == "engine" else reference)(table)
            return time.perf_counter() - started
        finally:
            unpack_linears(swaps)

    if "packed" in variants:
        run("packed")  # its warm-up: the comparison ran the other two already
    seconds = dict.fromkeys(variants, 0.0)
    for variant in [*variants, *reversed(variants)]:
        seconds[variant] += run(variant)
    rate = {variant: round(2 * table.num_rows / spent, 2) for variant, spent in seconds.items()}
    return Speed(node_cpu.describe(), threads, table.num_rows, rate["engine"],
                 max(rate[variant] for variant in variants if variant != "engine"))


def engine_failures(ours: list[str | None], theirs: list[bool]) -> str | None:
    """Why the engine failed rows transformers annotated (`ours`: each row's error on the engine, `theirs`: whether
    transformers failed it too), or None."""
    failed = [row for row, (error, also) in enumerate(zip(ours, theirs)) if error and not also]
    return f"it fails on {len(failed)} of {len(ours)} rows: {ours[failed[0]]}" if failed else None


def values_reason(column: str, name: str, engine: Annotator, reference: Annotator, table: pa.Table,
                  compute: ComputeConfig) -> tuple[str | None, int]:
    """An encoder task: each row's value on the engine against transformers' (which equals `pipeline()`)."""
    ours, theirs = engine(table, only=[column]), reference(table, only=[column])
    their_errors = [bool(errors) for errors in theirs.column("errors").to_pylist()]
    our_errors = [errors[0]["message"] if errors else None for errors in ours.column("errors").to_pylist()]
    if (reason := engine_failures(our_errors, their_errors)) is not None:
        return reason, 0
    pairs = [(a, b) for a, b, error in zip(ours.column(column).to_pylist(), theirs.column(column).to_pylist(),
                                           their_errors) if not error]
    return judge_values(pairs, precision(name, compute.dtype, compute.device) == "int8"), len(pairs)


def generation_reason(column: str, name: str, engine: Annotator, reference: Annotator, table: pa.Table,
                      compute: ComputeConfig) -> tuple[str | None, int]:
    """A generation task: each row's generated tokens (the last level's, for map-reduce) against transformers'."""
    ours, theirs = (annotator.forward_rows(annotator.adapters[column],
                                           preprocess_rows(annotator.adapters[column], Rows(table, "text")),
                                           Counter(), Counter()) for annotator in (engine, reference))
    if (reason := engine_failures([str(a) if isinstance(a, RowError) else None for a in ours],
                                  [isinstance(b, RowError) for b in theirs])) is not None:
        return reason, 0
    adapter, model = engine.adapters[column], reference.adapters[column]
    settings = generation_settings(adapter.engine.generation, {**adapter.options.engine_settings(),
                                                               **adapter.generate_extra()})
    if settings["do_sample"]:
        return None, 0  # sampled tokens follow each engine's own random numbers: loaded and run, not compared
    seq2seq = adapter.engine.seq2seq
    specials = set(adapter.tokenizer.all_special_ids)
    pairs, gaps = [], []
    for mine, other in zip(ours, theirs):
        if isinstance(other, RowError):
            continue
        for (segment, ids), (their_segment, their_ids) in zip(zip(*mine), zip(*other)):
            their_ids = their_ids.tolist()[1:] if seq2seq else their_ids.tolist()  # generate's decoder start
            pairs.append((text_tokens(ids.tolist(), specials), text_tokens(their_ids, specials)))
            gap = None
            if pairs[-1][0] != pairs[-1][1]:
                scores = (mean_log_prob(model, segment, ids.tolist(), specials, seq2seq),
                          mean_log_prob(model, their_segment, their_ids, specials, seq2seq))
                gap = None if None in scores else scores[1] - scores[0]
            gaps.append(gap)
    exact = precision(name, compute.dtype, compute.device) == "float32"
    return judge_generation(pairs, gaps, exact, settings["num_beams"] > 1), len(pairs)


def mean_log_prob(adapter: Any, segment: dict, ids: list[int], specials: set[int], seq2seq: bool) -> float | None:
    """Mean log-probability of the text tokens of `ids` (and a forced first token) under the transformers model,
    after the segment's input; None where there is none."""
    import torch

    content = [token for index, token in enumerate(ids) if index == 0 or token not in specials]
    if not content:
        return None
    model, prompt = adapter.model, [int(token) for token in segment["input_ids"]]
    with torch.inference_mode():
        if seq2seq:
            start = model.generation_config.decoder_start_token_id
            start = model.config.decoder_start_token_id if start is None else start
            target = torch.tensor([[start, *content]], device=adapter.device)
            source = torch.tensor([prompt], device=adapter.device)
            logits = model(input_ids=source, attention_mask=torch.ones_like(source),
                           decoder_input_ids=target[:, :-1]).logits
            offset = 0
        else:
            target = torch.tensor([prompt + content], device=adapter.device)
            logits = model(target[:, :-1]).logits
            offset = len(prompt) - 1
        log_probs = logits.float().log_softmax(-1)[0, offset:]
        return float(log_probs.gather(1, target[0, offset + 1:, None]).mean())
