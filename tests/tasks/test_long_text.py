"""Long documents: `long_text: chunk` covers the whole text with overlapping windows.

The tiny BERT models have a 64-token window, the tiny BART a 128-token one, so a few sample
sentences already make a text many windows long. Each chunked result is checked against the
pipeline (or the model) run window by window on exactly the windows the fast tokenizer cuts
with `return_overflowing_tokens=True, stride=...`, and then aggregated as documented.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import tiny_models
import torch
from helpers import REPO, SAMPLE, assert_close
from transformers import AutoTokenizer, pipeline

SAMPLES = tiny_models.sample_texts()
LONG_TEXT = " ".join(SAMPLES) * 3  # about 400 BERT tokens: 7 to 9 windows of 64
TEXTS = [LONG_TEXT, " ".join(SAMPLES[:5]), SAMPLES[0]]  # many windows, a few, one
FILLER = "The new phone is amazing and I would buy it again. " * 8  # no entity, 100 tokens
LATE_ENTITY = FILLER + "Alice Johnson moved to Paris in 2019."
STRIDE = 16


def windows(tokenizer, text: str, width: int, stride: int = STRIDE) -> list[dict]:
    """The overlapping windows the fast tokenizer cuts from one text: model-input tensors (batch of 1) and the
    character span of the window's text tokens."""
    encoded = tokenizer(text, truncation=True, max_length=width, stride=stride, return_overflowing_tokens=True,
                        return_offsets_mapping=True, return_special_tokens_mask=True)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    result = []
    for i in range(len(encoded["input_ids"])):
        offsets = [o for o, special in zip(encoded["offset_mapping"][i], encoded["special_tokens_mask"][i])
                   if not special]
        result.append({**{k: torch.tensor([encoded[k][i]]) for k in keys}, "span": (offsets[0][0], offsets[-1][1])})
    return result


def model_inputs(window: dict) -> dict:
    return {k: v for k, v in window.items() if k != "span"}


def aggregate(per_window: list, how: str) -> np.ndarray:
    return np.max(per_window, axis=0) if how == "max" else np.mean(per_window, axis=0)


# Token classification


def test_entity_after_the_first_window_is_found_only_with_chunk(models, annotate):
    path = str(models["token-classification"])
    out = annotate({
        "truncated": {"task": "ner", "model": path},
        "chunked": {"task": "ner", "model": path, "long_text": "chunk", "stride": STRIDE},
    }, [LATE_ENTITY])
    assert len(AutoTokenizer.from_pretrained(path)(FILLER)["input_ids"]) > 64, "the entity must lie past window 1"
    assert out.column("truncated").to_pylist() == [[]]
    person, place = LATE_ENTITY.index("Alice Johnson"), LATE_ENTITY.index("Paris")
    found = [(e["entity_group"], e["start"], e["end"]) for e in out.column("chunked")[0].as_py()]
    assert found == [("PER", person, person + len("Alice Johnson")), ("LOC", place, place + len("Paris"))]


@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max"])
@pytest.mark.parametrize("stride", [8, 24])
def test_token_classification_chunk_equals_pipeline_with_stride(models, annotate, strategy, stride):
    path = str(models["token-classification"])
    texts = TEXTS + [LATE_ENTITY]
    out = annotate({"entities": {"task": "ner", "model": path, "aggregation_strategy": strategy,
                                 "long_text": "chunk", "stride": stride}}, texts, token_budget=200)
    reference = pipeline("token-classification", model=path, aggregation_strategy=strategy)
    late = 0
    for text, ours in zip(texts, out.column("entities").to_pylist()):
        theirs = [{"entity_group": e["entity_group"], **{k: e[k] for k in ("score", "word", "start", "end")}}
                  for e in reference(text, stride=stride)]
        assert_close(ours, theirs)
        late += sum(e["start"] > 300 for e in ours)
    assert late > 0, "entities past the first window should be found, or this test proves little"


# Classification: every window scored, scores aggregated


@pytest.mark.parametrize("how", ["mean", "max"])
@pytest.mark.parametrize("options", [{}, {"top_k": 3}, {"function_to_apply": "sigmoid"}])
def test_text_classification_chunk_is_the_aggregate_of_window_outputs(models, annotate, how, options):
    """Per window, the pipeline's own forward and postprocess on exactly that window's token ids."""
    path = str(models["text-classification"])
    out = annotate({"s": {"task": "text-classification", "model": path, "long_text": "chunk", "stride": STRIDE,
                          "chunk_aggregation": how, **options}}, TEXTS)
    reference = pipeline("text-classification", model=path)
    labels = list(reference.model.config.id2label.values())
    for text, ours in zip(TEXTS, out.column("s").to_pylist()):
        per_window = [
            [item["score"] for item in reference.postprocess(reference.forward(model_inputs(window)), top_k=None,
                                                             function_to_apply=options.get("function_to_apply"))]
            for window in windows(reference.tokenizer, text, 64)
        ]
        scores = aggregate(per_window, how)
        order = np.argsort(-scores, kind="stable")
        expected = [{"label": labels[i], "score": float(scores[i])} for i in order]
        assert_close(ours, expected[: options["top_k"]] if "top_k" in options else expected[0])
    assert out.schema.field("s").metadata == {b"long_text": b"chunk", b"window": b"64", b"stride": b"16",
                                              b"chunk_aggregation": how.encode()}


@pytest.mark.parametrize("how", ["mean", "max"])
@pytest.mark.parametrize("multi_label", [False, True])
def test_zero_shot_chunk_is_the_aggregate_of_pipeline_outputs_per_window(models, annotate, how, multi_label):
    """Windows leave room for the longest hypothesis; each window's text span goes through the pipeline as a text.

    The adapter tokenizes each span paired with each hypothesis exactly as the pipeline does, so per-window
    scores are the pipeline's own.
    """
    path = str(models["zero-shot-classification"])
    labels, template = ["sports", "politics", "travel"], "The topic is {}."
    out = annotate({"topic": {"task": "zero-shot-classification", "model": path, "candidate_labels": labels,
                              "hypothesis_template": template, "multi_label": multi_label, "long_text": "chunk",
                              "stride": STRIDE, "chunk_aggregation": how}}, TEXTS)
    reference = pipeline("zero-shot-classification", model=path)
    tokenizer = reference.tokenizer
    longest = max(len(tokenizer(template.format(label), add_special_tokens=False)["input_ids"]) for label in labels)
    width = 64 - longest - 1  # a pair has one more [SEP] than a single text
    windows_seen = []
    for text, ours in zip(TEXTS, out.column("topic").to_pylist()):
        per_window = []
        for window in windows(tokenizer, text, width):
            result = reference(text[slice(*window["span"])], candidate_labels=labels, hypothesis_template=template,
                               multi_label=multi_label)
            per_window.append([result["scores"][result["labels"].index(label)] for label in labels])
        windows_seen.append(len(per_window))
        scores = aggregate(per_window, how)
        order = list(reversed(scores.argsort()))
        assert_close(ours, {"labels": [labels[i] for i in order], "scores": [float(scores[i]) for i in order]})
    assert windows_seen[0] > 5 and windows_seen[-1] == 1


@pytest.mark.parametrize("how", ["mean", "max"])
def test_embedding_classification_chunk_aggregates_window_similarities(models, annotate, how):
    path = str(models["text-classification"])  # its BERT encoder
    labels = ["sports", "politics", "travel"]
    out = annotate({"topic": {"task": "embedding-classification", "model": path, "candidate_labels": labels,
                              "long_text": "chunk", "stride": STRIDE, "chunk_aggregation": how}}, TEXTS)
    reference = pipeline("feature-extraction", model=path)

    def unit(vector):
        return vector / np.linalg.norm(vector)

    label_vectors = np.stack([unit(np.mean(reference(label)[0], axis=0)) for label in labels])
    for text, ours in zip(TEXTS, out.column("topic").to_pylist()):
        per_window = [
            label_vectors @ unit(reference.forward(model_inputs(window))[0][0].numpy().mean(axis=0))
            for window in windows(reference.tokenizer, text, 64)
        ]
        scores = aggregate(per_window, how)
        order = list(reversed(scores.argsort()))
        assert_close(ours, {"labels": [labels[i] for i in order], "scores": [float(scores[i]) for i in order]})


# Embeddings


@pytest.mark.parametrize("normalize", [False, True])
def test_feature_extraction_chunk_is_the_token_weighted_mean_of_window_embeddings(models, annotate, normalize):
    path = str(models["text-classification"])
    out = annotate({"vec": {"task": "feature-extraction", "model": path, "normalize": normalize,
                            "long_text": "chunk", "stride": STRIDE}}, TEXTS)
    reference = pipeline("feature-extraction", model=path)
    for text, ours in zip(TEXTS, out.column("vec").to_pylist()):
        parts = windows(reference.tokenizer, text, 64)
        embeddings = [reference.forward(model_inputs(w))[0][0].numpy().mean(axis=0) for w in parts]
        expected = np.average(embeddings, axis=0, weights=[w["input_ids"].shape[1] for w in parts])
        if normalize:
            expected = expected / np.linalg.norm(expected)
        np.testing.assert_allclose(ours, expected, atol=1e-4)


@pytest.mark.slow
def test_minilm_chunked_embedding_is_closer_to_the_later_half(minilm, annotate):
    """On the 10 longest BBC sample articles: chunked embeddings represent the whole article, truncated ones its start.

    The later half (from the first sentence end past the middle) is embedded as the truncated article is, so
    both article embeddings are compared with the same vector.
    """
    import pyarrow.parquet as pq

    articles = sorted(pq.read_table(SAMPLE).column("text").to_pylist(),
                      key=len, reverse=True)[:10]
    halves = [text[text.index(". ", len(text) // 2) + 2:] for text in articles]
    task = {"task": "feature-extraction", "model": minilm, "normalize": True, "max_length": 128}
    out = annotate({"truncate": task, "chunk": {**task, "long_text": "chunk"}}, articles, token_budget=4096)
    truncated, chunked = (np.array(out.column(name).to_pylist()) for name in ("truncate", "chunk"))
    half = np.array(annotate({"half": task}, halves, token_budget=4096).column("half").to_pylist())
    to_truncated, to_chunked = (truncated * half).sum(axis=1), (chunked * half).sum(axis=1)
    print(f"\nmean cosine to the later half: truncate {to_truncated.mean():.3f}, chunk {to_chunked.mean():.3f}; "
          f"chunk closer for {(to_chunked > to_truncated).sum()} of {len(articles)}")
    assert to_chunked.mean() > to_truncated.mean() + 0.1
    assert (to_chunked > to_truncated).sum() >= 8


# Summarization: map-reduce


def test_summarization_map_reduce_runs_to_one_window_and_is_deterministic(models, annotate):
    path = str(models["seq2seq"])
    texts = [LONG_TEXT, SAMPLES[0], " ".join(SAMPLES)]  # many windows of 128, one, two
    task = {"task": "summarization", "model": path, "long_text": "chunk", "stride": STRIDE, "max_new_tokens": 20}
    first = annotate({"summary": task}, texts, token_budget=300)
    assert first.schema.field("summary").type == pa.struct([("summary", pa.string()), ("levels", pa.int32())])
    rows = first.column("summary").to_pylist()
    assert rows[0]["levels"] >= 2 and rows[1]["levels"] == 1 and rows[2]["levels"] == 2
    assert all(row["summary"] for row in rows)
    assert first.column("errors").to_pylist() == [[], [], []]
    again = annotate({"summary": task}, texts, token_budget=300)
    assert again.column("summary").to_pylist() == rows
    alone = annotate({"summary": task}, texts[:1], token_budget=4096)  # other documents and budgets: same result
    assert alone.column("summary").to_pylist() == rows[:1]
    truncated = annotate({"summary": {**task, "long_text": "truncate", "stride": None}}, texts[1:2])
    assert truncated.column("summary").to_pylist() == [rows[1]["summary"]]  # one window: a plain summary


def test_summaries_that_do_not_shrink_are_a_row_error(models, annotate):
    """Window summaries as long as their windows would never fit one window: the row says so, others go on."""
    path = str(models["seq2seq"])
    out = annotate({"summary": {"task": "summarization", "model": path, "long_text": "chunk",
                                "min_length": 110, "max_new_tokens": 120}}, [LONG_TEXT, SAMPLES[0]])
    assert out.column("summary").to_pylist()[0] is None
    assert "does not converge" in out.column("errors").to_pylist()[0][0]["message"]
    assert out.column("summary").to_pylist()[1]["levels"] == 1


# Options


@pytest.mark.parametrize("task, model", [
    ("fill-mask", "fill-mask"), ("question-answering", "question-answering"),
    ("text-generation", "text-generation"), ("translation", "seq2seq"),
])
def test_chunk_is_refused_where_not_supported(models, task, model):
    from nlp_tasks.config import ConfigError, parse_config

    config = {"input": {"path": "in.parquet"}, "output": {"path": "out"},
              "tasks": {"x": {"task": task, "model": str(models[model]), "long_text": "chunk", "question": "Q?"}}}
    if task != "question-answering":
        del config["tasks"]["x"]["question"]
    with pytest.raises(ConfigError, match="tasks.x.long_text: this task only truncates long texts"):
        parse_config(config)


def test_chunk_option_errors(models, annotate):
    from nlp_tasks.config import ConfigError, parse_config

    base = {"input": {"path": "in.parquet"}, "output": {"path": "out"}}
    ner = {"task": "ner", "model": str(models["token-classification"]), "long_text": "chunk"}
    with pytest.raises(ConfigError, match="aggregation_strategy other than none"):
        parse_config({**base, "tasks": {"e": {**ner, "aggregation_strategy": "none"}}})
    with pytest.raises(ConfigError, match="tasks.e.stride: Input should be greater than or equal to 0"):
        parse_config({**base, "tasks": {"e": {**ner, "stride": -1}}})
    with pytest.raises(ConfigError, match="tasks.e.chunk_aggregation"):
        parse_config({**base, "tasks": {"e": {**ner, "chunk_aggregation": "mean"}}})  # not a classification task
    with pytest.raises(ValueError, match="stride 62 must be smaller than the 62 text tokens a window holds"):
        annotate({"e": {**ner, "stride": 62}}, ["text"])


def test_summarize_job_config_loads():
    from nlp_tasks.config import load_config

    config = load_config(REPO / "jobs" / "configs" / "summarize.yaml")
    summary = config.tasks["summary"]
    assert summary.task == "summarization" and summary.options.long_text == "chunk"
