"""CTranslate2's decoding arguments for a generation task, from its checkpoint's generation_config and its options.

transformers fills every option a task leaves unset from the checkpoint's generation_config; the same settings
are mapped here onto `Translator.translate_batch` / `Generator.generate_batch`. A setting CTranslate2 cannot honour
raises `Unsupported` naming it: nothing is dropped silently. Works on plain dicts (no torch, no transformers), so
the driver checks a config before anything runs and the actor maps the same way.
"""

from __future__ import annotations

from typing import Any

DEFAULTS = {"num_beams": 1, "max_length": 20, "max_new_tokens": None, "min_length": 0, "min_new_tokens": None,
            "no_repeat_ngram_size": 0, "length_penalty": 1.0, "early_stopping": False, "do_sample": False,
            "temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0, "num_return_sequences": 1,
            "forced_bos_token_id": None, "forced_eos_token_id": None, "eos_token_id": None}
"""transformers' GenerationConfig defaults of the settings mapped here."""
IGNORED = {"transformers_version", "_from_model_config", "bos_token_id", "pad_token_id", "decoder_start_token_id",
           "use_cache", "output_attentions", "output_hidden_states", "output_scores", "output_logits",
           "return_dict_in_generate", "remove_invalid_values", "renormalize_logits"}
"""Settings that change nothing in the tokens CTranslate2 returns (token ids it reads from the converted model,
output formats, caches)."""


class Unsupported(Exception):
    """A generation setting CTranslate2 cannot honour; the message names it and where it comes from."""


def generation_settings(checkpoint: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """What `generate` would run with: GenerationConfig's defaults, the checkpoint's generation_config on top, the
    task's own options on top of that; `origin` records which settings the task set."""
    origin = {key: "the task's options" if key in task else "the checkpoint's generation_config"
              for key in {**checkpoint, **task}}
    return {**DEFAULTS, **checkpoint, **task, "origin": origin}


def _where(settings: dict[str, Any], key: str) -> str:
    return settings["origin"].get(key, "transformers' defaults")


def _refuse(settings: dict[str, Any], key: str, why: str) -> Unsupported:
    return Unsupported(f"ctranslate2 cannot honour {key}={settings[key]!r} (from {_where(settings, key)}): {why}")


def ctranslate2_decoding(settings: dict[str, Any], seq2seq: bool) -> dict[str, Any]:
    """Keyword arguments of translate_batch (`seq2seq`) or generate_batch, plus `seed` and `target_prefix_id`
    (the forced first token), for `generation_settings`."""
    unknown = sorted(key for key in settings if key not in DEFAULTS and key not in IGNORED
                     and key not in ("origin", "seed"))
    if unknown:
        raise _refuse(settings, unknown[0], "CTranslate2 has no such option")
    if settings["num_return_sequences"] != 1:
        raise _refuse(settings, "num_return_sequences", "a task keeps one sequence per row")
    if settings["num_beams"] > 1 and (settings["early_stopping"] not in (True, False) or (
            settings["early_stopping"] is False and _where(settings, "early_stopping") == "the task's options")):
        raise _refuse(settings, "early_stopping", "its beam search stops once num_beams hypotheses are finished, as "
                                                  "transformers does with early_stopping: true")
    maximum = settings["max_new_tokens"]
    if maximum is None:
        if not seq2seq:
            raise _refuse(settings, "max_length", "it counts the prompt in transformers; set max_new_tokens")
        maximum = settings["max_length"] - 1  # transformers counts the decoder start token
    minimum = settings["min_new_tokens"] or 0
    if settings["min_length"]:
        if not seq2seq:
            raise _refuse(settings, "min_length", "it counts the prompt in transformers; set min_new_tokens")
        minimum = max(minimum, settings["min_length"] - 1)
    if settings["forced_eos_token_id"] is not None:
        maximum -= 1  # transformers forces the end token at the last position: one text token less
    decoding = {"beam_size": settings["num_beams"], "no_repeat_ngram_size": settings["no_repeat_ngram_size"],
                "length_penalty": settings["length_penalty"], "repetition_penalty": settings["repetition_penalty"],
                "return_end_token": True, "seed": settings.get("seed", 0)}
    if seq2seq:
        decoding.update(max_decoding_length=max(1, maximum), min_decoding_length=minimum,
                        target_prefix_id=settings["forced_bos_token_id"])
    else:
        if settings["forced_bos_token_id"] is not None:
            raise _refuse(settings, "forced_bos_token_id", "a decoder-only model continues the prompt")
        decoding.update(max_length=max(1, maximum), min_length=minimum, include_prompt_in_result=False)
    if settings["eos_token_id"] is not None:
        ends = settings["eos_token_id"]
        decoding["end_token"] = list(ends) if isinstance(ends, (list, tuple)) else [ends]
    if settings["do_sample"]:
        if settings["num_beams"] != 1:
            raise _refuse(settings, "num_beams", "CTranslate2 samples with greedy search only (num_beams: 1)")
        decoding.update(sampling_topk=settings["top_k"] or 0, sampling_topp=settings["top_p"],
                        sampling_temperature=settings["temperature"])
    return decoding
