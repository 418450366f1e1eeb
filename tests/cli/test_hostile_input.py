"""Hostile rows and files: nothing crashes, nothing is lost, every problem is named."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiny_models
from helpers import sentiment, write_config
from transformers import AutoTokenizer

from jobs.annotate import main

HOSTILE_TEXTS = [
    "Alice Johnson moved to Paris.",
    "Control\x00characters\x07and\x1b[31m escapes\r\n in Berlin.",
    "Acme Corp " * 12_000,                                  # 120k characters
    "Wei Chen habla español, 住在東京, и говорит по-русски.",  # mixed scripts
    "🙂" * 500,
]
SAYS_NOTHING = ["\u200b\u200b\ufeff", "\x00\x00\x00", "\u2060 \u200d\n"]
"""Zero-width, NUL and joiner characters only: not whitespace to Python, but nothing a model can read."""


def test_hostile_rows_are_all_kept(models, annotate):
    out = annotate({
        "sentiment": {"task": "text-classification", "model": str(models["text-classification"])},
        "entities": {"task": "ner", "model": str(models["token-classification"])},
        "topic": {"task": "zero-shot-classification", "model": str(models["zero-shot-classification"]),
                  "candidate_labels": ["a", "b"]},
    }, HOSTILE_TEXTS + SAYS_NOTHING)
    assert out.num_rows == len(HOSTILE_TEXTS) + len(SAYS_NOTHING)
    clean = out.slice(0, len(HOSTILE_TEXTS))
    assert clean.column("sentiment").null_count == 0 and clean.column("topic").null_count == 0
    for text, entities in zip(HOSTILE_TEXTS, clean.column("entities").to_pylist()):
        for entity in entities:
            assert 0 <= entity["start"] < entity["end"] <= len(text)
    for row in out.slice(len(HOSTILE_TEXTS)).to_pylist():
        assert row["sentiment"] is None and row["entities"] is None and row["topic"] is None
        assert {e["message"] for e in row["errors"]} == {("text has no visible character (only control, format "
                                                          "or zero-width characters)")}


def test_a_row_the_model_cannot_take_fails_alone(models, annotate, tmp_path):
    """A tokenizer with a token the model has no embedding for (added without resizing) breaks the
    forward pass for the rows that use it; the micro-batch is retried row by row so only they fail."""
    broken = tmp_path / "broken"
    shutil.copytree(models["text-classification"], broken)
    tokenizer = AutoTokenizer.from_pretrained(broken)
    tokenizer.add_tokens(["<unseen>"])
    tokenizer.save_pretrained(broken)
    texts = tiny_models.sample_texts()[:4] + ["Paris <unseen> London"] + tiny_models.sample_texts()[4:6]
    out = annotate({"s": {"task": "text-classification", "model": str(broken)}}, texts)
    values = out.column("s").to_pylist()
    assert [value is None for value in values] == [False] * 4 + [True] + [False] * 2
    message = out.column("errors").to_pylist()[4][0]["message"]
    assert message.startswith("model failed on this row: IndexError")


def bad_corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["Paris is big.", None]}), folder / "good.parquet")
    pq.write_table(pa.table({"id": ["c"], "body": ["no text column"]}), folder / "no-text.parquet")
    pq.write_table(pa.table({"id": [1], "text": ["id is an integer here"]}), folder / "other-schema.parquet")
    (folder / "truncated.parquet").write_bytes(b"PAR1\x00\x01")
    return folder


def test_bad_files_fail_the_job_by_default(tmp_path, models, capsys):
    config = write_config(tmp_path, bad_corpus(tmp_path), sentiment(models, "s"), compute={"num_cpus_per_actor": 0.5})
    assert main(["--config", config]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("error: input file ") and "no-text.parquet" in error


@pytest.mark.slow
def test_bad_files_can_be_quarantined(ray_local, tmp_path, models, capsys):
    config = write_config(tmp_path, bad_corpus(tmp_path), sentiment(models, "s"), input={"bad_files": "quarantine"},
                          compute={"num_cpus_per_actor": 0.5})
    assert main(["--config", config]) == 0
    report = json.loads(next((tmp_path / "out" / "__reports").glob("*.json")).read_text())
    quarantined = {path.rsplit("/", 1)[-1]: why for path, why in report["quarantined_files"].items()}
    assert set(quarantined) == {"no-text.parquet", "other-schema.parquet", "truncated.parquet"}
    assert "no column 'text'" in quarantined["no-text.parquet"]
    assert "schema differs" in quarantined["other-schema.parquet"]
    assert "not a readable Parquet file" in quarantined["truncated.parquet"]
    assert report["rows_out"] == 2 and "quarantined input file" in capsys.readouterr().out


def test_a_stride_the_models_window_cannot_hold_is_refused_before_anything_runs(tmp_path, models, capsys):
    """With no max_length, the window is the model's own: a stride as wide is refused by name, exit 2, on the
    driver, before any actor would fail on it, and nothing is written."""
    task = {"task": "sentiment-analysis", "model": str(models["text-classification"]), "long_text": "chunk",
            "stride": 100_000}
    config = write_config(tmp_path, tmp_path / "in.parquet", {"sentiment": task})
    pq.write_table(pa.table({"id": ["a"], "text": ["Paris is big."]}), tmp_path / "in.parquet")
    assert main(["--config", config]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: tasks.sentiment.stride: 100000 must be smaller than the model's window (")
    assert "\n" not in error and not (tmp_path / "out").exists()
