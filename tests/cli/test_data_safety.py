"""Nothing the user owns is lost, nothing wrong is passed off as done: the job against hostile trees and users."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from helpers import (
    corpus_and_config,
    error_line,
    free_port,
    last_report,
    lease_file,
    output_table,
    refusal,
    run_job,
    sentiment,
    write_config,
    write_rows,
)

from jobs.annotate import main

# overwrite and overlapping trees --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["resume", "overwrite", "error"])
def test_output_overlapping_the_input_is_refused_in_every_mode(tmp_path, models, mode, capsys):
    corpus = tmp_path / "corpus"
    write_rows(corpus / "a.parquet", ["a0", "a1"])
    before = sorted(p.name for p in corpus.iterdir())
    for output in (corpus, tmp_path, corpus / "out"):  # the input itself, a folder holding it, one inside it
        config = write_config(tmp_path, corpus, sentiment(models), output={"path": output, "if_exists": mode})
        line = refusal(capsys, config)
        assert "overlaps the input" in line, line
    assert sorted(p.name for p in corpus.iterdir()) == before


@pytest.mark.slow
def test_overwrite_refuses_a_folder_this_job_did_not_make(tmp_path, models, capsys):
    corpus, out = tmp_path / "corpus", tmp_path / "precious"
    write_rows(corpus / "a.parquet", ["a0"])
    out.mkdir()
    (out / "thesis.parquet").write_bytes(b"years of work")
    config = write_config(tmp_path, corpus, sentiment(models), output={"path": out, "if_exists": "overwrite"})
    line = refusal(capsys, config)
    assert "not an output of this job" in line
    assert (out / "thesis.parquet").read_bytes() == b"years of work"


@pytest.mark.slow
def test_overwrite_deletes_only_what_the_job_wrote(ray_local, tmp_path, models, capsys):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_rows(corpus / "a.parquet", ["a0", "a1"])
    config = write_config(tmp_path, corpus, sentiment(models), output={"path": out, "if_exists": "overwrite"})
    assert main(["--config", config]) == 0
    (out / "notes.txt").write_text("mine")
    line = refusal(capsys, config)
    assert "'notes.txt', which this job did not write" in line and (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    assert main(["--config", config]) == 0
    assert sorted(output_table(out).column("id").to_pylist()) == ["a0", "a1"]


# paths never become values -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_folder_names_never_become_column_values_unless_asked(ray_local, tmp_path, models, capsys):
    corpus = tmp_path / "corpus"
    write_rows(corpus / "text=evil" / "lang=en" / "a.parquet", ["a0", "a1"], ["Paris is big.", "Rome is old."])
    config = write_config(tmp_path, corpus, sentiment(models))
    assert main(["--config", config]) == 0
    table = output_table(tmp_path / "out")
    assert table.column("text").to_pylist() == ["Paris is big.", "Rome is old."] and "lang" not in table.column_names

    hive = write_config(tmp_path, corpus, sentiment(models), input={"partitioning": "hive"},
                        output={"path": tmp_path / "hive"})
    line = refusal(capsys, hive)
    assert "a.parquet" in line and "partition folder text=... names a column the file already has" in line
    shutil.move(corpus / "text=evil" / "lang=en", corpus / "lang=en")
    shutil.rmtree(corpus / "text=evil")
    assert main(["--config", hive]) == 0
    assert output_table(tmp_path / "hive").column("lang").to_pylist() == ["en", "en"]


# input files that change between runs ---------------------------------------------------------------------------


@pytest.mark.slow
def test_changed_grown_shrunk_renamed_and_vanished_files(ray_local, tmp_path, models):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    for name in "abcde":
        write_rows(corpus / f"{name}.parquet", [f"{name}0", f"{name}1", f"{name}2"])
    config = write_config(tmp_path, corpus, sentiment(models))
    assert main(["--config", config]) == 0

    write_rows(corpus / "a.parquet", ["a0", "a1", "a2"], ["Now about Tokyo."] * 3)  # rewritten, same size
    write_rows(corpus / "b.parquet", ["b0", "b1", "b2", "b3"])  # grown
    write_rows(corpus / "c.parquet", ["c0"])  # shrunk
    (corpus / "d.parquet").rename(corpus / "d-renamed.parquet")
    (corpus / "e.parquet").unlink()
    assert main(["--config", config]) == 0
    rows = {row["id"]: row for row in output_table(out).to_pylist()}
    assert sorted(rows) == ["a0", "a1", "a2", "b0", "b1", "b2", "b3", "c0", "d0", "d1", "d2", "e0", "e1", "e2"]
    assert rows["a0"]["text"] == "Now about Tokyo."
    changes = last_report(out)["input_changes"]
    assert sorted(Path(p).name for p in changes["changed"]) == ["a.parquet", "b.parquet", "c.parquet"]
    assert {Path(new).name: Path(old).name for new, old in changes["renamed"].items()} == {
        "d-renamed.parquet": "d.parquet"}
    assert [Path(p).name for p in changes["vanished"]] == ["e.parquet"] and changes["vanished_rows"] == "kept"

    removing = write_config(tmp_path, corpus, sentiment(models), output={"vanished_inputs": "remove"})
    assert main(["--config", removing]) == 0
    assert not any(i.startswith("e") for i in output_table(out).column("id").to_pylist())


# one writer at a time ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_live_lease_is_respected_and_an_expired_one_taken_over(ray_local, tmp_path, models, capsys):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_rows(corpus / "a.parquet", ["a0"])
    config = write_config(tmp_path, corpus, sentiment(models))
    assert main(["--config", config]) == 0
    live = lease_file(out, 7, expires_at=time.time() + 600, expires="in ten minutes")
    line = refusal(capsys, config)
    assert "run r1 (host other-host, pid 1, started then) is writing to this output" in line
    live.write_text(json.dumps({"run": "r1", "host": "other-host", "pid": 1, "expires_at": time.time() - 1}))
    assert main(["--config", config]) == 0
    assert not list((out / "__manifest").glob("lease-*.json")), "the expired lease is cleared, and ours released"


def test_racing_runs_get_the_lease_exactly_once(tmp_path):
    import fsspec

    from nlp_tasks.output.lease import Lease, LeaseHeld

    filesystem = fsspec.filesystem("file")
    results: list[str] = []
    winners: list[Lease] = []
    start = threading.Barrier(8)

    def contend():
        lease = Lease(filesystem, str(tmp_path / "__manifest"))
        start.wait()
        try:
            lease.acquire()
            results.append("won")
            winners.append(lease)
        except LeaseHeld:
            results.append("refused")

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for lease in winners:
        lease.release()  # and its heartbeat thread with it: none outlives the test
    assert sorted(results) == ["refused"] * 7 + ["won"]


@pytest.mark.slow
def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(tmp_path, minilm):
    config, _ = corpus_and_config(tmp_path, minilm, {"batch_size": 5})
    first = run_job(config)
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "out" / "__manifest").glob("lease-*.json")):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert "is writing to this output" in error_line(config)
        assert first.wait(timeout=300) == 0
    finally:
        first.kill()


# control files ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_torn_control_files_are_named(ray_local, tmp_path, models, capsys):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_rows(corpus / "a.parquet", ["a0", "a1"])
    write_rows(corpus / "b.parquet", ["b0"])
    config = write_config(tmp_path, corpus, sentiment(models))
    assert main(["--config", config]) == 0
    marker = next((out / "__manifest" / "units").glob("*.json"))
    marker.write_text('{"unit": "cut sho')
    capsys.readouterr()
    assert main(["--config", config]) == 0
    assert "processed 1 input file(s) (1 already committed)" in capsys.readouterr().out
    assert any(marker.name in note for note in last_report(out)["input_changes"]["repaired"])
    assert sorted(output_table(out).column("id").to_pylist()) == ["a0", "a1", "b0"]

    (out / "__manifest" / "job.json").write_text("{")
    line = refusal(capsys, config)
    assert "job.json is not valid JSON" in line


def test_column_names_are_checked_together():
    from nlp_tasks.config import ConfigError, parse_config

    base = {"input": {"path": "in"}, "output": {"path": "out"}}
    task = {"task": "sentiment-analysis", "model": "m"}
    cases = [
        ({"tasks": {"row_id": task}}, "output.generated_id_column: column name 'row_id' is also tasks.row_id"),
        ({"tasks": {"text": task}}, "input.text_column: column name 'text' is also tasks.text"),
        ({"tasks": {"s": task}, "output": {"path": "o", "errors_column": "row_id"}},
         "output.generated_id_column: column name 'row_id' is also output.errors_column"),
        ({"tasks": {"__unit": task}}, "tasks.__unit: column name '__unit' is empty or starts with '__'"),
    ]
    for extra, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            parse_config({**base, **extra})


# secrets ------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def served(folder):
    """An HTTP server on loopback serving `folder`; yields its port."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port),
                               "--directory", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield port
    finally:
        server.terminate()
        server.wait()


@pytest.mark.slow
def test_credentials_in_an_input_url_are_never_recorded(ray_local, tmp_path, models):
    write_rows(tmp_path / "served" / "corpus.parquet", ["a0", "a1"])
    with served(tmp_path / "served") as port:
        url = f"http://reader:hunter2@127.0.0.1:{port}/corpus.parquet"
        config = write_config(tmp_path, url, sentiment(models), input={"id_column": None})
        assert main(["--config", config]) == 0
    out = tmp_path / "out"
    ids = output_table(out).column("row_id").to_pylist()
    assert ids == [f"http://127.0.0.1:{port}/corpus.parquet:{i}" for i in range(2)]
    for path in out.rglob("*"):
        if path.is_file():
            assert b"hunter2" not in path.read_bytes(), path


@pytest.mark.slow
def test_credentials_the_filesystem_uses_never_reach_the_terminal(tmp_path, models):
    """http:// takes credentials from the URL; when the input, model or examples it names cannot be read, or the
    output cannot be written there, the one-line error names the URL without them."""
    (tmp_path / "served").mkdir()
    corpus = tmp_path / "corpus"
    write_rows(corpus / "a.parquet", ["a0"])
    with served(tmp_path / "served") as port:
        base = f"http://reader:hunter2@127.0.0.1:{port}"
        cases = {
            "input.path": (lambda: write_config(tmp_path, f"{base}/missing.parquet", sentiment(models)),
                           "missing.parquet"),
            "output.path": (lambda: write_config(tmp_path, corpus, sentiment(models), output={"path": f"{base}/out"}),
                            "/out"),
            "model": (lambda: write_config(tmp_path, corpus, {"sentiment": {
                "task": "sentiment-analysis", "model": f"{base}/model"}}), "/model"),
            "examples": (lambda: write_config(tmp_path, corpus, {"sentiment": {
                "task": "embedding-classification", "model": str(models["token-classification"]),
                "examples": {"path": f"{base}/examples.parquet"}}}), "/examples.parquet"),
        }
        for name, (config, where) in cases.items():
            line = error_line(config(), secret="hunter2")
            assert f"http://127.0.0.1:{port}" in line and where in line, (name, line)


def test_log_records_and_stderr_lines_are_redacted(capfd):
    """What no message of ours formats, a library's log record or traceback, a line a C++ library or Ray writes
    to stderr, passes through the redaction too."""
    import io
    import logging
    import os

    from nlp_tasks.driver.logs import RedactingFilter, dropping_known_ray_noise
    from nlp_tasks.secrets import register_secrets

    register_secrets("s3://AKIDLOGTEST:log/SECRET/value@bucket/in")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test-redaction")
    logger.addHandler(handler)
    try:
        try:
            raise FileNotFoundError("AKIDLOGTEST:log/SECRET/value@bucket/in/a.parquet")
        except FileNotFoundError:
            logger.exception("reading %s failed", "https://user:pass-word@host/x?X-Amz-Signature=abcdef123")
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert "FileNotFoundError" in written and "https://host/x?X-Amz-Signature=***" in written
    for piece in ("SECRET", "pass-word", "abcdef123", "AKIDLOGTEST"):
        assert piece not in written, written

    with dropping_known_ray_noise():
        os.write(2, b"Invalid bucket name \"AKIDLOGTEST:log\": see s3://AKIDLOGTEST:log/SECRET/value@bucket\n")
    err = capfd.readouterr().err
    assert "Invalid bucket name" in err and "s3://bucket" in err and "SECRET" not in err and "AKIDLOGTEST" not in err


# readers ------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_reader_sees_every_committed_row_once(ray_local, tmp_path, models):
    import duckdb
    import pandas
    import ray
    from datasets import load_dataset

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    for name in "ab":
        write_rows(corpus / f"{name}.parquet", [f"{name}{i}" for i in range(5)])
    assert main(["--config", write_config(tmp_path, corpus, sentiment(models), output={"rows_per_file": 2})]) == 0
    # What a crashed run leaves behind: staged parts of an uncommitted file, and a lease.
    staged = out / "__staging" / "crashed-run"
    staged.mkdir(parents=True)
    shutil.copy(next(out.glob("part-*.parquet")), staged / "0123456789abcdef-000000000000-deadbeef.parquet")
    lease_file(out, 3, expires_at=0)
    expected = sorted(f"{name}{i}" for name in "ab" for i in range(5))

    readers = {
        "pyarrow.dataset": lambda: pads.dataset(out, format="parquet").to_table().column("id").to_pylist(),
        "pandas": lambda: pandas.read_parquet(out)["id"].tolist(),
        "duckdb": lambda: [r[0] for r in duckdb.sql(f"select id from read_parquet('{out}/*.parquet')").fetchall()],
        "ray": lambda: [r["id"] for r in ray.data.read_parquet(str(out)).take_all()],
        "datasets": lambda: load_dataset("parquet", data_dir=str(out), split="train",
                                         cache_dir=str(tmp_path / "hf-cache"))["id"],
    }
    for name, read in readers.items():
        assert sorted(read()) == expected, name


# user errors: one line, exit 2 ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_user_errors_get_one_line_and_exit_2(tmp_path, models, capsys):
    corpus = tmp_path / "corpus"
    write_rows(corpus / "a.parquet", ["a0"])
    task = sentiment(models)["sentiment"]
    cases = {
        "python:json": ({"tasks": {"sentiment": {**task, "model": "python:json"}}},
                        "package 'json' does not define get_model_path()"),
        "template": ({"tasks": {"sentiment": {**task, "task": "zero-shot-classification", "candidate_labels": ["a"],
                                              "hypothesis_template": "{} or {}"}}},
                     "hypothesis_template: '{} or {}' must hold exactly one {}"),
        "max_length": ({"tasks": {"sentiment": {**task, "max_length": -5}}},
                       "tasks.sentiment.max_length: Input should be greater than 0"),
        "list input": ({"input": [corpus]}, "input: expected a mapping (to set input.path from the command line)"),
    }
    for name, (sections, message) in cases.items():
        config = write_config(tmp_path, corpus, **{"tasks": sentiment(models), **sections})
        assert message in refusal(capsys, config, *(["--input", str(corpus)] if name == "list input" else [])), name
    config = write_config(tmp_path, corpus, {"sentiment": {**task, "max_length": 2000000}})
    assert "tasks.sentiment.max_length: Input should be less than or equal to 1000000" in refusal(capsys, config)
    config = write_config(tmp_path, corpus, sentiment(models))
    (tmp_path / "a-file").write_text("not a folder")
    for output, problem in ((tmp_path / "a-file" / "out", "NotADirectoryError"),
                            ("/proc/self/no-such-folder/out", "FileNotFoundError")):
        line = refusal(capsys, config, "--output", str(output))
        assert line.startswith(f"error: output.path '{output}': cannot create or write it ({problem}"), line
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    assert "is a directory" in error_line(tmp_path)  # as a user runs it: the one line, and nothing else
    assert "not a text file" in refusal(capsys, tmp_path / "binary.yaml")


@pytest.mark.slow
def test_odd_but_valid_inputs_run(ray_local, tmp_path, models):
    """File names with `?`, `*`, `[` or a newline, and a string_view text column, are input like any other."""
    corpus = tmp_path / "corpus"
    for name in ("what?.parquet", "star*[x].parquet", "new\nline.parquet"):
        write_rows(corpus / name, [f"{name}-0", f"{name}-1"])
    viewed = pa.table({"id": ["v0"], "text": pa.array(["Paris is big."], pa.string_view())})
    pq.write_table(viewed, corpus / "view.parquet")
    assert pq.read_schema(corpus / "view.parquet").field("text").type == pa.string_view()
    config = write_config(tmp_path, corpus, sentiment(models), input={"bad_files": "quarantine"})
    assert main(["--config", config]) == 0
    table = output_table(tmp_path / "out")
    assert table.num_rows == 7 and table.column("sentiment").null_count == 0
    assert last_report(tmp_path / "out")["quarantined_files"] == {}
