"""Tasks transformers 5 has no pipeline for: batched output equals one-text-at-a-time Auto-class calls."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_models
import torch
from transformers import AutoModelForQuestionAnswering, AutoModelForSeq2SeqLM, AutoTokenizer

TEXTS = tiny_models.sample_texts()


@pytest.mark.parametrize("task, options", [
    ("summarization", {"max_new_tokens": 12}),
    ("summarization", {"max_new_tokens": 12, "num_beams": 3, "no_repeat_ngram_size": 2}),
    ("translation", {"max_new_tokens": 10, "prefix": "translate English to French: "}),
])
def test_seq2seq_batched_equals_single_generate(models, annotate, task, options):
    path = models["seq2seq"]
    out = annotate({"gen": {"task": task, "model": str(path), "engine": "transformers", **options}},
                   TEXTS).column("gen").to_pylist()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    generate = {k: v for k, v in options.items() if k != "prefix"}
    for text, ours in zip(TEXTS, out):
        inputs = tokenizer(options.get("prefix", "") + text, return_tensors="pt", truncation=True)
        with torch.inference_mode():
            ids = model.generate(**inputs, **generate)[0]
        assert ours == tokenizer.decode(ids, skip_special_tokens=True).strip()
    assert any(out), "generation produced nothing at all"


def reference_answer(tokenizer, model, question, context, max_answer_len=15):
    """Exhaustive search over spans, one text at a time: the old pipeline's definition of the answer."""
    enc = tokenizer(question, context, truncation="only_second", return_offsets_mapping=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping")[0].tolist()
    with torch.inference_mode():
        out = model(**enc)
    in_context = np.array([s == 1 for s in enc.sequence_ids(0)])
    start = torch.tensor(np.where(in_context, out.start_logits[0].numpy(), -10000.0)).softmax(-1).numpy()
    end = torch.tensor(np.where(in_context, out.end_logits[0].numpy(), -10000.0)).softmax(-1).numpy()
    best = max((start[i] * end[j], i, j) for i in range(len(start)) for j in range(i, min(len(end), i + max_answer_len)))
    score, i, j = best
    return {"answer": context[offsets[i][0]:offsets[j][1]], "score": float(score), "start": offsets[i][0], "end": offsets[j][1]}


def test_question_answering_fixed_and_per_row_questions(models, annotate):
    import pyarrow as pa

    path = models["question-answering"]
    questions = ["Who is it about?"] * (len(TEXTS) - 1) + [None]
    table = pa.table({"text": TEXTS, "question": questions})
    out = annotate({
        "fixed": {"task": "question-answering", "model": str(path), "question": "Where?"},
        "per_row": {"task": "question-answering", "model": str(path), "question_column": "question"},
    }, table)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForQuestionAnswering.from_pretrained(path).eval()
    for text, question, fixed, per_row in zip(TEXTS, questions, out.column("fixed").to_pylist(),
                                              out.column("per_row").to_pylist()):
        for ours, asked in ((fixed, "Where?"), (per_row, question)):
            if asked is None:
                assert ours is None
                continue
            expected = reference_answer(tokenizer, model, asked, text)
            assert ours["answer"] == text[ours["start"]:ours["end"]] == expected["answer"]
            assert ours["score"] == pytest.approx(expected["score"], abs=1e-4)
    assert out.column("errors").to_pylist()[-1] == [{"task": "per_row", "message": "question is null"}]
