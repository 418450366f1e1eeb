"""The tiny checkpoints vary the way real ones do, where product tests rely on it.

tests/engines/test_ctranslate2.py (its `shapes` fixture and EDGES) runs the product on checkpoints shaped as real ones, to
prove how it handles each shape: the converted vocabulary aligned on the tokenizer's ids where the embeddings are
padded past the tokenizer or special tokens were added after training, "" as the unknown token where the tokenizer
has none, the decoder start, forced tokens and beams taken from the generation config or, for old checkpoints, from
config.json alone. Those tests pass as well on a checkpoint that lost its shape, and then prove nothing: the tests
here fail instead. What the builders do besides (sizes, idempotence, pipelines running on the models) is not checked
here: the product tests that use the models fail on their own when it breaks.
"""

from __future__ import annotations

import json

import pytest
import tiny_models as tm
from transformers import AutoTokenizer, GenerationConfig


@pytest.fixture(scope="module")
def shapes(models, tmp_path_factory):
    """The same checkpoints as test_ctranslate2's `shapes`."""
    root = tmp_path_factory.mktemp("shapes")
    return {"bart": models["seq2seq"], "bart-legacy": tm.build_seq2seq_legacy(root), "t5": tm.build_t5(root),
            "gpt2-no-unk": tm.build_causal_lm_without_unk(root)}


def config(path) -> dict:
    return json.loads((path / "config.json").read_text())


def test_gpt2_no_unk_is_shaped_as_llama_3_and_qwen2(shapes):
    """No unknown token; chat tokens added after training, each one special token, the end one also ending
    generation; embeddings padded past the tokenizer."""
    path = shapes["gpt2-no-unk"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.unk_token is None and tokenizer.unk_token_id is None
    start, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert min(start, end) >= tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=False), "added after"
    assert {start, end} <= set(tokenizer.all_special_ids)
    ids = tokenizer("<|im_start|>user Hi<|im_end|>")["input_ids"]
    assert (ids[0], ids[-1]) == (start, end) and start not in ids[1:-1] and end not in ids[1:-1]
    ends = GenerationConfig.from_pretrained(path).eos_token_id
    assert isinstance(ends, list) and sorted(ends) == sorted({tokenizer.eos_token_id, end})
    assert config(path)["vocab_size"] > len(tokenizer)


def test_t5_is_shaped_as_t5_small(shapes):
    """No bos token, decoding starts from <pad>, inputs end with </s>, embeddings padded past the tokenizer."""
    path = shapes["t5"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    generation = GenerationConfig.from_pretrained(path)
    assert tokenizer.bos_token is None
    assert generation.decoder_start_token_id == tokenizer.pad_token_id != generation.eos_token_id
    assert tokenizer("Alice moved to Paris.")["input_ids"][-1] == tokenizer.eos_token_id
    assert config(path)["vocab_size"] > len(tokenizer)


def test_bart_is_shaped_as_facebook_bart(shapes):
    """Decoding starts with </s> (not the bos token) and is forced to end with it, set in generation_config.json."""
    tokenizer = AutoTokenizer.from_pretrained(shapes["bart"])
    generation = GenerationConfig.from_pretrained(shapes["bart"])
    assert generation.decoder_start_token_id == generation.forced_eos_token_id == tokenizer.eos_token_id
    assert generation.decoder_start_token_id != tokenizer.bos_token_id


def test_bart_legacy_keeps_its_generation_settings_in_config_json_only(shapes):
    """As facebook/bart-large-cnn: forced <s> first and </s> last, beams and no_repeat_ngram_size, in config.json and
    no generation_config.json (the product must read them from there)."""
    path = shapes["bart-legacy"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert not (path / "generation_config.json").exists()
    settings = config(path)
    assert (settings["forced_bos_token_id"], settings["forced_eos_token_id"]) == (tokenizer.bos_token_id,
                                                                                 tokenizer.eos_token_id)
    assert settings["num_beams"] > 1 and settings["no_repeat_ngram_size"] > 0
