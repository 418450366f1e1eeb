"""CTranslate2 for the generation tasks: a checkpoint converted once per node, and generation from the job's segments.

The conversion reads the checkpoint the job already resolved (local folder, node copy of an object-storage one,
`python:` package) and is cached on the node by (model fingerprint, quantization). A file lock makes actors that
start together on one node wait for a single conversion, which is written under a temporary name and renamed into
place: a half-written conversion is never used. The user's checkpoint is only read.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from nlp_tasks.batching import Features, group_micro_batches
from nlp_tasks.engines.node_cache import built
from nlp_tasks.models.loading import cache_root, checkpoint_json, model_fingerprint

SEQ2SEQ_TYPES = {"bart": "BartConfig", "mbart": "MBartConfig", "marian": "MarianConfig", "pegasus": "PegasusConfig",
                 "t5": "T5Config", "mt5": "MT5Config", "umt5": "UMT5Config", "m2m_100": "M2M100Config"}
"""Encoder-decoder model types (config.json `model_type`) CTranslate2 converts, with their config class: NLLB
checkpoints are m2m_100."""
DECODER_TYPES = {"gpt2": "GPT2Config", "gptj": "GPTJConfig", "gpt_neox": "GPTNeoXConfig", "codegen": "CodeGenConfig",
                 "bloom": "BloomConfig", "mpt": "MPTConfig", "opt": "OPTConfig", "falcon": "FalconConfig",
                 "llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config",
                 "gemma": "GemmaConfig", "gemma2": "Gemma2Config", "phi": "PhiConfig", "phi3": "Phi3Config"}
"""Decoder-only model types CTranslate2 converts."""


CONVERSION = 2
"""What `converted` writes, in its cache key: raised whenever that changes, so that a node never loads a conversion
made another way."""


def conversion_dir(fingerprint: str, quantization: str) -> Path:
    return cache_root() / "ctranslate2" / f"{fingerprint.replace(':', '-')}-{quantization}-c{CONVERSION}"


def converted(path: str, fingerprint: str, quantization: str) -> str:
    """The CTranslate2 model of the checkpoint at `path`, converted on this node once (see the module docstring)."""
    target = conversion_dir(fingerprint, quantization)
    built(target, lambda staging: _converter(path).convert(str(staging), quantization=quantization, force=True))
    return str(target)


def checkpoint_generation(ref: str, revision: str | None = None) -> dict[str, Any]:
    """The checkpoint's generation settings as transformers' `generate` reads them: its generation_config.json, or,
    where it has none, the generation keys of its config.json (transformers' legacy GenerationConfig
    .from_model_config, which is how older BART and Marian checkpoints set their beams and forced tokens)."""
    generation = checkpoint_json(ref, "generation_config.json", revision)
    if generation:
        return generation
    from transformers import GenerationConfig

    return GenerationConfig.from_model_config(checkpoint_json(ref, "config.json", revision)).to_diff_dict()


def placeholder(token_id: int) -> str:
    """The converted vocabulary's entry for an id the tokenizer has no token of its own for."""
    return f"<ctranslate2 id {token_id}>"


def aligned_vocabulary(tokenizer: Any, size: int) -> list[str]:
    """Entry i is the tokenizer's token of id i, so that CTranslate2's ids are transformers' ids: the converters
    list the tokenizer's vocabulary sorted by id, which shifts every later id where ids have gaps or repeat
    (added special tokens) and is short where the model's embeddings are padded. Ids with no token, or with one
    an earlier id has, get a placeholder: CTranslate2 looks tokens up by text."""
    tokens: list[str] = []
    seen: set[str] = set()
    for token_id, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(size)))):
        tokens.append(placeholder(token_id) if token is None or token in seen else token)
        seen.add(tokens[-1])
    return tokens


def _converter(path: str) -> Any:
    """CTranslate2's Transformers converter, with what its loaders leave out for checkpoints as transformers 5 saves
    and runs them. On the loaded config, never the files: the keys its BART-family loaders read and transformers 5
    no longer writes, as the loaded modules show them (a final encoder layer norm means pre-norm layers, as in
    mBART and Pegasus; an embedding layer norm means one is applied, as in BART). On the converted model
    (`_align`): the decoder start token `generate` uses, a vocabulary aligned on the tokenizer's ids, and an
    unknown token where the tokenizer has none (byte-level BPE, as in Llama 3 and Qwen2), which CTranslate2
    cannot load as null (OpenNMT/CTranslate2#1356)."""
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            self.model = super().load_model(model_class, model_name_or_path, **kwargs)
            encoder = getattr(getattr(self.model, "model", None), "encoder", None)
            if encoder is not None:
                for key, present in (("normalize_before", getattr(encoder, "layer_norm", None) is not None),
                                     ("normalize_embedding", hasattr(encoder, "layernorm_embedding"))):
                    if not hasattr(self.model.config, key):
                        setattr(self.model.config, key, present)
            return self.model

        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            self.tokenizer = super().load_tokenizer(tokenizer_class, model_name_or_path, **kwargs)
            return self.tokenizer

        def _load(self):
            spec = super()._load()
            _align(spec, self.model, self.tokenizer)
            return spec

    return Converter(path)


def _align(spec: Any, model: Any, tokenizer: Any) -> None:
    """The converted model's vocabularies aligned on the tokenizer's ids (`aligned_vocabulary`), its decoder start
    token the one `generate` starts from (the generation config's, else its bos token), and "" as its unknown
    token where the tokenizer has none (as CTranslate2's own Llama loader does)."""
    if hasattr(spec, "register_vocabulary"):  # a decoder-only model
        spec.register_vocabulary(aligned_vocabulary(tokenizer, spec.get_vocabulary_size()))
    else:
        vocabulary = aligned_vocabulary(tokenizer, spec.get_target_vocabulary_size())
        spec._vocabularies = {"source": [vocabulary], "target": [vocabulary]}  # replaces the loader's
        start = model.generation_config.decoder_start_token_id
        start = model.generation_config.bos_token_id if start is None else start
        if isinstance(start, int) and start < len(vocabulary):  # Marian starts from its padding, not converted
            spec.config.decoder_start_token = vocabulary[start]
    if spec.config.unk_token is None:
        spec.config.unk_token = ""


def load_ctranslate2(ref: str, revision: str | None, path: str, seq2seq: bool, device: str, dtype: str,
                     threads: int, tokenizer: Any) -> CTranslate2Model:
    """The checkpoint `ref` (here at `path`) in CTranslate2 on `device`, converted for `dtype` once per node."""
    quantization = dtype if dtype != "auto" else ("float16" if device == "cuda" else "float32")
    return CTranslate2Model(converted(path, model_fingerprint(ref, revision), quantization), seq2seq, device,
                            quantization, threads, tokenizer, checkpoint_generation(path, revision))


class CTranslate2Model:
    """A converted checkpoint in CTranslate2 (a Translator for encoder-decoders, a Generator for decoders), turning
    segments into generated token ids. `threads`: batches decoded at once, one thread each (on CPU its docs advise
    raising these rather than the threads per batch); `generation`: the checkpoint's generation settings, which
    CTranslate2 does not read (the tasks map them: decoding.py). Token ids and CTranslate2's tokens are translated
    through the converted vocabulary itself, whose entry i is id i."""

    def __init__(self, path: str, seq2seq: bool, device: str, dtype: str, threads: int, tokenizer: Any,
                 generation: dict[str, Any]):
        import ctranslate2

        engine = ctranslate2.Translator if seq2seq else ctranslate2.Generator
        self.model = engine(path, device=device, compute_type=dtype, inter_threads=threads, intra_threads=1)
        self.seq2seq = seq2seq
        self.tokenizer = tokenizer
        self.generation = generation
        name = "shared_vocabulary.json" if seq2seq else "vocabulary.json"
        self.tokens = json.loads((Path(path) / name).read_text(encoding="utf-8"))
        self.ids = {token: token_id for token_id, token in enumerate(self.tokens)}

    def generate(self, segments: list[Features], decoding: dict[str, Any], token_budget: int,
                 tokens: Counter | None = None) -> list[np.ndarray]:
        """Each segment's generated token ids (with the forced first token, without the decoder start token), in
        order. Segments are cut into length-sorted micro-batches by `token_budget` and all handed to CTranslate2 at
        once, so that its workers decode them in parallel."""
        import ctranslate2

        decoding = dict(decoding)
        ctranslate2.set_random_seed(decoding.pop("seed"))
        prefix_id, forced_end = decoding.pop("target_prefix_id", None), decoding.pop("forced_end_id")
        decoding["suppress_sequences"] = [[self.tokens[i] for i in ids] for ids in decoding.pop("suppress_ids")
                                          if all(i < len(self.tokens) for i in ids)] or None  # others never come
        prefix = None if prefix_id is None else [self.tokens[prefix_id]]
        lengths = [len(segment["input_ids"]) for segment in segments]
        groups = group_micro_batches(lengths, token_budget)
        pending = []
        for group in groups:
            if tokens is not None:
                tokens.update(real=sum(lengths[i] for i in group), padded=len(group) * lengths[group[0]])
            source = [[self.tokens[i] for i in np.asarray(segments[i]["input_ids"]).tolist()] for i in group]
            if self.seq2seq:
                pending.append(self.model.translate_batch(
                    source, target_prefix=None if prefix is None else [prefix] * len(group), asynchronous=True,
                    **decoding))
            else:
                pending.append(self.model.generate_batch(source, asynchronous=True, **decoding))
        longest, ends = decoding["max_decoding_length" if self.seq2seq else "max_length"], decoding.get("end_token", [])
        outputs: list[Any] = [None] * len(segments)
        for group, results in zip(groups, pending):
            for index, result in zip(group, results):
                result = result.result()
                ids = ([self.ids[token] for token in result.hypotheses[0]] if self.seq2seq
                       else result.sequences_ids[0])
                outputs[index] = np.asarray(_with_forced_end(ids, forced_end, longest, ends), dtype=np.int64)
        return outputs


def _with_forced_end(ids: list[int], forced_end: int | None, longest: int, ends: list[int]) -> list[int]:
    """`ids` with the forced end token transformers puts at the last position, where decoding reached it without
    ending."""
    reached = len(ids) == longest and not (ids and ids[-1] in ends)
    return [*ids, forced_end] if forced_end is not None and reached else list(ids)
