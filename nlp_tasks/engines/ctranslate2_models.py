"""CTranslate2 for the generation tasks: a checkpoint converted once per node, and generation from the job's segments.

The conversion reads the checkpoint the job already resolved (local folder, node copy of an object-storage one,
`python:` package) and is cached on the node by (model fingerprint, quantization). A file lock makes actors that
start together on one node wait for a single conversion, which is written under a temporary name and renamed into
place: a half-written conversion is never used. The user's checkpoint is only read.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from nlp_tasks.engines.node_cache import built
from nlp_tasks.workers.batching import Features, plan_micro_batches

SEQ2SEQ_TYPES = {"bart": "BartConfig", "mbart": "MBartConfig", "marian": "MarianConfig", "pegasus": "PegasusConfig",
                 "t5": "T5Config", "mt5": "MT5Config", "umt5": "UMT5Config", "m2m_100": "M2M100Config"}
"""Encoder-decoder model types (config.json `model_type`) CTranslate2 converts, with their config class: NLLB
checkpoints are m2m_100."""
DECODER_TYPES = {"gpt2": "GPT2Config", "gptj": "GPTJConfig", "gpt_neox": "GPTNeoXConfig", "codegen": "CodeGenConfig",
                 "bloom": "BloomConfig", "mpt": "MPTConfig", "opt": "OPTConfig", "falcon": "FalconConfig",
                 "llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config",
                 "gemma": "GemmaConfig", "gemma2": "Gemma2Config", "phi": "PhiConfig", "phi3": "Phi3Config"}
"""Decoder-only model types CTranslate2 converts."""


def conversion_dir(fingerprint: str, quantization: str) -> Path:
    from nlp_tasks.models.loading import cache_root

    return cache_root() / "ctranslate2" / f"{fingerprint.replace(':', '-')}-{quantization}"


def converted(path: str, fingerprint: str, quantization: str) -> str:
    """The CTranslate2 model of the checkpoint at `path`, converted on this node once (see the module docstring)."""
    target = conversion_dir(fingerprint, quantization)
    built(target, lambda staging: _converter(path).convert(str(staging), quantization=quantization, force=True))
    return str(target)


def _converter(path: str) -> Any:
    """CTranslate2's Transformers converter, given the config keys its BART-family loaders read and transformers 5
    no longer writes, as the loaded modules show them: a final encoder layer norm means pre-norm layers (mBART,
    Pegasus), an embedding layer norm means one is applied (BART). Set on the loaded config, never the files."""
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            model = super().load_model(model_class, model_name_or_path, **kwargs)
            encoder = getattr(getattr(model, "model", None), "encoder", None)
            if encoder is not None:
                for key, present in (("normalize_before", getattr(encoder, "layer_norm", None) is not None),
                                     ("normalize_embedding", hasattr(encoder, "layernorm_embedding"))):
                    if not hasattr(model.config, key):
                        setattr(model.config, key, present)
            return model

    return Converter(path)


def load_ctranslate2(ref: str, revision: str | None, path: str, seq2seq: bool, device: str, dtype: str,
                     threads: int, tokenizer: Any) -> CTranslate2Model:
    """The checkpoint `ref` (here at `path`) in CTranslate2 on `device`, converted for `dtype` once per node."""
    from nlp_tasks.models.loading import checkpoint_json, model_fingerprint

    quantization = dtype if dtype != "auto" else ("float16" if device == "cuda" else "float32")
    return CTranslate2Model(converted(path, model_fingerprint(ref, revision), quantization), seq2seq, device,
                            quantization, threads, tokenizer, checkpoint_json(path, "generation_config.json", revision))


class CTranslate2Model:
    """A converted checkpoint in CTranslate2 (a Translator for encoder-decoders, a Generator for decoders), turning
    segments into generated token ids. `threads`: batches decoded at once, one thread each (on CPU its docs advise
    raising these rather than the threads per batch); `generation`: the checkpoint's generation_config, which
    CTranslate2 does not read (the tasks map it: decoding.py)."""

    def __init__(self, path: str, seq2seq: bool, device: str, dtype: str, threads: int, tokenizer: Any,
                 generation: dict[str, Any]):
        import ctranslate2

        engine = ctranslate2.Translator if seq2seq else ctranslate2.Generator
        self.model = engine(path, device=device, compute_type=dtype, inter_threads=threads, intra_threads=1)
        self.seq2seq = seq2seq
        self.tokenizer = tokenizer
        self.generation = generation

    def generate(self, segments: list[Features], decoding: dict[str, Any], token_budget: int,
                 tokens: Counter | None = None) -> list[np.ndarray]:
        """Each segment's generated token ids (with the forced first token, without the decoder start token), in
        order. Segments are cut into length-sorted micro-batches by `token_budget` and all handed to CTranslate2 at
        once, so that its workers decode them in parallel."""
        import ctranslate2

        decoding = dict(decoding)
        ctranslate2.set_random_seed(decoding.pop("seed"))
        prefix_id = decoding.pop("target_prefix_id", None)
        prefix = None if prefix_id is None else [self.tokenizer.convert_ids_to_tokens(int(prefix_id))]
        lengths = [len(segment["input_ids"]) for segment in segments]
        groups = plan_micro_batches(lengths, token_budget)
        pending = []
        for group in groups:
            if tokens is not None:
                tokens.update(real=sum(lengths[i] for i in group), padded=len(group) * lengths[group[0]])
            source = [self.tokenizer.convert_ids_to_tokens(np.asarray(segments[i]["input_ids"]).tolist()) for i in group]
            if self.seq2seq:
                pending.append(self.model.translate_batch(
                    source, target_prefix=None if prefix is None else [prefix] * len(group), asynchronous=True,
                    **decoding))
            else:
                pending.append(self.model.generate_batch(source, asynchronous=True, **decoding))
        outputs: list[Any] = [None] * len(segments)
        for group, results in zip(groups, pending):
            for index, result in zip(group, results):
                result = result.result()
                ids = (self.tokenizer.convert_tokens_to_ids(result.hypotheses[0]) if self.seq2seq
                       else result.sequences_ids[0])
                outputs[index] = np.asarray(ids, dtype=np.int64)
        return outputs
