"""Delta Lake tables, as output (`output.format: delta`) and as input: the real job, real files, moto's S3.

Each input file is one transaction of the output's log, exactly once: after a driver killed at any point and a
rerun, every input row is in the table's snapshot once, no data file was ever added twice to the log, and no
file of an uncommitted attempt is left. Added task columns are schema changes of the log; changed and vanished
inputs replace or remove their parts; a Delta input's new versions, deletes and compactions leave the output
holding every row of the input's snapshot once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import tiny_models
from helpers import REPO, assert_close, last_report, moto_server, run_job, sentiment, write_config

from jobs.annotate import main
from nlp_tasks.output.delta_layout import DELTA_PART

deltalake = pytest.importorskip("deltalake")
pytestmark = pytest.mark.slow  # whole job runs, killed and resumed
FILES = 8


def write_corpus(folder: Path, files: int, tag: str = "") -> list[str]:
    """`files` Parquet files of the tiny sample texts; returns every row's id."""
    texts = tiny_models.sample_texts()
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for index in range(files):
        rows = [f"{tag}{index}-{i}" for i in range(len(texts))]
        pq.write_table(pa.table({"id": rows, "text": texts}), folder / f"file-{index}.parquet")
        ids += rows
    return ids


def delta_config(path: Path, input_path: str, output_path: str, tasks: dict, **output) -> Path:
    """A job config writing a Delta table at `output_path`, in parts of 5 rows."""
    return Path(write_config(path.parent, input_path, tasks, name=path.name,
                             output={"path": output_path, "format": "delta", "rows_per_file": 5, **output},
                             compute={"num_cpus_per_actor": 0.5, "batch_size": 4}))


def snapshot(uri: str, version: int | None = None) -> pa.Table:
    return pa.table(deltalake.DeltaTable(uri, version=version).to_pyarrow_table())


def log_entries(out: Path) -> list[dict]:
    """Every action of every version of the table's log, in order."""
    return [json.loads(line) for file in sorted((out / "_delta_log").glob("*.json"))
            for line in file.read_text().splitlines() if line.strip()]


def added_paths(out: Path) -> list[str]:
    return [entry["add"]["path"] for entry in log_entries(out) if "add" in entry]


def committed_units(out: Path) -> set[str]:
    return {path.split("-")[1] for path in added_paths(out)} if (out / "_delta_log").exists() else set()


def assert_exactly_once(out: Path, ids: list[str]) -> None:
    """Every id once in the snapshot; no file ever added twice to the log; no data file outside the log."""
    assert sorted(snapshot(str(out)).column("id").to_pylist()) == sorted(ids)
    added = added_paths(out)
    assert len(added) == len(set(added)), "a data file was added to the log twice"
    on_disk = {path.name for path in out.glob("part-*.parquet")}
    assert on_disk <= set(added), f"files no log version lists: {sorted(on_disk - set(added))[:3]}"
    assert not (out / "__staging").exists()


def kill_when(process: subprocess.Popen, condition, what: str) -> None:
    deadline = time.monotonic() + 300
    while not condition():
        assert process.poll() is None, process.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, f"never reached: {what}"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_killed_delta_runs_then_resume_hold_every_row_once(ray_local, tmp_path, models, capsys):
    """SIGKILLs at each stage of a Delta run: parts written and none committed, some files committed, a marker
    written and its transaction not; the resume commits each remaining file once and removes the strays."""
    ids = write_corpus(tmp_path / "corpus", FILES)
    out = tmp_path / "out"
    config = delta_config(tmp_path / "job.yaml", str(tmp_path / "corpus"), str(out), sentiment(models))

    first = run_job(config)  # killed as soon as a worker's part is in the table's folder
    kill_when(first, lambda: any(out.glob("part-*.parquet")), "a part written")
    second = run_job(config)  # killed between the first and the last file's transaction
    before = committed_units(out)
    kill_when(second, lambda: len(committed_units(out) - before) >= 1, "a file committed")
    committed = committed_units(out)
    assert 1 <= len(committed) < FILES, "the kill should land between the first and the last commit"
    visible = snapshot(str(out))
    assert visible.num_rows == len(set(visible.column("id").to_pylist())), "a row is visible twice"

    # A driver killed between a commit's two steps leaves the unit's new marker, numbered one past the log's
    # last commit, and the parts that marker lists: what the commit writes, written here as it writes them.
    unit = min(committed)
    marker_path = out / "__manifest" / "units" / f"{unit}.json"
    marker = json.loads(marker_path.read_text())
    parts = [{**part, "file": part["file"][:-16] + "deadbeef.parquet"} for part in marker["parts"]]
    for old, new in zip(marker["parts"], parts):
        shutil.copy(out / old["file"], out / new["file"])
    number = deltalake.DeltaTable(str(out)).transaction_version("nlp-tasks") + 1
    marker_path.write_text(json.dumps({**marker, "txn": number, "parts": parts,
                                       "previous": {k: v for k, v in marker.items() if k != "previous"}}))

    capsys.readouterr()
    assert main(["--config", str(config)]) == 0
    assert f"({len(committed)} already committed)" in capsys.readouterr().out
    assert json.loads(marker_path.read_text())["parts"] == marker["parts"], "the commit that never landed is undone"
    assert not any((out / part["file"]).exists() for part in parts)
    assert_exactly_once(out, ids)


@pytest.mark.parametrize("side", ["output", "input"])
def test_delta_without_deltalake_installed_is_one_line_exit_2(tmp_path, models, side):
    write_corpus(tmp_path / "corpus", 1)
    if side == "output":
        config = delta_config(tmp_path / "job.yaml", str(tmp_path / "corpus"), str(tmp_path / "out"),
                              sentiment(models))
    else:  # a folder with a `_delta_log/` is a Delta table as input.path
        (tmp_path / "corpus" / "_delta_log").mkdir()
        config = write_config(tmp_path, tmp_path / "corpus", sentiment(models))
    code = ("import sys; sys.modules['deltalake'] = None; from jobs.annotate import main; "
            f"sys.exit(main(['--config', {str(config)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if "deltalake" in line]
    assert lines and "pip install 'nlp-tasks[delta]'" in lines[0] and "Traceback" not in done.stderr
    key = "output.format: delta" if side == "output" else "input.path"
    assert key in lines[0] and not (tmp_path / "out").exists(), "the key named, refused before the output is touched"


@pytest.fixture
def moto_s3():
    """A moto S3 server on loopback with bucket `lake`; its endpoint and credentials, for the job's processes."""
    with moto_server("lake") as settings:
        yield settings


def test_delta_output_on_s3_resumes_exactly_once(tmp_path, models, moto_s3):
    """On moto's S3: a run killed after its first commit, then a resume; the table read from S3 holds every row
    once, committed by conditional PUTs (`aws_conditional_put`)."""
    ids = write_corpus(tmp_path / "corpus", 4)
    config = delta_config(tmp_path / "job.yaml", str(tmp_path / "corpus"), "s3://lake/annotated",
                          sentiment(models))
    environment = {**os.environ, **moto_s3}
    uri, options = "s3://lake/annotated", {"AWS_ALLOW_HTTP": "true", "AWS_ENDPOINT_URL": moto_s3["AWS_ENDPOINT_URL"],
                                           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                                           "AWS_REGION": "us-east-1"}

    def committed() -> int:
        try:
            table = deltalake.DeltaTable(uri, storage_options=options)
        except Exception:  # noqa: BLE001 - no table yet
            return 0
        return len({path.split("-")[1] for path in pa.table(table.get_add_actions(flatten=True))["path"].to_pylist()})

    first = subprocess.Popen([sys.executable, "-m", "jobs.annotate", "--config", str(config)], cwd=REPO,
                             env=environment, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    kill_when(first, lambda: committed() >= 1, "a file committed on S3")
    done = subprocess.run([sys.executable, "-m", "jobs.annotate", "--config", str(config)], cwd=REPO,
                          env=environment, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    table = deltalake.DeltaTable(uri, storage_options=options)
    assert sorted(pa.table(table.to_pyarrow_table()).column("id").to_pylist()) == sorted(ids)
    import s3fs

    files = s3fs.S3FileSystem(client_kwargs={"endpoint_url": moto_s3["AWS_ENDPOINT_URL"]}, key="test",
                              secret="test").ls("lake/annotated")
    listed = set(pa.table(table.get_add_actions(flatten=True))["path"].to_pylist())
    assert {f.rsplit("/", 1)[-1] for f in files if "/part-" in f} == listed, "a stray or a missing part on S3"


def test_a_delta_input_on_s3_is_read_and_its_new_version_annotated_alone(tmp_path, models, moto_s3):
    """On moto's S3: a Delta table as input, read by the job's own reader from the snapshot's files; a version
    appended later is the only file the next run annotates."""
    uri = "s3://lake/source"
    options = {"AWS_ALLOW_HTTP": "true", "AWS_ENDPOINT_URL": moto_s3["AWS_ENDPOINT_URL"], "AWS_ACCESS_KEY_ID": "test",
               "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1", "aws_conditional_put": "etag"}
    texts = tiny_models.sample_texts()

    def append(tag: str) -> None:
        deltalake.write_deltalake(uri, pa.table({"id": [f"{tag}-{i}" for i in range(len(texts))], "text": texts}),
                                  mode="append", storage_options=options)

    def run() -> str:
        done = subprocess.run([sys.executable, "-m", "jobs.annotate", "--config", str(config)], cwd=REPO,
                              env={**os.environ, **moto_s3}, capture_output=True, text=True, timeout=600,
                              check=False)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        expected = pa.table(deltalake.DeltaTable(uri, storage_options=options).to_pyarrow_table()).column("id")
        assert sorted(pq.read_table(tmp_path / "out").column("id").to_pylist()) == sorted(expected.to_pylist())
        return done.stdout

    append("a")
    append("b")
    config = Path(write_config(tmp_path, uri, sentiment(models), compute={"num_cpus_per_actor": 0.5,
                                                                          "batch_size": 4}))
    assert "processed 2 input file(s) (0 already committed)" in run()
    append("c")
    assert "processed 1 input file(s) (2 already committed)" in run()


def history_of(out: Path) -> list[dict]:
    return deltalake.DeltaTable(str(out)).history()


def test_added_column_changed_and_vanished_inputs_and_readers(ray_local, tmp_path, models, capsys):
    """Night 1 annotates; night 2 adds a task (a schema change in the log, every row gets the column, the other
    is carried); night 3 sees one input file changed and one gone (`remove`). Every reader sees each row once,
    and time travel gives each night's table."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    ids = write_corpus(corpus, 3)
    config = delta_config(tmp_path / "job.yaml", str(corpus), str(out), sentiment(models),
                          vanished_inputs="remove")
    assert main(["--config", str(config)]) == 0
    night1 = deltalake.DeltaTable(str(out)).version()
    first = snapshot(str(out)).sort_by("id")
    assert first.column_names == ["id", "text", "sentiment", "errors"] and first.num_rows == len(ids)

    tasks = {**sentiment(models), "embedding": {"task": "feature-extraction",
                                                "model": str(models["token-classification"])}}
    delta_config(config, str(corpus), str(out), tasks, vanished_inputs="remove")
    assert main(["--config", str(config)]) == 0
    night2 = deltalake.DeltaTable(str(out)).version()
    assert "column embedding computed for 3 file(s)" in capsys.readouterr().out
    second = snapshot(str(out)).sort_by("id")
    assert second.column("sentiment").equals(first.column("sentiment"))
    assert second.column("embedding").null_count == 0 and second.num_rows == len(ids)
    assert any(entry.get("operation") == "ADD COLUMN" for entry in history_of(out))
    assert_exactly_once(out, ids)

    foreign = [out / "NOTES.txt", out / "part-0.parquet"]  # not this job's names: never deleted
    for path in foreign:
        path.write_text("someone else's")
    texts = tiny_models.sample_texts()[:5]
    pq.write_table(pa.table({"id": [f"new-{i}" for i in range(5)], "text": texts}), corpus / "file-0.parquet")
    (corpus / "file-2.parquet").unlink()
    assert main(["--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "changed" in printed or "file-0" in printed
    assert printed.strip().splitlines()[-1] == f"read it as a Delta table: {out}"
    expected = [f"new-{i}" for i in range(5)] + [i for i in ids if i.startswith("1-")]
    assert all(path.read_text() == "someone else's" for path in foreign)
    for path in foreign:
        path.unlink()
    assert_exactly_once(out, expected)
    night3 = deltalake.DeltaTable(str(out)).version()

    # Readers of the table, each seeing the same rows once; and time travel to each night's version.
    import polars
    import ray

    assert sorted(polars.read_delta(str(out))["id"].to_list()) == sorted(expected)
    assert sorted(deltalake.DeltaTable(str(out)).to_pandas()["id"]) == sorted(expected)
    assert sorted(ray.data.read_delta(str(out)).to_pandas()["id"]) == sorted(expected)
    assert sorted(snapshot(str(out), night1).column("id").to_pylist()) == sorted(ids)
    assert "embedding" not in snapshot(str(out), night1).column_names
    assert snapshot(str(out), night2).sort_by("id").column("embedding").equals(second.column("embedding"))
    assert sorted(polars.read_delta(str(out), version=night2)["id"].to_list()) == sorted(ids)
    assert night3 > night2 > night1


def test_a_second_run_on_a_held_table_exits_2_and_changes_nothing(ray_local, tmp_path, models, capsys):
    """Two runs at once: the one that finds the table's lease held stops before touching it, naming the holder."""
    from nlp_tasks.output.lease import Lease

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_corpus(corpus, 1)
    config = delta_config(tmp_path / "job.yaml", str(corpus), str(out), sentiment(models))
    assert main(["--config", str(config)]) == 0
    version = deltalake.DeltaTable(str(out)).version()
    holder = Lease(__import__("fsspec").filesystem("file"), str(out / "__manifest"))
    holder.acquire()  # the first run, still running
    try:
        (corpus / "file-1.parquet").write_bytes((corpus / "file-0.parquet").read_bytes())
        assert main(["--config", str(config)]) == 2
        assert f"run {holder.owner['run']}" in capsys.readouterr().err
        assert deltalake.DeltaTable(str(out)).version() == version
    finally:
        holder.release()


def test_an_output_table_another_writer_compacted_is_refused_as_it_is(ray_local, tmp_path, models, capsys):
    """OPTIMIZE by another writer replaces the job's parts with files the job cannot read back: the next run stops
    in one line and leaves the table as it is (annotating those rows again would hold them twice); restored to the
    version the message names, the table is the job's again."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    ids = write_corpus(corpus, 2)
    config = delta_config(tmp_path / "job.yaml", str(corpus), str(out), sentiment(models))
    assert main(["--config", str(config)]) == 0
    deltalake.DeltaTable(str(out)).optimize.compact()
    version, files = deltalake.DeltaTable(str(out)).version(), deltalake.DeltaTable(str(out)).file_uris()
    capsys.readouterr()
    assert main(["--config", str(config)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "file(s) this job did not write" in error and "OPTIMIZE" in error, error
    assert deltalake.DeltaTable(str(out)).version() == version
    assert deltalake.DeltaTable(str(out)).file_uris() == files
    assert sorted(snapshot(str(out)).column("id").to_pylist()) == sorted(ids)
    last = int(re.search(r"restore\((\d+)\), the job's last version", error).group(1))
    deltalake.DeltaTable(str(out)).restore(last)  # as the message says: the table is the job's again
    assert main(["--config", str(config)]) == 0
    assert "processed 0 input file(s) (2 already committed)" in capsys.readouterr().out
    assert sorted(snapshot(str(out)).column("id").to_pylist()) == sorted(ids)


def test_a_commit_another_writer_conflicts_with_is_one_line_and_the_next_run_repairs(ray_local, tmp_path, models):
    """Another writer deletes the rows of a file the job is about to replace: Delta's conflict check refuses the
    job's commit, which says so in one line; the next run annotates the deleted rows again, each once."""
    from nlp_tasks.driver.checks import delta_store
    from nlp_tasks.output.layout import OutputConflict

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    ids = write_corpus(corpus, 1)
    config = delta_config(tmp_path / "job.yaml", str(corpus), str(out), sentiment(models))
    assert main(["--config", str(config)]) == 0
    store = delta_store(str(out), "out", "stop")
    store.open(store.job(), "resume", lambda previous, job: None)
    try:
        deltalake.DeltaTable(str(out)).delete()  # the other writer, between the job's open and its commit
        with pytest.raises(OutputConflict) as refused:
            store.remove(next(iter(store.markers)))
        message = str(refused.value)
        assert "\n" not in message and "another writer changed the Delta table" in message, message
    finally:
        store.close()
    assert main(["--config", str(config)]) == 0
    assert_exactly_once(out, ids)


def test_overwrite_deletes_only_this_jobs_table_and_formats_are_not_mixed(ray_local, tmp_path, models, capsys):
    """`overwrite` refuses a table folder holding a file this job did not write, and otherwise starts the table
    again; a Delta output opened as Parquet (or the other way) is refused in one line."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    ids = write_corpus(corpus, 1)
    config = delta_config(tmp_path / "job.yaml", str(corpus), str(out), sentiment(models))
    assert main(["--config", str(config)]) == 0
    before = {path.name for path in out.glob("part-*.parquet")}
    parquet = delta_config(tmp_path / "parquet.yaml", str(corpus), str(out), sentiment(models), format="parquet")
    assert main(["--config", str(parquet)]) == 2
    assert "is a Delta table (output.format: delta)" in capsys.readouterr().err
    (out / "keep.csv").write_text("not the job's")
    delta_config(config, str(corpus), str(out), sentiment(models), if_exists="overwrite")
    assert main(["--config", str(config)]) == 2
    assert "holds 'keep.csv', which this job did not write" in capsys.readouterr().err
    (out / "keep.csv").unlink()
    assert main(["--config", str(config)]) == 0
    assert not before & {path.name for path in out.glob("part-*.parquet")}, "the old parts are deleted"
    assert [entry["operation"] for entry in history_of(out)][-1] == "CREATE TABLE"
    assert_exactly_once(out, ids)


def version_rows(uri: str) -> list[int]:
    """The rows of every version of the table, oldest first, as a reader pinning each version counts them."""
    table = deltalake.DeltaTable(uri)
    return [snapshot(uri, version).num_rows for version in range(table.version() + 1)]


def compacted_input(tmp_path: Path, files: int, models) -> tuple[Path, Path, Path]:
    """A Delta input of `files` files and a job writing a Delta output of it: the input, the output, the config."""
    source, out = tmp_path / "table", tmp_path / "out"
    texts = tiny_models.sample_texts()
    for index in range(files):
        deltalake.write_deltalake(str(source), pa.table({"id": [f"{index}-{i}" for i in range(len(texts))],
                                                         "text": texts}), mode="append")
    config = delta_config(tmp_path / "job.yaml", str(source), str(out), sentiment(models))
    return source, out, config


def test_a_compacted_input_is_replaced_in_one_version_and_no_version_loses_rows(ray_local, tmp_path, models,
                                                                                capsys):
    """The input compacted, then a file of it rewritten by a DELETE: the output adds the new file's parts and
    removes the replaced ones in one version, as OPTIMIZE does; no version a reader can pin ever holds fewer rows
    than the one before."""
    source, out, config = compacted_input(tmp_path, 3, models)
    assert main(["--config", str(config)]) == 0
    before = deltalake.DeltaTable(str(out)).version()
    deltalake.DeltaTable(str(source)).optimize.compact()
    capsys.readouterr()
    assert main(["--config", str(config)]) == 0
    assert "processed 1 input file(s) (0 already committed)" in capsys.readouterr().out  # the compacted file
    assert_exactly_once(out, snapshot(str(source)).column("id").to_pylist())
    sentiment_rows = last_report(out)["throughput"]["sentiment"]
    assert (sentiment_rows["rows"], sentiment_rows["reused"]) == (0, 36), "a compaction costs hashing, not inference"
    rows = version_rows(str(out))
    assert rows[before + 1:] == [rows[before]] * (len(rows) - before - 1), rows
    entries = [json.loads(line) for line in
               (out / "_delta_log" / f"{deltalake.DeltaTable(str(out)).version():020d}.json").read_text().splitlines()]
    assert any("add" in entry for entry in entries) and any("remove" in entry for entry in entries)
    deltalake.DeltaTable(str(source)).delete("id = '0-1'")  # a file rewritten without a row: replaced at once too
    before = deltalake.DeltaTable(str(out)).version()
    assert main(["--config", str(config)]) == 0
    assert version_rows(str(out))[before + 1:] == [snapshot(str(source)).num_rows]
    assert_exactly_once(out, snapshot(str(source)).column("id").to_pylist())


def test_killed_around_the_delta_replace_then_resume_never_loses_rows(ray_local, tmp_path, models, capsys):
    """SIGKILLed while the compacted input's parts are written, before their one version: the table is as before
    the run at every version; the resume replaces in one version and holds every row once."""
    source, out, config = compacted_input(tmp_path, 3, models)
    assert main(["--config", str(config)]) == 0
    before = deltalake.DeltaTable(str(out)).version()
    old_parts = set(out.glob("part-*.parquet"))
    deltalake.DeltaTable(str(source)).optimize.compact()
    second = run_job(config)
    kill_when(second, lambda: set(out.glob("part-*.parquet")) - old_parts, "a part of the compacted file written")
    rows = version_rows(str(out))
    assert min(rows[before:]) == rows[before], rows
    capsys.readouterr()
    assert main(["--config", str(config)]) == 0
    assert "sentiment: 0 rows computed, 36 reused" in capsys.readouterr().out
    rows = version_rows(str(out))
    assert min(rows[before:]) == rows[before], rows
    assert_exactly_once(out, snapshot(str(source)).column("id").to_pylist())


def test_killed_while_redoing_a_compacted_output_then_resume_never_loses_rows(ray_local, tmp_path, models):
    """SIGKILLed while the rows of an output another writer compacted and vacuumed are annotated again
    (if_compacted: redo), before their one version: the table is as it was; the resume swaps them in one version
    and holds every row once."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    ids = write_corpus(corpus, 3)
    config = delta_config(tmp_path / "job.yaml", str(corpus), str(out), sentiment(models), if_compacted="redo")
    assert main(["--config", str(config)]) == 0
    table = deltalake.DeltaTable(str(out))
    table.optimize.compact()
    table.vacuum(retention_hours=0, dry_run=False, enforce_retention_duration=False)
    compacted = deltalake.DeltaTable(str(out)).version()
    files = set(out.glob("part-*.parquet"))
    second = run_job(config)
    kill_when(second, lambda: set(out.glob("part-*.parquet")) - files, "a part of the compacted rows written")
    assert deltalake.DeltaTable(str(out)).version() == compacted
    assert sorted(snapshot(str(out)).column("id").to_pylist()) == sorted(ids)
    assert main(["--config", str(config)]) == 0
    rows = [snapshot(str(out), version).num_rows
            for version in range(compacted, deltalake.DeltaTable(str(out)).version() + 1)]
    assert min(rows) == max(rows) == len(ids), rows
    assert_exactly_once(out, ids)


def test_an_output_optimized_then_vacuumed_by_another_writer_is_refused_then_redone_on_request(ray_local, tmp_path,
                                                                                              models, capsys):
    """OPTIMIZE then VACUUM by another writer: the job's last version cannot be restored (its files are gone), and
    the refusal says so instead of naming restore, and names the ways that lose nothing; the table is untouched.
    With `if_compacted: redo`, a compacted input file gone from the input is refused (its rows would go with the
    compacted files); with it back, the compacted rows are annotated again, with a new input file, and the compacted
    files leave the log in the version that adds them back: no version from the compaction on holds fewer rows,
    every row is there once with the values it had, the table holds only the job's parts, and the next night
    finds every file committed."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    ids = write_corpus(corpus, 3)
    config = delta_config(tmp_path / "job.yaml", str(corpus), str(out), sentiment(models))
    assert main(["--config", str(config)]) == 0
    before = snapshot(str(out)).sort_by("id")
    table = deltalake.DeltaTable(str(out))
    table.optimize.compact()
    table.vacuum(retention_hours=0, dry_run=False, enforce_retention_duration=False)
    compacted = deltalake.DeltaTable(str(out)).version()
    capsys.readouterr()
    assert main(["--config", str(config)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "cannot be restored: a VACUUM deleted" in error[0], error
    assert "restore(" not in error[0] and "output.if_compacted: redo" in error[0], error
    assert "new output.path" in error[0], error
    assert deltalake.DeltaTable(str(out)).version() == compacted
    assert sorted(snapshot(str(out)).column("id").to_pylist()) == sorted(ids)

    texts = tiny_models.sample_texts()
    pq.write_table(pa.table({"id": [f"new-{i}" for i in range(len(texts))], "text": texts}), corpus / "new.parquet")
    redo = delta_config(tmp_path / "redo.yaml", str(corpus), str(out), sentiment(models), if_compacted="redo")
    (corpus / "file-2.parquet").rename(tmp_path / "away.parquet")  # its rows are only in the compacted files
    capsys.readouterr()
    assert main(["--config", str(redo)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "file-2.parquet" in error[0] and "no longer in the input" in error[0], error
    assert deltalake.DeltaTable(str(out)).version() == compacted
    (tmp_path / "away.parquet").rename(corpus / "file-2.parquet")
    assert main(["--config", str(redo)]) == 0
    assert "processed 4 input file(s) (0 already committed)" in capsys.readouterr().out
    rows = [snapshot(str(out), version).num_rows  # earlier versions' files are vacuumed
            for version in range(compacted, deltalake.DeltaTable(str(out)).version() + 1)]
    assert min(rows) == len(ids) and max(rows) == rows[-1] == len(ids) + len(texts), rows
    assert_exactly_once(out, ids + [f"new-{i}" for i in range(len(texts))])
    assert all(DELTA_PART.match(Path(uri).name) for uri in deltalake.DeltaTable(str(out)).file_uris())
    after = snapshot(str(out)).filter(pc.is_in(snapshot(str(out)).column("id"), before.column("id")))
    assert_close(after.sort_by("id").select(before.column_names).to_pylist(), before.to_pylist())
    assert main(["--config", str(config)]) == 0
    assert "processed 0 input file(s) (4 already committed)" in capsys.readouterr().out
