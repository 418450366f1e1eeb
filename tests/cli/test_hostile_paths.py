"""Hostile inputs, round three: output paths that carry URL or glob syntax, secrets in what the workers raise and
in Ray's own logs, staged parts out of a recursive glob's reach, and readers of an output with odd characters."""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import ClassVar

import duckdb
import pandas as pd
import polars as pl
import pytest
from helpers import cli, moto_server, output_table, sentiment, write_config, write_rows

from jobs.annotate import main

URL_SYNTAX = ["out?token=abc", "out#frag", "out%20x", "out[1]", "o*t", "out{a,b}"]


@pytest.mark.parametrize("name", URL_SYNTAX)
def test_an_output_path_with_url_or_glob_syntax_is_refused_before_anything_is_written(tmp_path, models, capsys,
                                                                                      name):
    write_rows(tmp_path / "corpus" / "a.parquet", ["a0", "a1"])
    config = write_config(tmp_path, tmp_path / "corpus", sentiment(models), output={"path": tmp_path / name / "out"})
    assert main(["--config", config]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "output.path" in lines[0] and "syntax" in lines[0], lines
    assert not (tmp_path / name).exists()


def test_an_s3_output_path_with_url_syntax_is_refused_and_nothing_is_written(tmp_path, models, capsys):
    import boto3

    write_rows(tmp_path / "corpus" / "a.parquet", ["a0"])
    with moto_server("out") as settings:
        for path in ("s3://out/night/?token=SECRET123", "s3://out/night#1/", "s3://out/n[1]/", "s3://out/a%2Fb/"):
            config = write_config(tmp_path, tmp_path / "corpus", sentiment(models), output={"path": path})
            result = cli(config, env=settings)
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 2 and len(lines) == 1 and "output.path" in lines[0], result.stderr[-2000:]
            assert "SECRET123" not in result.stdout + result.stderr
        client = boto3.client("s3", endpoint_url=settings["AWS_ENDPOINT_URL"], region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        assert client.list_objects_v2(Bucket="out").get("KeyCount") == 0


@pytest.mark.slow
def test_spaces_and_non_ascii_round_trip_and_staging_is_out_of_a_recursive_globs_reach(ray_local, tmp_path, models,
                                                                                     capsys):
    """Input file names and an output path with spaces and non-ASCII letters: every row once to pandas, pyarrow,
    DuckDB and Polars, each given the path the run printed for it (a recursive glob too, a staged part from a killed
    run beside the parts), and the next run finds every file committed."""
    corpus, out = tmp_path / "les entrées é", tmp_path / "sortie été" / "out"
    ids = [f"{name}-{i}" for name in ("a", "b") for i in range(3)]
    write_rows(corpus / "fichier à lire.parquet", ids[:3])
    write_rows(corpus / "名前 b.parquet", ids[3:])
    config = write_config(tmp_path, corpus, sentiment(models), output={"path": out})
    assert main(["--config", config]) == 0
    assert main(["--config", config]) == 0
    printed = capsys.readouterr().out
    assert "processed 0 input file(s) (2 already committed)" in printed
    folder, glob = re.fullmatch(r"read it: (.+) \(pandas, pyarrow, Spark, Ray Data\); (.+) \(DuckDB, Polars\)",
                                printed.strip().splitlines()[-1]).groups()
    staged = out / "__staging" / "killed-run"
    staged.mkdir(parents=True)
    part = next(out.glob("part-*.parquet"))
    from nlp_tasks.output.layout import STAGED_NAME

    shutil.copy(part, staged / STAGED_NAME.format(unit=part.name.split("-")[1], first=0, nonce="deadbeef"))
    readers = {
        "pyarrow": output_table(Path(folder)).column("id").to_pylist(),
        "pandas": pd.read_parquet(folder).id.tolist(),
        "duckdb": [row[0] for row in duckdb.sql(f"select id from '{glob}'").fetchall()],
        "polars": pl.read_parquet(glob)["id"].to_list(),
        "duckdb, recursive": [row[0] for row in duckdb.sql(f"select id from '{out}/**/*.parquet'").fetchall()],
        "polars, recursive": pl.read_parquet(f"{out}/**/*.parquet")["id"].to_list(),
    }
    for reader, seen in readers.items():
        assert sorted(seen) == sorted(ids), reader


class FailingLater(http.server.SimpleHTTPRequestHandler):
    """Serves its folder for a few seconds after the first request (the driver's checks), then refuses every
    request (the workers' reads)."""

    first: ClassVar[list[float]] = []

    def do_GET(self):
        self.first.append(self.first[0] if self.first else time.monotonic())
        if time.monotonic() - self.first[0] > 5:
            self.send_error(403, "expired")
            return
        super().do_GET()

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_a_worker_failing_to_read_a_url_leaves_its_token_in_no_line_file_or_ray_log(tmp_path, models):
    """The token of an input URL a worker cannot read is nowhere: not on the terminal, not in the output, not in
    Ray's session folder (Ray Data's log, the worker's .err file)."""
    write_rows(tmp_path / "served" / "corpus.parquet", ["a0", "a1"])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        FailingLater, directory=str(tmp_path / "served")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = "tok3nS3CR3Tvalue"
    url = f"http://127.0.0.1:{server.server_address[1]}/corpus.parquet?token={secret}"
    ray_dir = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    try:
        config = write_config(tmp_path, url, sentiment(models))
        result = cli(config, env={"RAY_TMPDIR": ray_dir})
        assert result.returncode == 1 and FailingLater.first, result.stdout[-2000:] + result.stderr[-2000:]
        assert secret not in result.stdout + result.stderr
        logs = [path for path in Path(ray_dir).rglob("*") if path.is_file() and not path.is_socket()]
        assert any(path.suffix == ".err" for path in logs)
        assert any(b"ReadFailed" in path.read_bytes() for path in logs), "the worker's failure is in Ray's logs"
        for path in [*logs, *(tmp_path / "out").rglob("*")]:
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
    finally:
        server.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)
