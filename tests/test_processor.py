"""`build_processor(tasks)(dataset)` in a Ray Data pipeline of the user's own, on a real Ray with real (tiny) models.

A Dataset the user built (`from_items`, `read_json`, their own `map`) comes out lazily with its columns kept and the
typed task columns and `errors` added, each value equal to transformers' `pipeline()` as in
tests/tasks/test_pipeline_equivalence.py; it composes with `filter` and Ray's own `write_parquet`; a bad key is the job's
one-line config error.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import tiny_models
from helpers import assert_close
from transformers import pipeline

from nlp_tasks import build_processor
from nlp_tasks.config import ConfigError
from nlp_tasks.errors import InputError

LONG_TEXT = " ".join(tiny_models.sample_texts()) * 3  # far past the tiny models' 64-token window
TEXTS = tiny_models.sample_texts() + [LONG_TEXT]


def pipeline_tasks(models) -> dict:
    return {"sentiment": {"task": "sentiment-analysis", "model": str(models["text-classification"]), "top_k": 2},
            "entities": {"task": "ner", "model": str(models["token-classification"]),
                         "aggregation_strategy": "simple"}}


def assert_equal_to_pipeline(models, rows: list[dict], text_column: str) -> None:
    """Each row's task columns equal pipeline() on its text; a row without text has nulls and its errors."""
    sentiment = pipeline("text-classification", model=str(models["text-classification"]))
    entities = pipeline("token-classification", model=str(models["token-classification"]),
                        aggregation_strategy="simple")
    found = 0
    for row in rows:
        text = row[text_column]
        if text is None:
            assert row["sentiment"] is None and row["entities"] is None
            assert {error["task"] for error in row["errors"]} == {"sentiment", "entities"}
            continue
        assert row["errors"] == []
        assert_close(row["sentiment"], sentiment(text, top_k=2, truncation=True), "sentiment")
        theirs = [{"entity_group": e["entity_group"], **{k: e[k] for k in ("score", "word", "start", "end")}}
                  for e in entities(text)]
        assert_close(row["entities"], theirs, "entities")
        found += len(theirs)
    assert found, "the tiny NER model should find entities, or this test proves nothing"


def arrow(dataset: ray.data.Dataset) -> pa.Table:
    return pa.concat_tables(ray.get(dataset.to_arrow_refs()))


@pytest.mark.parametrize("compute", [{"stages": "fused"}, {"stages": "split", "device": "cpu"}, None],
                         ids=["fused", "split", "sized-from-the-cluster"])
def test_a_dataset_from_items_gets_the_pipeline_values_and_keeps_its_columns(ray_local, models, compute):
    items = [{"id": index, "body": text, "lang": "en"} for index, text in enumerate(TEXTS)]
    items.append({"id": len(TEXTS), "body": None, "lang": "en"})
    out = arrow(build_processor(pipeline_tasks(models), text_column="body", compute=compute)(
        ray.data.from_items(items)))
    assert out.column_names == ["id", "body", "lang", "sentiment", "entities", "errors"]  # no column of the job's
    score = pa.struct([("label", pa.string()), ("score", pa.float32())])
    assert out.schema.field("sentiment").type == pa.list_(score)
    assert out.schema.field("entities").type.value_type.field("start").type == pa.int32()
    assert out.schema.field("errors").type == pa.list_(pa.struct([("task", pa.string()), ("message", pa.string())]))
    rows = sorted(out.to_pylist(), key=lambda row: row["id"])
    assert [row["body"] for row in rows] == [item["body"] for item in items]
    assert_equal_to_pipeline(models, rows, "body")


def test_read_json_then_own_map_then_processor_then_filter_then_write_parquet(ray_local, models, tmp_path):
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps({"doc": f"d{index}", "text": text}) + "\n"
                              for index, text in enumerate([*TEXTS, None])))
    mapped = tmp_path / "mapped"

    def with_title(row: dict) -> dict:
        mapped.mkdir(exist_ok=True)  # the user's step ran
        return {**row, "title": (row["text"] or "")[:12]}

    processor = build_processor(pipeline_tasks(models), compute={"max_actors": 1})
    annotated = processor(ray.data.read_json(str(source)).map(with_title))
    assert not mapped.exists(), "the processor must be lazy: nothing runs before the user asks for rows"
    annotated.filter(lambda row: row["sentiment"] is not None).write_parquet(str(tmp_path / "out"))
    written = pq.read_table(tmp_path / "out")
    assert set(written.column_names) == {"doc", "text", "title", "sentiment", "entities", "errors"}
    rows = sorted(written.to_pylist(), key=lambda row: int(row["doc"][1:]))
    assert [row["text"] for row in rows] == TEXTS  # the row without text was filtered out, by its null column
    assert all(row["title"] == row["text"][:12] for row in rows)
    assert_equal_to_pipeline(models, rows, "text")


def test_heads_from_examples_and_long_documents_work_through_it(ray_local, models, tmp_path, annotate):
    examples = ["Paris is in France.", "Berlin is in Germany.", "Rome is in Italy.", "Madrid is in Spain."]
    pq.write_table(pa.table({"text": examples, "label": ["fr", "de", "it", "es"]}), tmp_path / "examples.parquet")
    encoder = str(models["token-classification"])
    vector = {"task": "feature-extraction", "model": encoder, "long_text": "chunk"}
    tasks = {"topic": {"task": "embedding-classification", "model": encoder, "head": "logistic",
                       "examples": {"path": str(tmp_path / "examples.parquet"), "label_column": "label"}},
             "vector": vector}
    texts = [*examples, LONG_TEXT]
    out = arrow(build_processor(tasks)(ray.data.from_items([{"text": text} for text in texts])))
    rows = {row["text"]: row for row in out.to_pylist()}
    assert [rows[text]["topic"]["labels"][0] for text in examples] == ["fr", "de", "it", "es"]
    expected = annotate({"vector": vector}, texts).column("vector").to_pylist()
    for text, value in zip(texts, expected):
        assert_close(rows[text]["vector"], value, "vector")  # the long text's windows, as the job weighs them
    assert out.schema.field("vector").metadata[b"long_text"] == b"chunk"


@pytest.mark.parametrize("tasks, compute, message", [
    ({"sentiment": {"task": "sentiment-analysis", "model": "MODEL", "topk": 2}}, None,
     "build_processor: tasks.sentiment.topk: unknown key"),
    ({"sentiment": {"task": "sentiment-analysis", "model": "MODEL"}}, {"max_actor": 2},
     "build_processor: compute.max_actor: unknown key"),
    ({"sentiment": {"task": "sentiment-analysis", "model": "MODEL"}}, {"min_actors": 3, "max_actors": 2},
     "build_processor: compute: max_actors (2) is smaller than min_actors (3)"),
    ({}, None, "build_processor: tasks: Dictionary should have at least 1 item after validation, not 0"),
])
def test_a_bad_key_is_the_jobs_one_line_error_before_anything_runs(models, tasks, compute, message):
    tasks = {column: {**task, "model": str(models["text-classification"])} for column, task in tasks.items()}
    with pytest.raises(ConfigError) as error:
        build_processor(tasks, compute=compute)
    assert str(error.value) == message


def test_a_missing_model_and_a_clashing_column_name_what_to_fix(ray_local, models, tmp_path):
    with pytest.raises(InputError, match=r"^tasks\.sentiment: .*no-such-model"):
        build_processor({"sentiment": {"task": "sentiment-analysis", "model": str(tmp_path / "no-such-model")}})
    processor = build_processor({"sentiment": {"task": "sentiment-analysis",
                                               "model": str(models["text-classification"])}})
    with pytest.raises(InputError, match="^the Dataset: column 'sentiment' clashes with an output column"):
        processor(ray.data.from_items([{"text": "a", "sentiment": "stale"}]))
    with pytest.raises(InputError, match="^the Dataset: no column 'text' .*set text_column"):
        processor(ray.data.from_items([{"body": "a"}]))
