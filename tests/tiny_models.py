"""Tiny, offline Hugging Face models for tests.

Each builder makes a tokenizer from a deterministic built-in English corpus, a seeded model with hidden size 32 and
2 layers (the NER tagger and BART are also trained for about a second, so their outputs are not noise), and writes
both with ``save_pretrained`` (safetensors) to ``root/<name>``; ``AutoTokenizer`` and the matching ``AutoModelFor*``
class then load it with no Hub access. Each model is under 0.5 MB; all of them build in about 2 s on 2 CPU cores,
byte-identically on every run. Builders are idempotent: an existing build is returned as is, and a new one is
written to a temp dir and renamed into place, so concurrent builders (pytest-xdist, Ray workers) never see a
half-written model.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AddedToken,
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

SEED = 0
ENCODER_MAX_LENGTH = 64  # BERT tokenizers' model_max_length: short, so tests can exercise truncation
MAX_POSITIONS = 128  # position embeddings of every model; model_max_length of the GPT-2 and BART tokenizers
SENTIMENT_LABELS = ("negative", "neutral", "positive")
NLI_LABELS = ("contradiction", "neutral", "entailment")
NER_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")
_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)

_ENTITIES = {
    "PER": ["Alice Johnson", "Bob Smith", "Maria Garcia", "Wei Chen", "Priya Patel", "John Miller", "Fatima Khan",
            "Lars Nilsson", "Emma Brown", "Carlos Silva", "Yuki Tanaka", "Olivia Wilson", "Ahmed Hassan"],
    "ORG": ["Acme Corp", "Globex", "Initech", "United Nations", "Contoso Bank", "Stark Industries", "Google",
            "Microsoft", "Oxford University", "Red Cross", "Siemens", "Reuters"],
    "LOC": ["Paris", "London", "New York", "Tokyo", "Berlin", "Madrid", "Toronto", "Sydney", "Cairo", "Mumbai",
            "San Francisco", "Lagos", "Lake Geneva", "Brazil"],
}
_NUMBERS = {"year": (1990, 2024), "month": (1, 12), "day": (1, 28), "hour": (0, 23), "num": (2, 5000)}
_TEMPLATES = [
    "{PER} moved to {LOC} in {year}.",
    "{PER} works for {ORG} in {LOC}.",
    "{ORG} opened a new office in {LOC} on {day} May {year}.",
    "Yesterday, {PER} met {PER} at the {ORG} headquarters.",
    "The flight from {LOC} to {LOC} costs {num} dollars!",
    "Did {PER} really sell {num} shares of {ORG}?",
    "According to {ORG}, prices in {LOC} rose by {num} percent.",
    "{PER} said the weather in {LOC} was terrible, but the food was great.",
    "I loved the concert in {LOC}; {PER} played for {num} minutes.",
    "{ORG} hired {num} engineers (mostly from {LOC}) last year.",
    "The new phone is amazing and I would buy it again.",
    "This was the worst service I have ever had, never again.",
    "The meeting is scheduled for {day}/{month}/{year} at {hour}:30.",
    '"We are happy with the results," said {PER} of {ORG}.',
    "I think {PER} will visit {LOC} next week, but his plans may change.",
    "What a wonderful day: {PER} won {num} points for {ORG}.",
]
_ENTITY_KIND = {name: kind for kind, names in _ENTITIES.items() for name in names}
_ENTITY_RE = re.compile(r"\b(?:" + "|".join(sorted(map(re.escape, _ENTITY_KIND), key=len, reverse=True)) + r")\b")


@functools.cache
def _corpus() -> list[str]:
    """400 deterministic synthetic sentences: the templates filled with names and numbers."""
    rng = random.Random(SEED)

    def fill(match: re.Match) -> str:
        field = match[1]
        return rng.choice(_ENTITIES[field]) if field in _ENTITIES else str(rng.randint(*_NUMBERS[field]))

    return [re.sub(r"\{(\w+)\}", fill, _TEMPLATES[i % len(_TEMPLATES)]) for i in range(400)]


def sample_texts() -> list[str]:
    """Twelve varied English sentences mentioning people, places and organisations."""
    return [
        "Alice Johnson flew from Paris to Tokyo on Monday.",
        "Bob Smith works for Acme Corp in New York.",
        "Maria Garcia said the food in Madrid was great!",
        "The United Nations met in Cairo to discuss climate change.",
        "I think this phone is terrible and I want my money back.",
        "Wei Chen joined Google after finishing his degree at Oxford University.",
        "Is it true that Microsoft bought 300 shares of Globex?",
        "Priya Patel and Carlos Silva visited Sydney in 2019.",
        "The concert was okay, nothing special.",
        "According to Reuters, prices in London rose by 7 percent.",
        "Yuki Tanaka moved to Berlin to work for Siemens.",
        "What a wonderful day at Lake Geneva with Emma Brown!",
    ]


def _training_texts() -> list[str]:
    """Tokenizer (and NER) training text: the corpus plus the sample sentences that tests feed the models."""
    return _corpus() + sample_texts()


@functools.cache
def _wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """Cased BERT-style WordPiece tokenizer: [CLS] A [SEP] (B [SEP]) with offsets, shared by all encoders.

    The vocab is every training word plus single characters and their ##continuations (so unseen words split into
    pieces, never [UNK]), built from sorted word counts: WordPieceTrainer's output varies between processes
    (huggingface/tokenizers#1794), and a whole-word vocab keeps the tiny NER model's job easy.
    """
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts = Counter(word for text in _training_texts() for word, _ in pre_tokenizer.pre_tokenize_str(text))
    chars = sorted({c for word in counts for c in word})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = dict.fromkeys(specials + chars + ["##" + c for c in chars] + sorted(counts, key=lambda w: (-counts[w], w)))
    tok = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)  # cased, for NER
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece(prefix="##")
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=ENCODER_MAX_LENGTH, pad_token="[PAD]", unk_token="[UNK]",
        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def _byte_bpe_tokenizer(specials: list[str], wrap_bos_eos: bool = False, **kwargs) -> PreTrainedTokenizerFast:
    """Byte-level BPE tokenizer (GPT-2 style); `wrap_bos_eos` adds BART's '<s> A </s>' / '<s> A </s></s> B </s>'."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(  # deterministic, unlike WordPieceTrainer (no continuing-subword prefix)
        vocab_size=800, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_texts(), trainer)
    if wrap_bos_eos:
        bos, eos = kwargs["bos_token"], kwargs["eos_token"]
        tok.post_processor = processors.RobertaProcessing(
            (eos, tok.token_to_id(eos)), (bos, tok.token_to_id(bos)), trim_offsets=False, add_prefix_space=False
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=MAX_POSITIONS, **kwargs)


def _save(root: Path, name: str, make, finish=None) -> Path:
    """Build `make() -> (model, tokenizer)` into root/name unless it exists; write to a temp dir, then rename.
    `finish(folder)` edits the saved files before the rename."""
    path = Path(root) / name
    if (path / "config.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=path.parent))
    try:
        torch.manual_seed(SEED)
        model, tokenizer = make()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if finish is not None:
            finish(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private
        os.replace(tmp, path)
    except OSError:  # another process finished first
        if not (path / "config.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _labels(names) -> dict:
    """id2label / label2id config kwargs for a label list."""
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def _encoder(model_class, **config):
    """Tiny BERT of `model_class` plus the shared WordPiece tokenizer."""
    tokenizer = _wordpiece_tokenizer()
    cfg = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=MAX_POSITIONS, **_TINY, **config)
    return model_class(cfg), tokenizer


def _ner_labels(tokenizer, texts: list[str]):
    """Encode texts; BIO label ids where the built-in names occur, O elsewhere, -100 on padding."""
    enc = tokenizer(texts, padding=True, return_offsets_mapping=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping").tolist()
    labels = torch.where(enc["attention_mask"].bool(), 0, -100)
    for row, text in enumerate(texts):
        for match in _ENTITY_RE.finditer(text):
            kind = _ENTITY_KIND[match[0]]
            for col, (start, end) in enumerate(offsets[row]):
                if match.start() <= start < match.end() and start < end:  # special tokens have (0, 0) offsets
                    labels[row, col] = NER_LABELS.index(("B-" if start == match.start() else "I-") + kind)
    return enc, labels


def _train(model, steps: int, **batch):
    """A few full-batch AdamW steps so outputs are not pure noise.

    Single-threaded: as fast for models this small, gives the same bytes on machines with any core count, and
    avoids thread oversubscription (10x slower) when several pytest-xdist / Ray workers build at once.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(steps):
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def _token_classifier():
    """Tiny BERT NER head trained briefly (~1 s) on the tagged corpus so that entities show up in predictions."""
    model, tokenizer = _encoder(BertForTokenClassification, **_labels(NER_LABELS))
    enc, labels = _ner_labels(tokenizer, _corpus()[:200] + sample_texts())
    return _train(model, 40, **enc, labels=labels), tokenizer


def _causal_lm():
    """Tiny GPT-2 with <|endoftext|> as bos/eos/pad and a greedy generation config."""
    eot = "<|endoftext|>"
    tokenizer = _byte_bpe_tokenizer([eot], bos_token=eot, eos_token=eot, unk_token=eot, pad_token=eot,
                                    padding_side="left")  # left padding for batched generation
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=MAX_POSITIONS, n_embd=32, n_layer=2, n_head=2,
                     n_inner=64, bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id)
    model = GPT2LMHeadModel(cfg)
    model.generation_config = GenerationConfig(bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id,
                                               do_sample=False, max_new_tokens=20)
    return model, tokenizer


def _seq2seq():
    """Tiny BART, briefly (~0.7 s) trained to reconstruct its input: untrained, greedy decoding emits </s> at once.

    As in facebook/bart-*, decoding starts with </s> and is forced to end with it.
    """
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0-4 as in facebook/bart-*
    tokenizer = _byte_bpe_tokenizer(specials, wrap_bos_eos=True, bos_token="<s>", pad_token="<pad>",
                                    eos_token="</s>", unk_token="<unk>", mask_token="<mask>")
    bos, pad, eos = (tokenizer.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>"))
    ids = dict(bos_token_id=bos, pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=eos)
    cfg = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2,
                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                     max_position_embeddings=MAX_POSITIONS, **ids)
    model = BartForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig(**ids, forced_eos_token_id=eos, max_new_tokens=20)
    enc = tokenizer(_corpus()[:64], padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return _train(model, 30, **enc, labels=labels), tokenizer


def _causal_lm_without_unk():
    """Tiny GPT-2 shaped as Llama 3 and Qwen2 checkpoints are: a byte-level BPE with no unknown token, chat
    special tokens added after training (<|im_end|> also ends generation), embeddings padded to a multiple of 64."""
    eot = "<|endoftext|>"
    tokenizer = _byte_bpe_tokenizer([eot], bos_token=eot, eos_token=eot, pad_token=eot, padding_side="left")
    tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken("<|im_start|>", special=True),
                                                                AddedToken("<|im_end|>", special=True)]})
    eot_id, end_id = tokenizer.convert_tokens_to_ids([eot, "<|im_end|>"])
    cfg = GPT2Config(vocab_size=-(-len(tokenizer) // 64) * 64, n_positions=MAX_POSITIONS, n_embd=32, n_layer=2,
                     n_head=2, n_inner=64, bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id)
    model = GPT2LMHeadModel(cfg)
    model.generation_config = GenerationConfig(bos_token_id=eot_id, eos_token_id=[eot_id, end_id],
                                               pad_token_id=eot_id, do_sample=False, max_new_tokens=20)
    return model, tokenizer


def _generation_in_config(folder: Path) -> None:
    """Move generation_config.json's settings into config.json, as checkpoints saved before it existed have them."""
    generation = json.loads((folder / "generation_config.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **generation}, indent=2))
    (folder / "generation_config.json").unlink()


def _seq2seq_legacy():
    """The tiny BART with facebook/bart-large-cnn's forced tokens (<s> first, </s> last) and beams, set in its
    config.json only (see `_generation_in_config`)."""
    model, tokenizer = _seq2seq()
    model.generation_config = GenerationConfig(**model.generation_config.to_diff_dict(), forced_bos_token_id=0,
                                               num_beams=4, no_repeat_ngram_size=3, early_stopping=True)
    return model, tokenizer


def _t5():
    """Tiny T5: no bos token, decoding starts with <pad>, inputs end with </s>, embeddings padded past the
    tokenizer (as t5-small's 32128 rows for 32100 tokens); briefly trained to reconstruct its input."""
    specials = ["<pad>", "</s>", "<unk>"]
    tokenizer = _byte_bpe_tokenizer(specials, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tokenizer.eos_token_id)])
    ids = dict(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    cfg = T5Config(vocab_size=len(tokenizer) + 28, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                   relative_attention_num_buckets=8, **ids)
    model = T5ForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig(**ids, max_new_tokens=20)
    enc = tokenizer(_corpus()[:64], padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return _train(model, 30, **enc, labels=labels), tokenizer


_BUILDERS = {  # task -> (directory name, factory)
    "text-classification": (
        "bert-sentiment", lambda: _encoder(BertForSequenceClassification, **_labels(SENTIMENT_LABELS))
    ),
    "token-classification": ("bert-ner", _token_classifier),
    "zero-shot-classification": (
        "bert-nli", lambda: _encoder(BertForSequenceClassification, **_labels(NLI_LABELS))
    ),
    "fill-mask": ("bert-mlm", lambda: _encoder(BertForMaskedLM)),
    "question-answering": ("bert-qa", lambda: _encoder(BertForQuestionAnswering)),
    "text-generation": ("gpt2", _causal_lm),
    "seq2seq": ("bart", _seq2seq),
}


def build_text_classifier(root: Path) -> Path:
    """Sentiment classifier (negative/neutral/positive), random weights; returns root/bert-sentiment."""
    return _save(root, *_BUILDERS["text-classification"])


def build_token_classifier(root: Path) -> Path:
    """NER tagger (BIO over PER/ORG/LOC), briefly trained so entities are found; returns root/bert-ner."""
    return _save(root, *_BUILDERS["token-classification"])


def build_nli_model(root: Path) -> Path:
    """NLI classifier (contradiction/neutral/entailment) for zero-shot-classification; returns root/bert-nli."""
    return _save(root, *_BUILDERS["zero-shot-classification"])


def build_masked_lm(root: Path) -> Path:
    """BertForMaskedLM for fill-mask; returns root/bert-mlm."""
    return _save(root, *_BUILDERS["fill-mask"])


def build_question_answering(root: Path) -> Path:
    """BertForQuestionAnswering (extractive QA head); returns root/bert-qa."""
    return _save(root, *_BUILDERS["question-answering"])


def build_causal_lm(root: Path) -> Path:
    """GPT2LMHeadModel, n_positions 128, greedy generation config, left-padding tokenizer; returns root/gpt2."""
    return _save(root, *_BUILDERS["text-generation"])


def build_seq2seq(root: Path) -> Path:
    """BartForConditionalGeneration, generation config valid for greedy and beam search; returns root/bart."""
    return _save(root, *_BUILDERS["seq2seq"])


def build_causal_lm_without_unk(root: Path) -> Path:
    """GPT2LMHeadModel with no unknown token, added special tokens, two end tokens and padded embeddings; returns
    root/gpt2-no-unk."""
    return _save(root, "gpt2-no-unk", _causal_lm_without_unk)


def build_seq2seq_legacy(root: Path) -> Path:
    """The tiny BART with forced <s> and </s>, beams and no_repeat_ngram_size in config.json and no
    generation_config.json; returns root/bart-legacy."""
    return _save(root, "bart-legacy", _seq2seq_legacy, _generation_in_config)


def build_t5(root: Path) -> Path:
    """T5ForConditionalGeneration starting from <pad>, embeddings padded past the tokenizer; returns root/t5."""
    return _save(root, "t5", _t5)


def build_all(root: Path) -> dict[str, Path]:
    """Build every tiny model under root; returns {task: model dir}."""
    return {task: _save(root, name, make) for task, (name, make) in _BUILDERS.items()}
