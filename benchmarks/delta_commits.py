"""What committing one input file costs the driver on S3, `output.format: parquet` against `delta`.

    python -m benchmarks.delta_commits [--files 200] [--parts 2] [--threads 1]

A moto S3 server on loopback, behind a counting proxy in a process of its own (benchmarks/s3.py: every HTTP
request of s3fs and of delta-rs goes through it, counted by method). For each format the output store is opened as a run opens it, the workers' parts are
written as the write stage writes them (staged for parquet, under their final names for delta), and then
each input file is committed, one after another, or from `--threads` threads at once as the driver's commit
threads do (64 in a run; a Delta output then commits the files handed over during a transaction together, in
the next version): the driver's wall time per file, each commit's latency, the requests per commit and the
Delta versions written are what is reported; then the cost of the next run's open (its checks of what is
committed) and of finishing the run (the markers' index) and closing. Nothing but storage is timed: no Ray, no model.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import print_table, save
from benchmarks.s3 import Counts, start_s3, stop


def store_for(output_format: str):
    from fsspec.core import url_to_fs

    from nlp_tasks.output.delta import DeltaStore
    from nlp_tasks.output.store import OutputStore

    url = f"s3://bench/{output_format}"
    filesystem, root = url_to_fs(url)
    filesystem.invalidate_cache()
    return OutputStore(filesystem, root, url) if output_format == "parquet" else DeltaStore(filesystem, root, url, url)


JOB = {"tasks": {"sentiment": {"fingerprint": "f" * 16}}, "columns": {"text": "text", "id": "id", "errors": "errors",
                                                                     "partitioning": "none"}}


def measure(output_format: str, files: int, parts: int, proxy: Counts, threads: int = 1) -> dict:
    from nlp_tasks.output.layout import PartRecord
    from nlp_tasks.workers.write import footer_sha256

    store = store_for(output_format)
    started = time.perf_counter()
    store.open(JOB, "resume", lambda previous, job: None)
    opened = time.perf_counter() - started, proxy.take()
    rows = 100
    table = pa.table({"id": [str(i) for i in range(rows)], "text": ["some text"] * rows,
                      "sentiment": pa.array([{"label": "positive", "score": 0.9}] * rows),
                      "errors": pa.array([[]] * rows, pa.list_(pa.struct([("task", pa.string()),
                                                                          ("message", pa.string())])))})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue()
    units = [hashlib.sha256(f"file-{i}".encode()).hexdigest()[:16] for i in range(files)]
    records = {}
    for unit in units:  # what the workers write
        records[unit] = []
        for index in range(parts):
            path = f"{store.staging}/" + store.part_names.format(unit=unit, first=index * rows, nonce=os.urandom(4).hex())
            store.filesystem.pipe_file(path, data.to_pybytes())
            records[unit].append(PartRecord(unit, index * rows, rows, path, data.size, footer_sha256(data), "bench",
                                            "{}", "{}"))
    proxy.take()
    times = []

    def commit(index: int, unit: str) -> None:
        marker = {"unit": unit, "source": f"s3://corpus/file-{index}.parquet", "rows": rows * parts,
                  "identity": {"size": 1, "version": "v", "footer_sha256": "0" * 64},
                  "tasks": {"sentiment": "f" * 16}}
        started = time.perf_counter()
        store.commit(marker, records[unit])
        times.append(time.perf_counter() - started)

    began = time.perf_counter()
    if threads == 1:
        for index, unit in enumerate(units):
            commit(index, unit)
    else:
        with ThreadPoolExecutor(threads, thread_name_prefix="commit") as pool:
            for future in [pool.submit(commit, index, unit) for index, unit in enumerate(units)]:
                future.result()
    wall = time.perf_counter() - began
    committed = proxy.take()
    versions = store.table.version() + 1 if output_format == "delta" else None
    started = time.perf_counter()
    store.finish()  # as the job ends a run: the markers' index written, a Delta log's expired entries cleaned
    store.close()
    closed = time.perf_counter() - started, proxy.take()
    reopened_store = store_for(output_format)
    started = time.perf_counter()
    reopened_store.open(JOB, "resume", lambda previous, job: None)
    reopened = time.perf_counter() - started, proxy.take()
    reopened_store.close()
    proxy.take()
    times.sort()
    return {
        "format": output_format, "files": files, "parts_per_file": parts, "threads": threads,
        "commit_wall_s": round(wall, 3), "ms_per_file": round(1000 * wall / files, 2), "delta_versions": versions,
        "commit_ms_mean": round(1000 * sum(times) / len(times), 2), "commit_ms_median": round(1000 * times[len(times) // 2], 2),
        "commit_ms_p95": round(1000 * times[int(len(times) * 0.95)], 2),
        "requests_per_commit": round(sum(committed.values()) / files, 2),
        "requests_per_commit_by_method": {method: round(count / files, 2) for method, count in sorted(committed.items())},
        "first_open_s": round(opened[0], 3), "first_open_requests": sum(opened[1].values()),
        "close_s": round(closed[0], 3), "close_requests": sum(closed[1].values()),
        "reopen_s": round(reopened[0], 3), "reopen_requests": sum(reopened[1].values()),
        "reopen_requests_by_method": dict(sorted(reopened[1].items())),
    }


SMOKE_ARGS = ["--files", "4", "--threads", "4"]
"""A run that takes every path: both formats, commits from threads (a group commit) and a reopen, on a few files."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--parts", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="commit from this many threads at once (a run: 16)")
    args = parser.parse_args()
    processes, proxy = start_s3()
    try:
        results = [measure(output_format, args.files, args.parts, proxy, args.threads)
                   for output_format in ("parquet", "delta")]
    finally:
        stop(processes)
    print_table(["format", "ms/file", "ms/commit (median)", "p95", "Delta versions", "requests/commit", "by method",
                 "reopen s", "reopen requests"],
                [[r["format"], r["ms_per_file"], r["commit_ms_median"], r["commit_ms_p95"], r["delta_versions"],
                  r["requests_per_commit"],
                  " ".join(f"{m}:{c}" for m, c in r["requests_per_commit_by_method"].items()), r["reopen_s"],
                  r["reopen_requests"]] for r in results])
    suffix = f"-threads-{args.threads}" if args.threads > 1 else ""
    print(save(f"cpu-delta-commits-{args.files}{suffix}", {
        "files": args.files, "parts_per_file": args.parts, "threads": args.threads,
        "storage": "moto server on loopback, through a counting proxy", "results": results}))


if __name__ == "__main__":
    main()
