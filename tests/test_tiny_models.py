"""The tiny offline models in tiny_models.py load with the Auto classes / pipelines and behave sensibly."""

import pytest
import tiny_models as tm
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    pipeline,
)

AUTO_CLASSES = {
    "text-classification": AutoModelForSequenceClassification,
    "token-classification": AutoModelForTokenClassification,
    "zero-shot-classification": AutoModelForSequenceClassification,
    "fill-mask": AutoModelForMaskedLM,
    "question-answering": AutoModelForQuestionAnswering,
    "text-generation": AutoModelForCausalLM,
    "seq2seq": AutoModelForSeq2SeqLM,
}
LONG_TEXT = " ".join(tm.sample_texts() * 4)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tm.build_all(tmp_path_factory.mktemp("tiny"))


def test_build_all_is_small_complete_and_idempotent(models):
    assert set(models) == set(AUTO_CLASSES)
    for path in models.values():
        assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
        assert sum(f.stat().st_size for f in path.iterdir()) < 1_000_000
    mtimes = {task: (path / "model.safetensors").stat().st_mtime_ns for task, path in models.items()}
    root = next(iter(models.values())).parent
    assert tm.build_all(root) == models
    assert tm.build_seq2seq(root) == models["seq2seq"]
    assert {task: (path / "model.safetensors").stat().st_mtime_ns for task, path in models.items()} == mtimes


@pytest.mark.parametrize("task", list(AUTO_CLASSES))
def test_auto_class_loads_every_weight(models, task):
    model, info = AUTO_CLASSES[task].from_pretrained(models[task], output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert model.config.architectures == [type(model).__name__]
    assert len(AutoTokenizer.from_pretrained(models[task])) == model.get_input_embeddings().num_embeddings


def test_wordpiece_tokenizer_is_cased_truncates_and_has_offsets(models):
    tok = AutoTokenizer.from_pretrained(models["token-classification"])
    assert tok.model_max_length == 64
    enc = tok("Alice lives in Paris.", "Where?", return_offsets_mapping=True)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    assert "Alice" in tokens and "Paris" in tokens  # cased vocabulary, no lower-casing
    assert set(enc["token_type_ids"]) == {0, 1}
    assert enc["offset_mapping"][tokens.index("Paris")] == (15, 20)
    assert len(tok(LONG_TEXT, truncation=True)["input_ids"]) == 64


def test_text_classification(models):
    clf = pipeline("text-classification", model=str(models["text-classification"]))
    results = clf(tm.sample_texts() + [LONG_TEXT], truncation=True)
    assert len(results) == 13
    assert {r["label"] for r in results} <= set(tm.SENTIMENT_LABELS)
    assert all(0.0 <= r["score"] <= 1.0 for r in results)


def test_token_classification_finds_entities(models):
    ner = pipeline("token-classification", model=str(models["token-classification"]), aggregation_strategy="simple")
    texts = tm.sample_texts()
    results = ner(texts)
    assert sum(bool(entities) for entities in results) >= len(texts) // 2
    for text, entities in zip(texts, results):
        for ent in entities:
            assert ent["entity_group"] in {"PER", "ORG", "LOC"}
            assert text[ent["start"] : ent["end"]] == ent["word"].removeprefix("##")
    first = [(e["entity_group"], e["word"]) for e in results[0]]
    assert first == [("PER", "Alice Johnson"), ("LOC", "Paris"), ("LOC", "Tokyo")]


def test_zero_shot_classification(models):
    zsc = pipeline("zero-shot-classification", model=str(models["zero-shot-classification"]))
    labels = ["travel", "business", "sports"]
    out = zsc(tm.sample_texts()[0], candidate_labels=labels)
    assert sorted(out["labels"]) == sorted(labels)
    assert sum(out["scores"]) == pytest.approx(1.0, abs=1e-4)


def test_feature_extraction(models):
    # AutoModel (BertModel) from the classifier checkpoint: the pooler is present, only the head is left unused.
    fe = pipeline("feature-extraction", model=str(models["text-classification"]))
    text = tm.sample_texts()[1]
    features = torch.tensor(fe(text))
    n_tokens = len(fe.tokenizer(text)["input_ids"])
    assert features.shape == (1, n_tokens, 32)


def test_fill_mask(models):
    fill = pipeline("fill-mask", model=str(models["fill-mask"]))
    preds = fill("Alice Johnson moved to [MASK] in 2019.", top_k=3)
    assert len(preds) == 3
    assert all("[MASK]" not in p["sequence"] and p["token_str"] for p in preds)


def test_question_answering_forward(models):
    tok = AutoTokenizer.from_pretrained(models["question-answering"])
    model = AutoModelForQuestionAnswering.from_pretrained(models["question-answering"])
    enc = tok("Where does Bob work?", LONG_TEXT, truncation="only_second", return_tensors="pt")
    assert enc["input_ids"].shape[1] == 64
    with torch.no_grad():
        out = model(**enc)
    assert out.start_logits.shape == out.end_logits.shape == enc["input_ids"].shape


def test_text_generation_greedy(models):
    gen = pipeline("text-generation", model=str(models["text-generation"]))
    prompts = ["Alice Johnson moved to", "The weather in Paris was terrible, but"]
    outs = gen(prompts, max_new_tokens=5, do_sample=False, batch_size=2)
    for prompt, out in zip(prompts, outs):
        assert out[0]["generated_text"].startswith(prompt)
    assert gen.tokenizer.padding_side == "left" and gen.model.config.n_positions == 128


@pytest.mark.parametrize("num_beams", [1, 2])
def test_seq2seq_generate(models, num_beams):
    tok = AutoTokenizer.from_pretrained(models["seq2seq"])
    model = AutoModelForSeq2SeqLM.from_pretrained(models["seq2seq"])
    enc = tok(tm.sample_texts()[:3], padding=True, return_tensors="pt")
    assert (enc["input_ids"][:, 0] == tok.bos_token_id).all()
    out = model.generate(**enc, num_beams=num_beams, max_new_tokens=8)
    assert out.shape[0] == 3 and 1 < out.shape[1] <= 9
    assert (out[:, 0] == model.generation_config.decoder_start_token_id).all()
    assert all(isinstance(s, str) for s in tok.batch_decode(out, skip_special_tokens=True))
