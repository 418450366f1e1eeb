"""The job's throughput on one model, timed from its own run report, beside pipelines and the ceiling.

    python -m benchmarks.throughput [--scenario minilm] [--rows 2000] [--dtype float32]
                                    [--compute torch_threads=1 ...] [--variants job pipeline batched ceiling]

On the same BBC rows (replicated to --rows, in --files Parquet files):

  job       `python -m jobs.annotate` in a process of its own, start to exit; its run report gives
            what happened inside: rows/s and tokens/s per actor-second, each actor's busy and
            padding shares, the driver's phases
  pipeline  `pipeline(task)` called once per text, in this process (on --pipeline-rows rows)
  batched   `pipeline(task)` called once on all texts, batch_size 32 (on --pipeline-rows rows)
  ceiling   the forward passes alone on pre-tokenized batches of 32 sorted by length (baselines.py)

With a GPU (nvidia-smi), each variant's GPU busy % is sampled too. Results: a table, and
benchmarks/results/<cpu|gpu>-<scenario>-<window>-<dtype>-throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import yaml

from benchmarks.baselines import PIPELINE_BATCH, ceiling_rows_per_s, pipeline_rows_per_s
from benchmarks.common import REPO, corpus_rows, failed, print_table, save, write_files
from benchmarks.gpu import GpuSampler
from benchmarks.scenarios import SCENARIOS, Scenario, checkpoint

SMOKE_ARGS = ["--scenario", "tiny-ner", "--rows", "8", "--pipeline-rows", "4", "--files", "2"]
"""The smallest run that takes each path of this module (tests/bench/test_benchmarks.py runs it); its figures say nothing."""


def run_job(scenario: Scenario, model: Path, source: Path, work: Path, compute: dict) -> dict:
    """The job as a user runs it; returns its run report, with the whole process's seconds added."""
    config = work / "job.yaml"
    config.write_text(yaml.safe_dump({
        "input": {"path": str(source), "id_column": "id"},
        "output": {"path": str(work / "out")},
        "tasks": {"value": scenario.job_task(model)},
        **({"compute": compute} if compute else {}),
    }))
    started = time.perf_counter()
    with (work / "job.log").open("w") as log:
        result = subprocess.run([sys.executable, "-m", "jobs.annotate", "--config", str(config)], cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                check=False)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise failed("the job", result.returncode, work / "job.log")
    report = json.loads(next((work / "out" / "__reports").glob("*.json")).read_text())
    return {**report, "process_s": round(seconds, 2)}


def job_figures(report: dict, rows: int) -> dict:
    """What the table shows of a run report: wall rows/s, and in the actors rows/s, tokens/s, busy, padding."""
    task = report["throughput"]["value"]
    actors = [actor for actor in report["actors"] if actor["pool"] == "value"]  # the model's, not the CPU stages'
    return {
        "rows_per_s": round(rows / report["process_s"], 2),
        "actor_rows_per_s": task["rows_per_s"], "actor_tokens_per_s": task["tokens_per_s"],
        "busy_share": min((a["busy_share"] for a in actors if a["busy_share"] is not None), default=None),
        "padding_share": max((a["padding_share"] for a in actors if a["padding_share"] is not None), default=None),
        "time_s": report["time_s"], "compute": report["compute"], "actors": actors,
    }


def parse_compute(pairs: list[str]) -> dict:
    """KEY=VALUE pairs as a compute section, values parsed as YAML (numbers stay numbers)."""
    return {key: yaml.safe_load(value) for key, value in (pair.split("=", 1) for pair in pairs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="minilm", choices=sorted(SCENARIOS))
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--pipeline-rows", type=int, default=500, help="rows for the pipeline variants (slow)")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--max-length", type=int, help="the token window (default: the scenario's)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="the job's and the ceiling's dtype (pipelines run float32, their default)")
    parser.add_argument("--compute", nargs="*", default=[], metavar="KEY=VALUE",
                        help="the job's compute section (default: none, sized from the machine)")
    parser.add_argument("--variants", nargs="+", default=["job", "pipeline", "batched", "ceiling"],
                        choices=["job", "pipeline", "batched", "ceiling"])
    args = parser.parse_args(argv)
    scenario = SCENARIOS[args.scenario]
    if args.max_length:
        scenario = replace(scenario, max_length=args.max_length)
    compute = {**parse_compute(args.compute), **({"dtype": args.dtype} if args.dtype != "float32" else {})}
    gpu = GpuSampler().enabled
    device = "cuda" if gpu else "cpu"
    table = corpus_rows(args.rows)
    texts = table.column("text").to_pylist()

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        model = checkpoint(scenario, work, texts[:8])
        for variant in args.variants:
            with GpuSampler() as sampler:
                if variant == "job":
                    source = write_files(table, work / "corpus", args.files)
                    figures = job_figures(run_job(scenario, model, source, work, compute), args.rows)
                elif variant == "ceiling":
                    figures = {"rows_per_s": round(ceiling_rows_per_s(scenario, model, texts, os.cpu_count() or 1,
                                                                      device, args.dtype), 2)}
                else:
                    subset = texts[:args.pipeline_rows]
                    batch = PIPELINE_BATCH if variant == "batched" else None
                    figures = {"rows_per_s": round(pipeline_rows_per_s(scenario, model, subset, batch, device), 2)}
            results[variant] = {**figures, "gpu": sampler.summary()}
            print(f"{variant}: {results[variant]['rows_per_s']} rows/s", flush=True)

    print_table(["variant", "rows/s", "actor rows/s", "actor tokens/s", "busy (min)", "padding", "GPU busy %"],
                [[variant, r["rows_per_s"], r.get("actor_rows_per_s", ""), r.get("actor_tokens_per_s", ""),
                  r.get("busy_share", ""), r.get("padding_share", ""), (r["gpu"] or {}).get("busy_pct", "")]
                 for variant, r in results.items()])
    path = save(f"{device}-{scenario.name}-{scenario.max_length}-{args.dtype}-throughput", {
        "parameters": {"scenario": scenario.name, "max_length": scenario.max_length, "rows": args.rows, "pipeline_rows": args.pipeline_rows,
                       "files": args.files, "dtype": args.dtype, "compute": compute},
        "results": results,
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
