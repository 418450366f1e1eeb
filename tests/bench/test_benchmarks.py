"""Every benchmark still runs: each module under benchmarks/ imports, and each with a `main` runs end to end.

A benchmark's `SMOKE_ARGS` are its smallest run that still takes each of its paths (a handful of rows, one repeat,
tiny models); the run is a process of its own, `python -m benchmarks.<name> *SMOKE_ARGS`, as a user starts one,
writing its results to a temporary folder ($NLP_TASKS_BENCH_RESULTS), never to the committed benchmarks/results/.
Modules are found with pkgutil, so a new benchmark is covered without touching this file.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

import benchmarks
from benchmarks.common import RESULTS_ENV

COMMITTED = REPO / "benchmarks" / "results"
MODULES = sorted(module.name for module in pkgutil.iter_modules(benchmarks.__path__))


def _is_benchmark(name: str) -> bool:
    try:
        return hasattr(importlib.import_module(f"benchmarks.{name}"), "main")
    except Exception:  # noqa: BLE001 - the import test says why; the smoke run fails too
        return True


BENCHMARKS = [name for name in MODULES if _is_benchmark(name)]


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports_and_each_benchmark_has_smoke_args(name):
    module = importlib.import_module(f"benchmarks.{name}")
    if hasattr(module, "main"):
        smoke = getattr(module, "SMOKE_ARGS", None)
        assert isinstance(smoke, list) and all(isinstance(arg, str) for arg in smoke), \
            f"benchmarks/{name}.py has a main but no SMOKE_ARGS: list[str]"


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_benchmark_runs_end_to_end_at_its_smoke_size(name, tmp_path):
    module = importlib.import_module(f"benchmarks.{name}")
    results = tmp_path / "results"
    committed = _listing(COMMITTED)
    run = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *module.SMOKE_ARGS], cwd=REPO, check=False,
                         capture_output=True, text=True, timeout=1200,
                         env={**os.environ, RESULTS_ENV: str(results), "PYTHONUNBUFFERED": "1"})
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    assert _listing(COMMITTED) == committed, "a smoke run wrote into benchmarks/results/"
    records = {path.stem: json.loads(path.read_text()) for path in results.glob("*.json")}
    assert records, f"benchmarks/{name}.py wrote no results file"
    for record in records.values():
        assert record["machine"]["cores"] >= 1 and record["machine"]["python"]
    CHECKS.get(name, lambda records: None)(records)


def _listing(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}


def _positive(*figures) -> None:
    assert figures and all(isinstance(x, int | float) and x > 0 for x in figures), figures


def _peers(records: dict) -> None:
    from benchmarks.peers import PEER_PACKAGES, readme_table

    record = records["cpu-peers-float32"]
    missing = {variant for variant, package in PEER_PACKAGES.items() if importlib.util.find_spec(package) is None}
    speeds = record["rows_per_s"]["8"]
    assert set(speeds) == {"job", "job-tuned", "api", "daft", "ray-data", "pipeline", "ceiling", "ceiling-eager"} - missing
    assert set(record["skipped"]) == missing
    _positive(*speeds.values())
    assert "| 8 |" in readme_table([record])


def _throughput(records: dict) -> None:
    results = records["cpu-tiny-ner-128-float32-throughput"]["results"]
    assert set(results) == {"job", "pipeline", "batched", "ceiling"}
    _positive(*(figures["rows_per_s"] for figures in results.values()), results["job"]["actor_tokens_per_s"])


def _gpu_stage(records: dict) -> None:
    record = records["cpu-tiny-classifier-split-stage"]
    assert record["oom_check"]["rows_with_values"] == record["oom_check"]["rows"]
    _positive(record["results"]["rows_per_s"], record["results"]["tokens_per_s"],
              record["tokenize_stage"]["rows_per_s_per_core"])


def _cpu_stages(records: dict) -> None:
    results = records["cpu-stages"]["results"]
    _positive(results["tokenize_rows_per_s_per_core"], results["tokens_per_row"])


def _summarization(records: dict) -> None:
    results = records["cpu-summarization-4"]["results"]
    assert {result["variant"] for result in results} == {"job", "ctranslate2", "transformers"}
    _positive(*(result["steady_docs_per_s"] for result in results))


def _examples_cv(records: dict) -> None:
    record = records["cpu-examples-cv"]
    assert len(record["accuracy_by_fold"]) == 2
    assert all(0 <= accuracy <= 1 for accuracy in record["mean_accuracy"].values())


def _driver_cost(records: dict) -> None:
    _positive(*records["cpu-driver-cost-batch16"]["driver_cpu_ms_per_1000_rows"].values())


def _ner_grouping(records: dict) -> None:
    results = records["cpu-ner-grouping"]["results"]
    assert len(results) == 5 and all(result["same_entities"] for result in results)
    _positive(*(result["job_rows_per_s"] for result in results), *(result["pipeline_rows_per_s"] for result in results))


def _nights(records: dict) -> None:
    results = records["cpu-nights-s3-parquet-delta-4"]["results"]
    assert [(r["store"], r["format"], r["night"]) for r in results] == [
        ("s3", output_format, night) for output_format in ("parquet", "delta") for night in ("first", "quiet", "new")]
    for first, quiet, new in zip(results[::3], results[1::3], results[2::3]):
        assert (first["files_processed"], quiet["files_processed"], new["files_processed"]) == (4, 0, 2)
        _positive(*(r["wall_s"] for r in (first, quiet, new)), *(r["driver_peak_rss_mb"] for r in (first, quiet, new)))
        if first["store"] == "s3":
            _positive(first["requests"], quiet["requests"], new["requests"])
        if first["format"] == "delta":
            assert first["delta_version"] == quiet["delta_version"] < new["delta_version"]


def _reuse(records: dict) -> None:
    first, reused, full, *nothing, repeats, computed = records["cpu-reuse-24"]["results"]
    assert (first["rows_computed"], reused["rows_computed"], reused["rows_reused"]) == (24, 0, 24 + 7)
    assert full["rows_computed"] == 24 + 7 and full["rows_reused"] == 0
    assert [(run["rows_computed"], run["rows_reused"]) for run in nothing] == [(24, 0), (24, 0)]
    assert (repeats["rows_computed"], repeats["rows_reused"], computed["rows_computed"]) == (24, 7, 24 + 7)
    _positive(records["cpu-reuse-24"]["cache"]["mb_per_million_rows"])


def _cpu_memory(records: dict) -> None:
    record = records["cpu-memory-8"]
    assert set(record["median_rows_per_s"]) == {"glibc defaults", "freed memory kept"}
    _positive(*record["median_rows_per_s"].values(), record["kept_over_defaults"])


CHECKS = {"peers": _peers, "throughput": _throughput, "gpu_stage": _gpu_stage, "cpu_stages": _cpu_stages,
          "summarization": _summarization, "examples_cv": _examples_cv, "driver_cost": _driver_cost,
          "ner_grouping": _ner_grouping, "nights": _nights, "reuse": _reuse, "cpu_memory": _cpu_memory}
"""What each benchmark's smoke results must show beyond the machine record (a new benchmark: the machine only)."""
