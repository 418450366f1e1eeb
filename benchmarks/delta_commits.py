"""What committing one input file costs the driver on S3, `output.format: parquet` against `delta`.

    python -m benchmarks.delta_commits [--files 200] [--parts 2]

A moto S3 server on loopback, behind a counting proxy in a process of its own (every HTTP request of s3fs
and of delta-rs goes through it, counted by method; delta-rs holds the GIL while it waits on storage). For each format the output store is opened as a run opens it, the workers' parts are
written as the write stage writes them (staged for parquet, under their final names for delta), and then
each input file is committed, one after another, as the driver's commit threads do: the driver's wall time
and the requests per commit are what is reported; then the cost of the next run's open (its checks of what
is committed) and of close. Nothing but storage is timed: no Ray, no model.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import print_table, save

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class CountingProxy(ThreadingHTTPServer):
    """Forwards every request to the S3 server and counts them by method; `GET /__counts` answers the counts
    since the last such request."""

    daemon_threads = True

    def __init__(self, port: int, upstream_port: int):
        self.upstream_port = upstream_port
        self.counts: Counter = Counter()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), Forward)


class Counts:
    """The proxy's counts, read from this process."""

    def __init__(self, port: int):
        self.port = port

    def take(self) -> Counter:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.request("GET", "/__counts")
        counts = Counter(json.loads(connection.getresponse().read()))
        connection.close()
        return counts


class Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _forward(self) -> None:
        if self.path == "/__counts":
            with self.server.lock:
                data, self.server.counts = json.dumps(self.server.counts).encode(), Counter()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        with self.server.lock:
            self.server.counts[self.command] += 1
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=60)
        headers = {key: value for key, value in self.headers.items() if key.lower() not in HOP_HEADERS}
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in HOP_HEADERS and key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", response.getheader("Content-Length", "0") if self.command == "HEAD"
                         else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        upstream.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(port: int) -> None:
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)


def start_s3() -> tuple[list[subprocess.Popen], Counts]:
    port, proxy_port = free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy_process = subprocess.Popen([sys.executable, "-m", "benchmarks.delta_commits", "--proxy", str(proxy_port),
                                      str(port)])
    wait_for(port)
    wait_for(proxy_port)
    proxy = Counts(proxy_port)
    endpoint = f"http://127.0.0.1:{proxy_port}"
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION":
                       "us-east-1", "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
                       "FSSPEC_S3_ENDPOINT_URL": endpoint})
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    proxy.take()
    return [server, proxy_process], proxy


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


def measure(output_format: str, files: int, parts: int, proxy: Counts) -> dict:
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
    for index, unit in enumerate(units):
        marker = {"unit": unit, "source": f"s3://corpus/file-{index}.parquet", "rows": rows * parts,
                  "identity": {"size": 1, "version": "v", "footer_sha256": "0" * 64},
                  "tasks": {"sentiment": "f" * 16}}
        started = time.perf_counter()
        store.commit(marker, records[unit])
        times.append(time.perf_counter() - started)
    committed = proxy.take()
    started = time.perf_counter()
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
        "format": output_format, "files": files, "parts_per_file": parts,
        "commit_ms_mean": round(1000 * sum(times) / len(times), 2), "commit_ms_median": round(1000 * times[len(times) // 2], 2),
        "commit_ms_p95": round(1000 * times[int(len(times) * 0.95)], 2),
        "requests_per_commit": round(sum(committed.values()) / files, 2),
        "requests_per_commit_by_method": {method: round(count / files, 2) for method, count in sorted(committed.items())},
        "first_open_s": round(opened[0], 3), "first_open_requests": sum(opened[1].values()),
        "close_s": round(closed[0], 3), "close_requests": sum(closed[1].values()),
        "reopen_s": round(reopened[0], 3), "reopen_requests": sum(reopened[1].values()),
        "reopen_requests_by_method": dict(sorted(reopened[1].items())),
    }


SMOKE_ARGS = ["--files", "4"]
"""A run that takes every path: both formats, commits and a reopen, on a few files."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--parts", type=int, default=2)
    parser.add_argument("--proxy", type=int, nargs=2, help=argparse.SUPPRESS)  # the proxy's process: PORT UPSTREAM
    args = parser.parse_args()
    if args.proxy:
        CountingProxy(*args.proxy).serve_forever()
        return
    processes, proxy = start_s3()
    try:
        results = [measure(output_format, args.files, args.parts, proxy) for output_format in ("parquet", "delta")]
    finally:
        for process in processes:
            process.terminate()
    print_table(["format", "ms/commit (median)", "p95", "requests/commit", "by method", "reopen s", "reopen requests"],
                [[r["format"], r["commit_ms_median"], r["commit_ms_p95"], r["requests_per_commit"],
                  " ".join(f"{m}:{c}" for m, c in r["requests_per_commit_by_method"].items()), r["reopen_s"],
                  r["reopen_requests"]] for r in results])
    print(save(f"cpu-delta-commits-{args.files}", {"files": args.files, "parts_per_file": args.parts,
                                                    "storage": "moto server on loopback, through a counting proxy",
                                                    "results": results}))


if __name__ == "__main__":
    main()
