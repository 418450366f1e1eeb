"""Rows that are not clean text never fail the job or vanish: null task columns, a reason in `errors`."""

from __future__ import annotations

import pyarrow as pa


def test_unusable_texts_get_null_values_and_reasons(models, annotate):
    texts = ["Alice Johnson moved to Paris.", None, "", "   \n\t", "Bob Smith works for Globex."]
    out = annotate({
        "sentiment": {"task": "text-classification", "model": str(models["text-classification"])},
        "entities": {"task": "ner", "model": str(models["token-classification"])},
    }, texts)
    assert out.num_rows == len(texts)
    assert out.column("text").to_pylist() == texts  # input columns unchanged
    sentiment = out.column("sentiment").to_pylist()
    assert [value is None for value in sentiment] == [False, True, True, True, False]
    errors = out.column("errors").to_pylist()
    assert errors[0] == [] and errors[4] == []
    assert errors[1] == [{"task": "sentiment", "message": "text is null"},
                         {"task": "entities", "message": "text is null"}]
    assert errors[2][0]["message"] == errors[3][0]["message"] == "text is empty or whitespace"


def test_binary_and_non_string_columns(models, annotate):
    model = {"s": {"task": "text-classification", "model": str(models["text-classification"])}}
    binary = annotate(model, pa.table({"text": pa.array([b"Paris is big.", b"\xff\xfe bad", None], pa.binary())}))
    assert binary.column("s").to_pylist()[0]["label"] in {"negative", "neutral", "positive"}
    assert binary.column("errors").to_pylist()[1] == [{"task": "s", "message": "text is not valid UTF-8"}]
    numbers = annotate(model, pa.table({"text": pa.array([1, 2], pa.int64())}))
    assert numbers.column("s").null_count == 2
    assert numbers.column("errors").to_pylist()[0][0]["message"] == "text is not a string (got int)"


def test_fill_mask_without_mask_token_is_a_row_error(models, annotate):
    out = annotate({"fill": {"task": "fill-mask", "model": str(models["fill-mask"])}},
                   ["Alice moved to [MASK].", "No mask here.", "[MASK] and [MASK]."])
    values = out.column("fill").to_pylist()
    assert len(values[0]) == 5 and values[1] is None and values[2] is None
    messages = [row[0]["message"] if row else None for row in out.column("errors").to_pylist()]
    assert messages[0] is None
    assert "exactly one [MASK]" in messages[1] and "found 0" in messages[1] and "found 2" in messages[2]


def test_all_rows_unusable_still_typed(models, annotate):
    out = annotate({"s": {"task": "text-classification", "model": str(models["text-classification"])}}, [None, None])
    assert out.schema.field("s").type == pa.struct([("label", pa.string()), ("score", pa.float32())])
    assert out.column("s").null_count == 2
