"""What tests share besides fixtures: the repository's paths, the one way to write a job config, the CLI as a
user runs it, the BBC corpus of the kill-and-rerun tests, and reading back an output.

Test modules import from here, never from one another or from conftest (which holds fixtures only).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml

from nlp_tasks.models.node_cpu import CAPS

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "bbc_sample.parquet"
"""200 BBC news articles with id, text and category columns."""

AVX2_CAPS = CAPS["avx2"]
"""The environment of an AVX2-only node (no AVX-512, VNNI or native bfloat16), emulated on a newer machine."""

COMPUTE = {"num_cpus_per_actor": 0.25, "batch_size": 8, "max_actors": 1}
"""write_config's compute section unless a test says otherwise: one quarter-CPU actor per pool. Each actor more
costs seconds of both cores to start (torch and transformers import in each); the tests of pools ask for more."""


# job configs -----------------------------------------------------------------------------------------------------


def write_config(folder: Path, input_path, tasks: dict, *, name: str = "job.yaml", keep_order: bool = False,
                 **sections) -> str:
    """Write a job config to `folder / name`; returns its path as the string `--config` takes.

    Each section given as a dict is merged over its default: input {path: input_path, id_column: id}, output
    {path: folder/out}, compute COMPUTE; a key given None is left out, and so is a section given None (compute=None:
    no compute section, the job sizes its pools). Other sections (tasks excepted, taken as given) are set as given.
    Paths may be Path objects. Keys are written sorted, as yaml writes them, unless `keep_order` (the order of the
    tasks is the order of the output's columns).
    """
    config = {
        "input": {"path": input_path, "id_column": "id"},
        "output": {"path": Path(folder) / "out"},
        "tasks": tasks,
        "compute": dict(COMPUTE),
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            values = {**config[section], **values}
        config[section] = values
    config = {section: {key: value for key, value in values.items() if value is not None}
              if isinstance(values, dict) and section != "tasks" else values
              for section, values in config.items() if values is not None}
    path = Path(folder) / name
    path.write_text(yaml.safe_dump(_plain(config), sort_keys=not keep_order))
    return str(path)


def sentiment(models, column: str = "sentiment") -> dict:
    """The tasks of most job tests: sentiment on the tiny text classifier, in a column named `column`."""
    return {column: {"task": "sentiment-analysis", "model": str(models["text-classification"])}}


def _plain(value):
    """Paths as strings, everything else as it is, so that yaml.safe_dump takes it."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return str(value) if isinstance(value, Path) else value


# the CLI as a user runs it ---------------------------------------------------------------------------------------


def cli(config: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI run as a user runs it, its output captured; `env`: variables set for it (and its embedded Ray)."""
    return subprocess.run([sys.executable, "-m", "jobs.annotate", "--config", str(config), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, **env} if env else None)


def error_line(config: str, *args: str, secret: str | None = None) -> str:
    """The CLI run as a user runs it: exit 2 and one line on stderr, no traceback, and `secret` nowhere."""
    result = cli(config, *args)
    if secret is not None:
        assert secret not in result.stdout + result.stderr, result.stdout[-3000:] + result.stderr[-3000:]
    return one_error_line(result.returncode, result.stderr)


def refusal(capsys, config: str, *args: str) -> str:
    """`error_line` in this process, for a refusal the process boundary adds nothing to: main() returns 2 and
    prints one line on stderr, no traceback; returns it."""
    from jobs.annotate import main

    capsys.readouterr()
    code = main(["--config", str(config), *args])
    return one_error_line(code, capsys.readouterr().err)


def one_error_line(code: int, stderr: str) -> str:
    """A refusal as the user sees it: exit 2 and one line on stderr starting "error: ", no traceback; returns it."""
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, stderr[-3000:])
    return lines[0]


def run_job(config) -> subprocess.Popen:
    """The job as a user runs it, in a session of its own (so that a test can kill it with its embedded Ray)."""
    return subprocess.Popen([sys.executable, "-m", "jobs.annotate", "--config", str(config)], cwd=REPO,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def free_port() -> int:
    """A TCP port nothing listens on now (on loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# the BBC corpus of the kill-and-rerun tests ------------------------------------------------------------------------

FILES = 8
"""Input files of bbc_corpus."""


def bbc_corpus(folder: Path) -> list[str]:
    """The BBC sample split into FILES Parquet files in `folder`; returns the ids every run must end with once."""
    sample = pq.read_table(SAMPLE)
    folder.mkdir()
    per_file = sample.num_rows // FILES
    for index in range(FILES):
        pq.write_table(sample.slice(index * per_file, per_file), folder / f"part-{index}.parquet")
    return sample.column("id").to_pylist()[: FILES * per_file]


def embedding_job(tmp_path: Path, minilm: str, compute: dict, **tasks) -> str:
    """A MiniLM embedding job (and `tasks` besides) over bbc_corpus(tmp_path / "corpus"), its actors sized by the job
    unless `compute` sizes them; returns the config's path. Texts are cut at 64 tokens: long enough that a run takes
    seconds to commit its files one by one (the kill tests land between two commits), short enough to run in them."""
    embedding = {"task": "feature-extraction", "model": minilm, "max_length": 64}
    return write_config(tmp_path, tmp_path / "corpus", {"embedding": embedding, **tasks}, output={"rows_per_file": 5},
                        compute={"num_cpus_per_actor": None, "batch_size": None, **compute})


def corpus_and_config(tmp_path: Path, minilm: str, compute: dict) -> tuple[str, list[str]]:
    """bbc_corpus and embedding_job together; returns the config's path and the ids every run must end with once."""
    ids = bbc_corpus(tmp_path / "corpus")
    return embedding_job(tmp_path, minilm, compute), ids


# inputs and outputs ----------------------------------------------------------------------------------------------


def write_rows(path: Path, ids: list[str], texts: list[str] | None = None) -> None:
    """A Parquet file of id and text columns (the texts made from the ids unless given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    texts = texts or [f"{i} moved to Paris." for i in ids]
    pq.write_table(pa.table({"id": ids, "text": texts}), path)


def output_table(out: Path) -> pa.Table:
    """Every row an output holds, as a reader sees them."""
    return pads.dataset(out, format="parquet").to_table()


def recorded_markers(out: Path) -> dict[str, dict]:
    """The markers as the output's index recorded them at its last run's end (parts with their versions)."""
    from fsspec.implementations.local import LocalFileSystem

    from nlp_tasks.output.index import read_index

    return {unit: entry["marker"]
            for unit, entry in read_index(LocalFileSystem(), str(out / "__manifest" / "units.json.gz")).items()}


def last_report(out: Path) -> dict:
    """The latest run report of an output."""
    return json.loads(max((out / "__reports").glob("*.json")).read_text())


def lease_file(out: Path, number: int, **holder) -> Path:
    """Another run's lease on output `out`, numbered `number`, from another host; `holder` sets or adds its keys
    (`expires_at` among them). Returns its path."""
    path = out / "__manifest" / f"lease-{number:08d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run": "r1", "host": "other-host", "pid": 1, "started_at": "then", **holder}))
    return path


def staged_units(out: Path) -> set[str]:
    """Units with parts written by the workers but not yet committed (staging file names start with the unit)."""
    return {p.name.split("-")[0] for p in out.glob("__staging/*/*.parquet.staged")}


def assert_close(ours, theirs, path="value"):
    """Structural equality with float tolerance 1e-4."""
    if isinstance(theirs, float) or isinstance(ours, float):
        assert ours == pytest.approx(theirs, abs=1e-4), path
    elif isinstance(theirs, dict):
        assert set(ours) >= set(theirs), path
        for key in theirs:
            assert_close(ours[key], theirs[key], f"{path}.{key}")
    elif isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs), path
        for index, (a, b) in enumerate(zip(ours, theirs)):
            assert_close(a, b, f"{path}[{index}]")
    else:
        assert ours == theirs, path


@contextmanager
def moto_server(bucket: str) -> Iterator[dict[str, str]]:
    """A moto S3 server process on loopback with `bucket` in it; yields the settings its clients need (test
    credentials, its endpoint), and stops it at the end."""
    import boto3

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto's server did not start in 30 s"
                time.sleep(0.2)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                     aws_secret_access_key="test").create_bucket(Bucket=bucket)
        yield {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "FSSPEC_S3_ENDPOINT_URL": endpoint}
    finally:
        server.terminate()
        server.wait(timeout=10)

