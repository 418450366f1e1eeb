"""The nightly user's second month: tasks added, changed or removed on an annotated corpus.

Only the columns that differ are computed, for the committed files; every other column is
carried byte for byte, and the models of unchanged tasks never load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import tiny_models
from helpers import last_report, write_config

from jobs.annotate import main
from nlp_tasks.driver.report import summary

pytestmark = pytest.mark.slow  # every test runs the job three or four times


def corpus(folder: Path) -> Path:
    """Three Parquet files of the sample texts and a null text each, in `folder / "corpus"`."""
    corpus = folder / "corpus"
    corpus.mkdir()
    texts = tiny_models.sample_texts() + [None]
    for part in range(3):
        pq.write_table(pa.table({"id": [f"{part}-{i}" for i in range(len(texts))], "text": texts}),
                       corpus / f"part-{part}.parquet")
    return corpus


def runner(folder: Path):
    """`run(tasks, **output)`: the job over `folder`'s corpus into `folder / "out"` with these tasks; returns its
    report."""
    def run(tasks: dict, **output) -> dict:
        assert main(["--config", write_config(folder, folder / "corpus", tasks, output=output, keep_order=True)]) == 0
        return last_report(folder / "out")

    return run


@pytest.fixture
def job(tmp_path):
    corpus(tmp_path)
    return runner(tmp_path)


def two_tasks(models) -> dict:
    """The tasks of the annotated corpus: sentiment and an embedding, on two models."""
    return {"sentiment": {"task": "sentiment-analysis", "model": str(models["text-classification"])},
            "embedding": {"task": "feature-extraction", "model": str(models["token-classification"])}}


@pytest.fixture(scope="module")
def annotated_once(ray_local, tmp_path_factory, models):
    """The corpus annotated with two_tasks, once for the module, and a copy of it aside."""
    folder = tmp_path_factory.mktemp("annotated")
    corpus(folder)
    runner(folder)(two_tasks(models))
    pristine = tmp_path_factory.mktemp("pristine") / "copy"
    shutil.copytree(folder, pristine)
    return folder, pristine


@pytest.fixture
def annotated(annotated_once):
    """The annotated corpus as its run left it, at its own paths (markers name input files by path), put back from
    the copy with the files' times for each test; returns its folder and the job over it (`runner`)."""
    folder, pristine = annotated_once
    shutil.rmtree(folder)
    shutil.copytree(pristine, folder)
    return folder, runner(folder)


def output(folder: Path) -> pa.Table:
    return pads.dataset(folder / "out", format="parquet").to_table().sort_by("id")


def column_bytes(table: pa.Table, column: str) -> bytes:
    """A column's values as Arrow IPC bytes: equal only if every value is."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, pa.schema([table.schema.field(column)])) as writer:
        writer.write_table(table.select([column]).combine_chunks())
    return sink.getvalue().to_pybytes()


def test_an_added_task_is_computed_alone_and_the_first_column_is_carried(ray_local, tmp_path, models, job):
    sentiment = {"task": "sentiment-analysis", "model": str(models["text-classification"]), "top_k": 2}
    entities = {"task": "ner", "model": str(models["token-classification"])}
    job({"sentiment": sentiment})
    before = output(tmp_path)

    report = job({"sentiment": sentiment, "entities": entities})
    after = output(tmp_path)
    assert column_bytes(after, "sentiment") == column_bytes(before, "sentiment")
    assert [pool["tasks"] for pool in report["compute"]] == [["entities"]]  # the sentiment model never loaded
    assert {actor["pool"] for actor in report["actors"]} == {"entities"}
    assert sorted(report["input_changes"]["columns_computed"]) == ["entities"]
    assert len(report["input_changes"]["columns_computed"]["entities"]) == 3
    assert after.column("id").to_pylist() == before.column("id").to_pylist()
    assert after.column("entities").null_count == 3  # the null texts, one per file
    errors = after.column("errors").to_pylist()
    assert all(sorted(e["task"] for e in row) == ["entities", "sentiment"] for row, text
               in zip(errors, after.column("text").to_pylist()) if text is None)
    assert after.schema.names == ["id", "text", "sentiment", "entities", "errors"]

    assert job({"sentiment": sentiment, "entities": entities})["files_processed"] == 0  # now nothing to do
    assert "column entities computed for 3 file(s)" in summary(report)


def test_a_changed_task_is_recomputed_and_the_others_kept(models, annotated):
    tmp_path, job = annotated
    sentiment, embedding = two_tasks(models).values()
    before = output(tmp_path)

    report = job({"sentiment": {**sentiment, "top_k": 2}, "embedding": embedding})
    after = output(tmp_path)
    assert sorted(report["input_changes"]["columns_computed"]) == ["sentiment"]
    assert column_bytes(after, "embedding") == column_bytes(before, "embedding")
    assert after.schema.field("sentiment").type != before.schema.field("sentiment").type  # a list of top 2 now
    assert {len(labels) for labels in after.column("sentiment").drop_null().to_pylist()} == {2}
    listed = {part["file"] for marker in (tmp_path / "out").glob("__manifest/units/*.json")
              for part in json.loads(marker.read_text())["parts"]}
    assert {p.name for p in (tmp_path / "out").glob("part-*.parquet")} == listed  # parts replaced, no copy beside


def test_a_removed_task_is_kept_unless_the_config_drops_it(models, annotated):
    tmp_path, job = annotated
    embedding = two_tasks(models)["embedding"]
    before = output(tmp_path)

    report = job({"embedding": embedding})
    assert report["files_processed"] == 0 and report["input_changes"]["removed_tasks_kept"] == ["sentiment"]
    assert column_bytes(output(tmp_path), "sentiment") == column_bytes(before, "sentiment")

    report = job({"embedding": embedding}, removed_tasks="drop")
    after = output(tmp_path)
    assert report["input_changes"]["columns_dropped"] == {"sentiment": sorted(report["input_changes"][
        "columns_dropped"]["sentiment"])} and len(report["input_changes"]["columns_dropped"]["sentiment"]) == 3
    assert report["compute"] == []  # dropping a column loads no model
    assert "sentiment" not in after.schema.names
    assert column_bytes(after, "embedding") == column_bytes(before, "embedding")
    assert not any(e["task"] == "sentiment" for row in after.column("errors").to_pylist() for e in row)
