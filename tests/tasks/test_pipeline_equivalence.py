"""Row by row, the job's output equals transformers' own pipeline on the same model and options.

Scores within 1e-4, labels and words equal; texts longer than the model window are truncated.
Micro-batches mix rows of different lengths (small token budget), so padding must not leak. The encoder tasks'
tests run on every float32 engine installed (transformers, and the CPU engines of the cpu-engines extra).
"""

from __future__ import annotations

import numpy as np
import pytest
import tiny_models
from helpers import SAMPLE, assert_close
from transformers import pipeline

from nlp_tasks.engines.encoders import ENCODER_ENGINES, missing_package
from nlp_tasks.tasks import get_task

FLOAT32_ENGINES = ["transformers", *(engine for engine in ENCODER_ENGINES if missing_package(engine) is None)]
LONG_TEXT = " ".join(tiny_models.sample_texts()) * 3  # far past the tiny models' 64-token window
TEXTS = tiny_models.sample_texts() + [LONG_TEXT]


@pytest.fixture(params=FLOAT32_ENGINES)
def annotate(request, annotate):
    """conftest's `annotate`, with encoder tasks on each float32 engine in turn (other tasks run once, as
    configured)."""
    engine = request.param

    def run(tasks: dict, rows, **kwargs):
        if not all(set(ENCODER_ENGINES) <= set(get_task(task["task"]).engines) for task in tasks.values()):
            if engine != "transformers":
                pytest.skip(f"{engine} does not run these tasks")
            return annotate(tasks, rows, **kwargs)
        return annotate({column: {**task, "engine": engine} for column, task in tasks.items()}, rows, **kwargs)

    return run


@pytest.mark.parametrize("options, call", [
    ({}, {"truncation": True}),
    ({"top_k": 2}, {"top_k": 2, "truncation": True}),
    ({"top_k": None, "function_to_apply": "sigmoid"}, {"function_to_apply": "sigmoid", "truncation": True}),
])
def test_text_classification_matches_pipeline(models, annotate, options, call):
    path = str(models["text-classification"])
    out = annotate({"sentiment": {"task": "sentiment-analysis", "model": path, **options}}, TEXTS)
    reference = pipeline("text-classification", model=path)
    for text, ours in zip(TEXTS, out.column("sentiment").to_pylist()):
        theirs = reference(text, **call)
        assert_close(ours, theirs[0] if "top_k" not in call else theirs)


@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max", "none"])
def test_token_classification_matches_pipeline(models, annotate, strategy):
    path = str(models["token-classification"])
    out = annotate({"entities": {"task": "ner", "model": path, "aggregation_strategy": strategy}}, TEXTS)
    reference = pipeline("token-classification", model=path, aggregation_strategy=strategy)
    found = 0
    for text, ours in zip(TEXTS, out.column("entities").to_pylist()):
        theirs = [
            {"entity_group": e.get("entity_group", e.get("entity")), **{k: e[k] for k in ("score", "word", "start", "end")}}
            for e in reference(text)
        ]
        assert_close(ours, theirs)
        for entity in ours:
            assert text[entity["start"]:entity["end"]]  # offsets index the original text
        found += len(ours)
    assert found > 0, "the tiny NER model should find entities, or this test proves nothing"


@pytest.mark.parametrize("strategy", ["simple", "none"])
def test_token_classification_unknown_tokens_and_kept_o_match_pipeline(models, annotate, strategy):
    """Unknown tokens take their word from the text; with ignore_labels [] the "O" groups are entities too."""
    path = str(models["token-classification"])
    texts = [f"Alice Johnson \u2603 met Bob in Paris \u2603\u2603 today. {text}" for text in TEXTS[:4]]
    reference = pipeline("token-classification", model=path, aggregation_strategy=strategy)
    assert reference.tokenizer.unk_token in reference.tokenizer.tokenize(texts[0]), "the snowman must be unknown"
    out = annotate({"entities": {"task": "ner", "model": path, "aggregation_strategy": strategy,
                                 "ignore_labels": []}}, texts)
    for text, ours in zip(texts, out.column("entities").to_pylist()):
        theirs = [{"entity_group": e.get("entity_group", e.get("entity")), **{k: e[k] for k in ("score", "word", "start", "end")}}
                  for e in reference(text, ignore_labels=[])]
        assert_close(ours, theirs)
        assert "\u2603" in {e["word"] for e in ours} | {w for e in ours for w in e["word"].split()}
        assert "O" in {e["entity_group"] for e in ours}


@pytest.mark.parametrize("options", [
    {"candidate_labels": ["sports", "politics", "travel"]},
    {"candidate_labels": ["sports", "politics", "travel"], "multi_label": True},
    {"candidate_labels": ["business"], "hypothesis_template": "The topic is {}."},
])
def test_zero_shot_matches_pipeline(models, annotate, options):
    path = str(models["zero-shot-classification"])
    out = annotate({"topic": {"task": "zero-shot-classification", "model": path, **options}}, TEXTS)
    reference = pipeline("zero-shot-classification", model=path)
    call = {k: v for k, v in options.items()}
    for text, ours in zip(TEXTS, out.column("topic").to_pylist()):
        theirs = reference(text, **call)
        assert_close(ours, {"labels": theirs["labels"], "scores": theirs["scores"]})


@pytest.mark.parametrize("normalize", [False, True])
def test_feature_extraction_is_the_masked_mean_of_the_pipeline(models, annotate, normalize):
    path = str(models["text-classification"])  # any BERT checkpoint; its encoder is used
    out = annotate({"vec": {"task": "feature-extraction", "model": path, "normalize": normalize}}, TEXTS)
    reference = pipeline("feature-extraction", model=path)
    for text, ours in zip(TEXTS, out.column("vec").to_pylist()):
        expected = np.mean(np.array(reference(text, truncation=True)[0]), axis=0)
        if normalize:
            expected = expected / np.linalg.norm(expected)
        np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_fill_mask_matches_pipeline(models, annotate):
    path = str(models["fill-mask"])
    texts = [t.replace(t.split()[1], "[MASK]", 1) for t in TEXTS]
    out = annotate({"fill": {"task": "fill-mask", "model": path, "top_k": 3}}, texts)
    reference = pipeline("fill-mask", model=path)
    for text, ours in zip(texts, out.column("fill").to_pylist()):
        assert_close(ours, reference(text, top_k=3, tokenizer_kwargs={"truncation": True}))


def test_text_generation_matches_pipeline_greedy(models, annotate):
    path = str(models["text-generation"])
    texts = tiny_models.sample_texts()
    out = annotate({"gen": {"task": "text-generation", "model": path, "max_new_tokens": 8}}, texts)
    reference = pipeline("text-generation", model=path)
    continuations = out.column("gen").to_pylist()
    for text, ours in zip(texts, continuations):
        theirs = reference(text, max_new_tokens=8, do_sample=False, return_full_text=False)
        assert ours == theirs[0]["generated_text"]
    assert any(continuations), "greedy generation produced nothing at all"


def test_minilm_embeddings_match_pipeline_and_sentence_transformers(minilm, annotate):
    """On the real checkpoint: same vectors as the pipeline, and as sentence-transformers' own encoder."""
    from sentence_transformers import SentenceTransformer

    texts = tiny_models.sample_texts()[:6]
    out = annotate({"vec": {"task": "feature-extraction", "model": minilm, "normalize": True, "max_length": 256}},
                   texts, token_budget=2048)
    ours = np.array(out.column("vec").to_pylist())
    reference = pipeline("feature-extraction", model=minilm)
    for text, vector in zip(texts, ours):
        mean = np.mean(np.array(reference(text, truncation=True, max_length=256)[0]), axis=0)
        np.testing.assert_allclose(vector, mean / np.linalg.norm(mean), atol=1e-4)
    np.testing.assert_allclose(ours, SentenceTransformer(minilm, device="cpu").encode(texts), atol=1e-4)


def test_minilm_topic_labels_agree_with_bbc_categories(minilm, annotate):
    """Real semantics: topic by embedding similarity recovers most of the BBC editors' categories."""
    import pyarrow.parquet as pq

    table = pq.read_table(SAMPLE).take(list(range(0, 200, 4)))
    labels = {"business": "business", "entertainment": "entertainment", "politics": "politics",
              "sport": "sport", "technology": "tech"}
    out = annotate({"topic": {"task": "embedding-classification", "model": minilm, "max_length": 128,
                              "candidate_labels": list(labels),
                              "hypothesis_template": "This news article is about {}."}}, table, token_budget=4096)
    predicted = [labels[row["labels"][0]] for row in out.column("topic").to_pylist()]
    accuracy = np.mean(np.array(predicted) == np.array(table.column("category").to_pylist()))
    assert accuracy >= 0.7, f"topic accuracy {accuracy:.2f} on 50 BBC articles"
