"""The job end to end on a local Ray: Parquet in, every row out once, typed task columns; bad input exits 2."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import ray
import tiny_models
from helpers import sentiment, write_config

from jobs.annotate import main

SETTINGS = {"input": {"text_column": "text"}, "compute": {"token_budget": 512, "actor_concurrency": 2}}
"""What this module's jobs set besides write_config's defaults."""


@pytest.fixture
def corpus(tmp_path):
    """Two Parquet files with clean and unclean rows."""
    texts = tiny_models.sample_texts() + [None, "", "  "]
    folder = tmp_path / "corpus"
    folder.mkdir()
    for part in range(2):
        rows = {"id": [f"{part}-{i}" for i in range(len(texts))], "text": texts}
        pq.write_table(pa.table(rows), folder / f"part-{part}.parquet")
    return folder, 2 * len(texts)


def test_job_annotates_every_row_exactly_once(ray_local, tmp_path, models, corpus, capsys):
    folder, rows = corpus
    config = write_config(tmp_path, folder, {
        "sentiment": {"task": "sentiment-analysis", "model": str(models["text-classification"]), "top_k": 2},
        "entities": {"task": "ner", "model": str(models["token-classification"])},
        "embedding": {"task": "feature-extraction", "model": str(models["token-classification"])},
    }, **SETTINGS)
    assert main(["--config", config]) == 0
    assert f"output holds {rows} rows: {rows} of the input's {rows} with" in capsys.readouterr().out
    table = pads.dataset(tmp_path / "out", format="parquet").to_table()
    assert table.num_rows == rows
    assert sorted(table.column("id").to_pylist()) == sorted(f"{p}-{i}" for p in range(2) for i in range(rows // 2))
    assert table.schema.field("sentiment").type == pa.list_(pa.struct([("label", pa.string()), ("score", pa.float32())]))
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    assert {len(vector) for vector in table.column("embedding").drop_null().to_pylist()} == {32}
    assert pa.types.is_list(table.schema.field("entities").type)
    by_id = {row["id"]: row for row in table.to_pylist()}
    assert len(by_id["0-0"]["sentiment"]) == 2 and by_id["0-0"]["errors"] == []
    assert by_id["1-12"]["sentiment"] is None and by_id["1-12"]["embedding"] is None
    assert {e["task"] for e in by_id["1-12"]["errors"]} == {"sentiment", "entities", "embedding"}
    assert any(row["entities"] for row in by_id.values())

    report_files = sorted((tmp_path / "out" / "__reports").glob("run-*"))
    assert [p.suffix for p in report_files] == [".html", ".json"]
    assert (tmp_path / "out" / "__reports" / "index.html").is_file()
    report = json.loads(report_files[1].read_text())
    assert report["rows_in"] == report["rows_out"] == rows and report["rows_with_errors"] == 6
    assert {"task": "sentiment", "message": "text is empty or whitespace", "rows": 4} in report["errors_by_reason"]
    sentiment = report["throughput"]["sentiment"]
    assert (sentiment["rows"], sentiment["reused"]) == ((rows - 6) // 2, (rows - 6) // 2), \
        "the second file repeats the first's texts: each is computed once"
    assert sentiment["tokens_per_s"] > 0
    assert sum(report["distributions"]["sentiment"].values()) == rows - 6
    assert set(report["distributions"]["entities"]) <= {"PER", "ORG", "LOC"}
    assert report["tasks"]["sentiment"]["model_fingerprint"].startswith("sha256:")
    assert "<svg" in report_files[0].read_text()


@pytest.mark.slow
def test_one_input_file_keeps_the_whole_actor_pool_busy(ray_local, tmp_path, models):
    """Ray reads a small file as one block; the job must still hand batches to every actor of the pool."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    # enough batches that a second actor is needed, not just allowed; distinct, so that each reaches the model
    texts = [f"{text} ({copy})" for copy in range(40) for text in tiny_models.sample_texts()]
    pq.write_table(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts}), folder / "only.parquet")
    config = write_config(tmp_path, folder, sentiment(models), input={"text_column": "text"},
                          compute={"token_budget": 512, "actor_concurrency": 2, "min_actors": 2, "max_actors": 2})
    # Ray starts pool actors asynchronously: without waiting for both, the first one up may run
    # these tiny batches alone.
    context = ray.data.DataContext.get_current()
    default_wait, context.wait_for_min_actors_s = context.wait_for_min_actors_s, 120
    try:
        assert main(["--config", config]) == 0
    finally:
        context.wait_for_min_actors_s = default_wait
    report = json.loads(next((tmp_path / "out" / "__reports").glob("*.json")).read_text())
    by_actor = [actor["rows"] for actor in report["actors"]]
    assert len(by_actor) == 2 and min(by_actor) > 0 and sum(by_actor) == len(texts), by_actor
    assert all(0 <= actor["padding_share"] < 1 for actor in report["actors"])


@pytest.mark.slow
def test_unavailable_model_is_reported_and_skipped_when_allowed(ray_local, tmp_path, models, corpus, capsys):
    folder, _ = corpus
    config = write_config(tmp_path, folder, {
        "sentiment": {"task": "sentiment-analysis", "model": str(models["text-classification"])},
        "summary": {"task": "summarization", "model": str(tmp_path / "no-such-model")},
    }, **SETTINGS, skip_unavailable_models=True)
    assert main(["--config", config]) == 0
    out = capsys.readouterr().out
    assert "skipped task 'summary'" in out and "no-such-model" in out
    assert "summary" not in pads.dataset(tmp_path / "out", format="parquet").schema.names


def run_expecting_error(config, capsys) -> str:
    assert main(["--config", config]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_missing_text_column_names_file_and_column(tmp_path, models, capsys):
    pq.write_table(pa.table({"id": ["a"], "body": ["x"]}), tmp_path / "in.parquet")
    config = write_config(tmp_path, tmp_path / "in.parquet", sentiment(models, "s"), **SETTINGS)
    line = run_expecting_error(config, capsys)
    assert "in.parquet" in line and "no column 'text'" in line and "columns: id, body" in line


def test_corrupt_parquet_names_the_file(tmp_path, models, corpus, capsys):
    folder, _ = corpus
    (folder / "part-9.parquet").write_bytes(b"PAR1 this is not parquet")
    config = write_config(tmp_path, folder, sentiment(models, "s"), **SETTINGS)
    line = run_expecting_error(config, capsys)
    assert "part-9.parquet" in line and "not a readable Parquet file" in line


def test_missing_model_fails_before_inference(tmp_path, corpus, capsys):
    folder, _ = corpus
    config = write_config(tmp_path, folder, {"s": {"task": "sentiment-analysis", "model": str(tmp_path / "nope")}},
                          **SETTINGS)
    line = run_expecting_error(config, capsys)
    assert line.startswith("error: tasks.s: model") and "nope" in line


def test_foreign_output_directory_is_refused(tmp_path, models, corpus, capsys):
    folder, _ = corpus
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.parquet").write_bytes(b"x")
    config = write_config(tmp_path, folder, sentiment(models, "s"), **SETTINGS)
    assert "has files but no __manifest/job.json" in run_expecting_error(config, capsys)


def test_output_column_clash_with_input(tmp_path, models, capsys):
    pq.write_table(pa.table({"id": ["a"], "text": ["x"], "s": [1]}), tmp_path / "in.parquet")
    config = write_config(tmp_path, tmp_path / "in.parquet", sentiment(models, "s"), **SETTINGS)
    assert "input column 's' clashes with an output column" in run_expecting_error(config, capsys)


@pytest.mark.slow
def test_rerun_resumes_adds_new_files_and_refuses_other_columns(ray_local, tmp_path, models, corpus, capsys):
    folder, rows = corpus
    tasks = sentiment(models, "s")
    config = write_config(tmp_path, folder, tasks, **SETTINGS)
    assert main(["--config", config]) == 0
    committed = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("part-*.parquet")}
    assert committed and len(list((tmp_path / "out" / "__manifest" / "units").glob("*.json"))) == 2
    capsys.readouterr()

    assert main(["--config", config]) == 0  # nothing new: nothing recomputed
    assert "processed 0 input file(s) (2 already committed)" in capsys.readouterr().out
    pq.write_table(pa.table({"id": ["new-0", "new-1"], "text": ["Paris is big.", None]}), folder / "part-2.parquet")
    assert main(["--config", config]) == 0  # the nightly case: one new file
    assert "processed 1 input file(s) (2 already committed)" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("part-*.parquet")
            if p.name in committed} == committed
    table = pads.dataset(tmp_path / "out", format="parquet").to_table()
    assert table.num_rows == rows + 2 and len(set(table.column("id").to_pylist())) == rows + 2

    write_config(tmp_path, folder, tasks, **SETTINGS, output={"errors_column": "problems"})
    line = run_expecting_error(config, capsys)
    assert "was produced with other columns (changed: errors)" in line


@pytest.mark.slow
def test_rows_without_ids_get_stable_ids_from_file_and_position(ray_local, tmp_path, models):
    folder = tmp_path / "corpus"
    folder.mkdir()
    texts = {f"part-{p}.parquet": [f"Text {p}-{i} about Paris." for i in range(7)] for p in range(2)}
    for name, rows in texts.items():
        pq.write_table(pa.table({"text": rows}), folder / name)
    config = write_config(tmp_path, folder, sentiment(models, "s"), input={"text_column": "text", "id_column": None},
                          compute=SETTINGS["compute"])
    assert main(["--config", config]) == 0
    table = pads.dataset(tmp_path / "out", format="parquet").to_table()
    assert table.schema.names[0] == "row_id"
    for row_id, text in zip(table.column("row_id").to_pylist(), table.column("text").to_pylist()):
        path, position = row_id.rsplit(":", 1)
        assert texts[path.rsplit("/", 1)[-1]][int(position)] == text
