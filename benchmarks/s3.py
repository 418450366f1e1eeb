"""Moto's S3 server on loopback behind a counting proxy, for the benchmarks that count what storage is asked.

    processes, counts = start_s3()   # moto's server and the proxy, each a process of its own; bucket `bench`
    counts.take()                    # the requests through the proxy since the last take, by method
    counts.take_shapes()             # ... by method, and by what each asked (`shape`)

The proxy runs in a process of its own (`python -m benchmarks.s3 PORT UPSTREAM_PORT`): every HTTP request of s3fs,
pyarrow and delta-rs in any process that takes the endpoint from the environment (AWS_ENDPOINT_URL,
FSSPEC_S3_ENDPOINT_URL, which start_s3 sets in this process, so its child processes inherit them) goes through it,
counted by method, and is forwarded on a fresh connection to moto's server. What a benchmark itself reads or writes
around a measurement can go to moto directly (`Counts.upstream`), uncounted.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}
BUCKET = "bench"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_REGION": "us-east-1"}


def shape(method: str, target: str, headers) -> str:
    """What a request asks, with the object's name generalized (runs of digits and of 8 or more hex digits as `#`):
    `GET bench/parquet-#/out/__manifest/units/#.json`, `LIST bench/parquet-#/in/`, `GET ... (range)`, `PUT ...
    (copy)`, `POST bench?delete`."""
    path, _, query = target.partition("?")
    params = parse_qs(query, keep_blank_values=True)
    key = unquote(path).lstrip("/")
    if method == "GET" and ({"list-type", "prefix", "delimiter"} & set(params)):
        method, key = "LIST", f"{key.rstrip('/')}/{params.get('prefix', [''])[0]}"
    label = f"{method} {re.sub(r'[0-9a-f]{8,}|[0-9]+', '#', key)}"
    extras = [name for name in ("delete", "uploads", "uploadId") if name in params]
    if headers.get("Range"):
        extras.append("range")
    if headers.get("x-amz-copy-source"):
        extras.append("copy")
    if headers.get("If-None-Match") or headers.get("If-Match"):
        extras.append("conditional")
    return label + (f" ({', '.join(extras)})" if extras else "")


class CountingProxy(ThreadingHTTPServer):
    """Forwards every request to the S3 server and counts them by method, and by shape (`shape`); `GET /__counts`
    answers the counts by method since the last such request, `GET /__counts?shapes` both."""

    daemon_threads = True

    def __init__(self, port: int, upstream_port: int):
        self.upstream_port = upstream_port
        self.counts: Counter = Counter()
        self.shapes: Counter = Counter()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), Forward)

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up (a process exiting): no news
            super().handle_error(request, client_address)


class Counts:
    """The proxy's counts, read from this process; `endpoint` is the proxy's, `upstream` moto's own."""

    def __init__(self, port: int, upstream_port: int):
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.upstream = f"http://127.0.0.1:{upstream_port}"

    def take(self) -> Counter:
        """The requests by method since the last take."""
        return Counter(self._get("/__counts"))

    def take_shapes(self) -> tuple[Counter, Counter]:
        """The requests by method and by shape since the last take."""
        answer = self._get("/__counts?shapes")
        return Counter(answer["methods"]), Counter(answer["shapes"])

    def _get(self, path: str):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.request("GET", path)
        answer = json.loads(connection.getresponse().read())
        connection.close()
        return answer


class Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if not size:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _forward(self) -> None:
        if self.path in ("/__counts", "/__counts?shapes"):
            with self.server.lock:
                methods, shapes = self.server.counts, self.server.shapes
                self.server.counts, self.server.shapes = Counter(), Counter()
            data = json.dumps({"methods": methods, "shapes": shapes} if self.path.endswith("shapes")
                              else methods).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        body = self._body()
        label = shape(self.command, self.path, self.headers)
        with self.server.lock:
            self.server.counts[self.command] += 1
            self.server.shapes[label] += 1
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=60)
        headers = {key: value for key, value in self.headers.items() if key.lower() not in HOP_HEADERS}
        if body is not None and "content-length" not in {key.lower() for key in headers}:
            headers["Content-Length"] = str(len(body))
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


def wait_for(port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {seconds} s") from None
            time.sleep(0.2)


def start_s3() -> tuple[list[subprocess.Popen], Counts]:
    """Moto's server and the counting proxy in front of it, bucket `bench` made; the environment of this process
    (and so of its children) set to reach S3 through the proxy with moto's credentials."""
    port, proxy_port = free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy_process = subprocess.Popen([sys.executable, "-m", "benchmarks.s3", str(proxy_port), str(port)])
    wait_for(port)
    wait_for(proxy_port)
    proxy = Counts(proxy_port, port)
    os.environ.update({**CREDENTIALS, "AWS_ENDPOINT_URL": proxy.endpoint, "FSSPEC_S3_ENDPOINT_URL": proxy.endpoint})
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    proxy.take()
    return [server, proxy_process], proxy


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


if __name__ == "__main__":  # the proxy's process: PORT UPSTREAM_PORT
    CountingProxy(int(sys.argv[1]), int(sys.argv[2])).serve_forever()
