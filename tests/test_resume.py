"""A crashed run resumes: kill the driver (and its embedded Ray) after some files committed, rerun.

The rerun must leave every input row exactly once in the output and must not recompute files
that were already committed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import yaml

from conftest import REPO

FILES = 8


def run_job(config):
    # Ray packs small Parquet files into read units of up to 128 MiB; one file per unit here, so
    # that files complete (and commit) one after another as they would in a corpus of large files.
    env = {**os.environ, "RAY_DATA_PARQUET_BIN_PACKING_BYTES": "1"}
    return subprocess.Popen([sys.executable, "-m", "jobs.annotate", "--config", str(config)], cwd=REPO, env=env,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def corpus_and_config(tmp_path, minilm, compute) -> tuple[Path, list[str]]:
    """The BBC sample split into FILES Parquet files, and a MiniLM embedding job over them; returns the
    config's path and the ids every run must end with exactly once."""
    sample = pq.read_table(REPO / "data" / "bbc_sample.parquet")
    folder = tmp_path / "corpus"
    folder.mkdir()
    per_file = sample.num_rows // FILES
    for index in range(FILES):
        pq.write_table(sample.slice(index * per_file, per_file), folder / f"part-{index}.parquet")
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "input": {"path": str(folder), "id_column": "id"},
        "output": {"path": str(tmp_path / "out")},
        "tasks": {"embedding": {"task": "feature-extraction", "model": minilm, "max_length": 256}},
        "compute": compute,
    }))
    return config, sample.column("id").to_pylist()[: FILES * per_file]


def test_killed_driver_then_rerun_gives_every_row_exactly_once(tmp_path, minilm):
    config, ids = corpus_and_config(tmp_path, minilm, {"batch_size": 5})
    manifest = tmp_path / "out" / "_manifest"

    first = run_job(config)
    deadline = time.monotonic() + 240
    while not list(manifest.glob("????????????????.json")):
        assert first.poll() is None, first.stdout.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no file was committed in time"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray it started die together, as in a crash
    first.wait()
    committed = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("part-*.parquet")}
    assert 1 <= len(committed) < FILES, "the kill should land between the first and the last commit"

    second = run_job(config)
    output = second.communicate(timeout=300)[0].decode()
    assert second.returncode == 0, output[-2000:]
    assert f"processed {FILES - len(committed)} input file(s) ({len(committed)} already committed)" in output
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("part-*.parquet")
            if p.name in committed} == committed
    output_ids = pads.dataset(tmp_path / "out", format="parquet").to_table(columns=["id"]).column("id")
    assert sorted(output_ids.to_pylist()) == sorted(ids)
    assert not list((tmp_path / "out" / "_staging").iterdir())
