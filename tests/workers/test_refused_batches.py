"""A batch in which every row is refused (no text, no question, no mask) gives every row a null value and its
reason, for every task, fused and split: never a crash."""

from __future__ import annotations

import pyarrow as pa
import pytest

LABELS = ["people", "places"]


def every_task(models) -> dict:
    """One column of each task, on the tiny models."""
    return {
        "sentiment": {"task": "text-classification", "model": str(models["text-classification"])},
        "entities": {"task": "ner", "model": str(models["token-classification"])},
        "nli": {"task": "zero-shot-classification", "model": str(models["zero-shot-classification"]),
                "candidate_labels": LABELS},
        "topic": {"task": "embedding-classification", "model": str(models["token-classification"]),
                  "candidate_labels": LABELS},
        "embedding": {"task": "feature-extraction", "model": str(models["token-classification"])},
        "summary": {"task": "summarization", "model": str(models["seq2seq"]), "engine": "transformers",
                    "max_new_tokens": 4},
        "french": {"task": "translation", "model": str(models["seq2seq"]), "engine": "transformers",
                   "max_new_tokens": 4},
        "answer": {"task": "question-answering", "model": str(models["question-answering"]),
                   "question_column": "question"},
        "fill": {"task": "fill-mask", "model": str(models["fill-mask"])},
        "more": {"task": "text-generation", "model": str(models["text-generation"]), "engine": "transformers",
                 "max_new_tokens": 4},
    }


def test_every_task_on_a_batch_without_text(models, annotate):
    tasks = every_task(models)
    texts = [None, "", "  \n", "\u200b"]
    out = annotate(tasks, pa.table({"text": texts, "question": ["Who?"] * len(texts)}))
    assert out.num_rows == len(texts)
    for column in tasks:
        assert out.column(column).null_count == len(texts), column
    for row in out.column("errors").to_pylist():
        assert sorted(error["task"] for error in row) == sorted(tasks)


def test_question_answering_without_any_question(models, annotate):
    """The issue's case: question_column null in every row of a batch (an IndexError in the tokenizer killed it)."""
    texts = ["Alice Johnson moved to Paris.", "Bob Smith works for Globex."]
    answer = {"answer": {"task": "question-answering", "model": str(models["question-answering"]),
                         "question_column": "question"}}
    out = annotate(answer, pa.table({"text": texts, "question": pa.array([None, " "], pa.string())}))
    assert out.column("answer").null_count == 2
    assert [row[0]["message"] for row in out.column("errors").to_pylist()] == [
        "question is null", "question is empty or whitespace"]


def test_fill_mask_without_any_mask(models, annotate):
    out = annotate({"fill": {"task": "fill-mask", "model": str(models["fill-mask"])}}, ["No mask.", "None here."])
    assert out.column("fill").null_count == 2
    assert all("exactly one [MASK]" in row[0]["message"] for row in out.column("errors").to_pylist())


@pytest.mark.parametrize("column", ["sentiment", "entities", "nli", "embedding", "summary", "answer", "fill", "more"])
def test_an_adapter_given_no_rows_gives_no_segments(models, column):
    """What each adapter does with rows left after filtering, when none are left: nothing, never the tokenizer's
    IndexError."""
    from nlp_tasks.config import ComputeConfig, TaskSpec
    from nlp_tasks.workers.annotator import load_adapters

    spec = TaskSpec.model_validate(every_task(models)[column])
    adapter = load_adapters({column: spec}, ComputeConfig(device="cpu"), weights=False)[column]
    assert adapter.preprocess([], pa.table({"text": pa.array([], pa.string()),
                                            "question": pa.array([], pa.string())})) == []
