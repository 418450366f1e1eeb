"""A crashed run resumes: kill the driver (and its embedded Ray) after some files committed, rerun.

The rerun must leave every input row exactly once in the output and must not recompute files
that were already committed.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from helpers import FILES, corpus_and_config, embedding_job, last_report, run_job, staged_units

from jobs.annotate import main

pytestmark = pytest.mark.slow  # MiniLM jobs: the killed run a process of its own, as a user runs it; the others in-process


def test_killed_driver_then_rerun_gives_every_row_exactly_once(ray_local, tmp_path, minilm, capsys):
    """Killed while a file's parts are staged but not committed: none of its rows is visible; the rerun
    redoes exactly the uncommitted files, keeps the committed ones, and every row ends up there once."""
    config, ids = corpus_and_config(tmp_path, minilm, {"batch_size": 5})
    out = tmp_path / "out"
    manifest = out / "__manifest" / "units"

    first = run_job(config)
    deadline = time.monotonic() + 240
    while not (list(manifest.glob("*.json")) and staged_units(out) - {p.stem for p in manifest.glob("*.json")}):
        assert first.poll() is None, first.stdout.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no file was committed in time"
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray it started die together, as in a crash
    first.wait()
    markers = {p.stem: json.loads(p.read_text()) for p in manifest.glob("*.json")}
    assert 1 <= len(markers) < FILES, "the kill should land between the first and the last commit"
    assert staged_units(out) - set(markers), "some file should have staged parts and no marker"
    listed = {part["file"] for marker in markers.values() for part in marker["parts"]}
    visible = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert set(visible) <= listed, "a part of an uncommitted file is visible"
    staged_rows = sum(pq.read_metadata(path).num_rows for path in (out / "__staging").rglob("*.staged")
                      if path.name.split("-")[0] not in markers)

    capsys.readouterr()
    assert main(["--config", config]) == 0
    assert f"processed {FILES - len(markers)} input file(s) ({len(markers)} already committed)" in \
        capsys.readouterr().out
    report = last_report(out)
    embedding = report["throughput"]["embedding"]
    assert embedding["rows"] + embedding["reused"] == report["rows_this_run"]
    assert embedding["reused"] >= staged_rows > 0, "the killed run's computed values serve its resume"
    assert {name: (out / name).stat().st_mtime_ns for name in visible} == visible
    output_ids = pads.dataset(out, format="parquet").to_table(columns=["id"]).column("id")
    assert sorted(output_ids.to_pylist()) == sorted(ids)
    assert not (out / "__staging").exists(), "staging is removed with what it held"


def test_killed_incremental_run_then_rerun_adds_the_task_to_every_row_once(ray_local, tmp_path, minilm, capsys):
    """A task added to an annotated corpus, the run killed between commits: a file's parts are its old ones, or
    new ones its marker lists (moved into place, or still staged and moved by the next run); the rerun finishes
    the others, and the first task's values never change."""
    config, ids = corpus_and_config(tmp_path, minilm, {"batch_size": 5})
    out = tmp_path / "out"
    assert main(["--config", config]) == 0
    before = pads.dataset(out, format="parquet").to_table(columns=["id", "embedding"]).sort_by("id")

    embedding_job(tmp_path, minilm, {"batch_size": 5}, topic={
        "task": "embedding-classification", "model": minilm, "max_length": 64,
        "candidate_labels": ["business", "politics", "sport", "technology", "entertainment"]})
    manifest = out / "__manifest" / "units"

    def with_topic() -> set[str]:
        return {p.stem for p in manifest.glob("*.json") if "topic" in json.loads(p.read_text())["tasks"]}

    second = run_job(config)
    deadline = time.monotonic() + 240
    while not (with_topic() and staged_units(out) - with_topic()):
        assert second.poll() is None, second.stdout.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no file was committed in time"
        time.sleep(0.02)
    os.killpg(second.pid, signal.SIGKILL)
    second.wait()
    done = with_topic()
    assert 1 <= len(done) < FILES
    for marker in manifest.glob("*.json"):
        for part in json.loads(marker.read_text())["parts"]:
            new = "topic" in pq.read_schema(out / part["file"]).names
            assert new or (out / part["staged"]).exists() if marker.stem in done else not new

    capsys.readouterr()
    assert main(["--config", config]) == 0
    assert f"processed {FILES - len(done)} input file(s) ({len(done)} already committed)" in capsys.readouterr().out
    after = pads.dataset(out, format="parquet").to_table(columns=["id", "embedding", "topic"]).sort_by("id")
    assert after.column("id").to_pylist() == sorted(ids)
    assert after.column("embedding").equals(before.column("embedding"))
    assert after.column("topic").null_count == 0
