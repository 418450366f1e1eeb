"""What a night costs after the input is compacted and repeats earlier texts, with and without reuse by content.

    python -m benchmarks.reuse [--rows 1000] [--files 4] [--duplicates 0.3] [--model PATH] [--max-length 256]

Every run is the real job, `python -m jobs.annotate --config job.yaml`, a process of its own, timed start to exit,
one after another (the machine's cores are the job's alone):

  first        --rows distinct BBC articles in --files Parquet files, annotated (MiniLM embeddings by default)
  compacted    the same output copied twice; in each copy the input is rewritten into --files / 2 new files (a
               compaction: every file name and byte changes) and a new file holds --duplicates x rows earlier texts
               under new ids; the night then runs with `output.reuse: true` (the job) and `false` (before reuse)
  nothing      a fresh output of the same rows, with reuse and without: what keying costs where nothing is reused
  repeats      a fresh output of the same rows and a new file of --duplicates x rows of their texts under new ids:
               texts repeated within one night, with reuse and without

Per run: the wall seconds, the rows that reached the model and the rows reused (the run report's throughput), the
report's phases. And the cache's size: its bytes per task over the rows it holds, per million rows.
Results: benchmarks/results/cpu-reuse-<rows>.json, or --out NAME.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from benchmarks.common import REPO, corpus_rows, failed, minilm_path, print_table, random_bert, save

SMOKE_ARGS = ["--rows", "24", "--files", "2", "--model", "tiny", "--max-length", "32"]
"""The smallest run that takes each path of this module (tests/bench/test_benchmarks.py runs it); its figures say nothing."""


def write_job(folder: Path, model: str, max_length: int, reuse: bool) -> Path:
    config = folder / "job.yaml"
    config.write_text(yaml.safe_dump({
        "input": {"path": str(folder / "corpus"), "id_column": "id"},
        "output": {"path": str(folder / "out"), "vanished_inputs": "remove", "reuse": reuse},
        "tasks": {"embedding": {"task": "feature-extraction", "model": model, "max_length": max_length}},
    }))
    return config


def night(folder: Path, model: str, max_length: int, reuse: bool, name: str) -> dict:
    """Run the job once over `folder`; its wall seconds and what its run report says."""
    config = write_job(folder, model, max_length, reuse)
    log = folder / f"{name}.log"
    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.run([sys.executable, "-m", "jobs.annotate", "--config", str(config)], cwd=REPO,
                                 stdout=output, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - started
    if process.returncode:
        raise failed(f"night {name}", process.returncode, log)
    report = json.loads(max((folder / "out" / "__reports").glob("run-*.json")).read_text())
    task = report["throughput"].get("embedding", {})
    return {"night": name, "reuse": reuse, "wall_s": round(wall, 2), "rows_in": report["rows_in"],
            "rows_computed": task.get("rows", 0), "rows_reused": task.get("reused", 0),
            "seconds_saved_estimate": task.get("seconds_saved"), "time_s": report["time_s"]}


def compact(folder: Path, rows: pa.Table, files: int, duplicates: float) -> None:
    """Rewrite the corpus into `files` new files, and add one of `duplicates` x rows earlier texts (repeat)."""
    corpus = folder / "corpus"
    for path in corpus.glob("*.parquet"):
        path.unlink()
    per_file = -(-rows.num_rows // files)
    for index in range(files):
        pq.write_table(rows.slice(index * per_file, per_file), corpus / f"compacted-{index}.parquet")
    repeat(corpus, rows, duplicates)


def repeat(corpus: Path, rows: pa.Table, duplicates: float) -> None:
    """A new file in `corpus` of `duplicates` x rows of the rows' texts, spread over them, under new ids."""
    count = round(rows.num_rows * duplicates)
    repeated = rows.take([index * rows.num_rows // count for index in range(count)])
    pq.write_table(repeated.set_column(0, "id", pa.array([f"copy-{i}" for i in range(repeated.num_rows)])),
                   corpus / "new.parquet")


def cache_bytes(out: Path) -> int:
    return sum(path.stat().st_size for path in (out / "__manifest" / "reuse").rglob("*.keys"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--duplicates", type=float, default=0.3)
    parser.add_argument("--model", default=None, help="a checkpoint path, or 'tiny' (default: MiniLM)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-reuse-") as scratch_name:
        scratch = Path(scratch_name)
        model = args.model or minilm_path()
        if model == "tiny":
            model = str(random_bert(scratch / "model", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64, max_length=args.max_length))
        rows = corpus_rows(args.rows).select(["id", "text"])
        first = scratch / "first"
        (first / "corpus").mkdir(parents=True)
        per_file = -(-rows.num_rows // args.files)
        for index in range(args.files):
            pq.write_table(rows.slice(index * per_file, per_file), first / "corpus" / f"part-{index}.parquet")
        results.append(night(first, model, args.max_length, True, "first"))
        size = cache_bytes(first / "out")

        for reuse in (True, False):
            folder = scratch / f"compacted-{reuse}"
            shutil.copytree(first, folder)
            compact(folder, rows, max(1, args.files // 2), args.duplicates)
            results.append(night(folder, model, args.max_length, reuse, "compacted"))
        for reuse in (True, False):
            folder = scratch / f"nothing-{reuse}"
            shutil.copytree(first / "corpus", folder / "corpus")  # a fresh output: its cache is empty
            results.append(night(folder, model, args.max_length, reuse, "nothing reusable"))
        for reuse in (True, False):
            folder = scratch / f"repeats-{reuse}"
            shutil.copytree(first / "corpus", folder / "corpus")
            repeat(folder / "corpus", rows, args.duplicates)
            results.append(night(folder, model, args.max_length, reuse, "repeats within the night"))

    record = {"parameters": vars(args), "results": results,
              "cache": {"bytes": size, "rows": rows.num_rows,
                        "mb_per_million_rows": round(size / rows.num_rows * 1e6 / 2**20, 1)}}
    path = save(args.out or f"cpu-reuse-{args.rows}", record)
    print_table(["night", "reuse", "wall s", "rows computed", "rows reused"],
                [[r["night"], r["reuse"], r["wall_s"], r["rows_computed"], r["rows_reused"]] for r in results])
    print(f"cache: {record['cache']['mb_per_million_rows']} MB per million rows ({size} bytes for {rows.num_rows})")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
