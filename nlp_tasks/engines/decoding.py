"""CTranslate2's decoding arguments for a generation task, from its checkpoint's generation_config and its options.

transformers fills every option a task leaves unset from the checkpoint's generation_config; the same settings
are mapped here onto `Translator.translate_batch` / `Generator.generate_batch`. A setting CTranslate2 cannot honour,
or would reject only when a batch runs, raises `Unsupported` naming it: nothing is dropped silently. Works on plain
dicts (no torch, no transformers), so the driver checks a config before anything runs and the actor maps the same
way.

Lengths, as the two count them: transformers' max_new_tokens and min_new_tokens count every token after the
decoder start token (the forced first one included) or after the prompt; min_length counts the decoder start
token too. CTranslate2 counts the target prefix (the forced first token) in max_decoding_length and
min_decoding_length, and only new tokens in generate_batch's max_length and min_length. transformers forces
`forced_eos_token_id` at the last position, whatever the minimum; CTranslate2 has no forced end, so it decodes one
token less and the end token is appended where a hypothesis reached that length (`forced_end_id`).
"""

from __future__ import annotations

from typing import Any

DEFAULTS = {"num_beams": 1, "max_length": 20, "max_new_tokens": None, "min_length": 0, "min_new_tokens": None,
            "no_repeat_ngram_size": 0, "length_penalty": 1.0, "early_stopping": False, "do_sample": False,
            "temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0, "num_return_sequences": 1,
            "forced_bos_token_id": None, "forced_eos_token_id": None, "eos_token_id": None,
            "decoder_start_token_id": None, "suppress_tokens": None, "bad_words_ids": None}
"""transformers' GenerationConfig defaults of the settings mapped here."""
IGNORED = {"transformers_version", "_from_model_config", "bos_token_id", "pad_token_id", "use_cache",
           "output_attentions", "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate",
           "remove_invalid_values", "renormalize_logits"}
"""Settings that change nothing in the tokens CTranslate2 returns (token ids it reads from the converted model,
output formats, caches)."""
GPU_TOP_P_CLASSES = 8192
"""On a GPU, CTranslate2 samples with top_p < 1 only among at most this many best tokens (its TopPMask kernel)."""


class Unsupported(Exception):
    """A generation setting CTranslate2 cannot honour; the message names it and where it comes from."""


def generation_settings(checkpoint: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """What `generate` would run with: GenerationConfig's defaults, the checkpoint's generation_config on top (a
    null there is unset, as in transformers), the task's own options on top of that; `origin` records which
    settings the task set."""
    checkpoint = {key: value for key, value in checkpoint.items() if value is not None}
    origin = {key: "the task's options" if key in task else "the checkpoint's generation_config"
              for key in {**checkpoint, **task}}
    return {**DEFAULTS, **checkpoint, **task, "origin": origin}


def _where(settings: dict[str, Any], key: str) -> str:
    return settings["origin"].get(key, "transformers' defaults")


def _refuse(settings: dict[str, Any], key: str, why: str) -> Unsupported:
    return Unsupported(f"ctranslate2 cannot honour {key}={settings[key]!r} (from {_where(settings, key)}): {why}")


def _ids(value: Any) -> list[int]:
    """A token id setting (an id, a list of them, or None) as a list."""
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _lengths(settings: dict[str, Any], seq2seq: bool) -> tuple[int, int]:
    """The most and the fewest tokens CTranslate2 decodes, both counting the forced first token (see the module
    docstring); the minimum never exceeds the maximum, as transformers stops at its maximum whatever the minimum."""
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
    forced_end = settings["forced_eos_token_id"] is not None
    maximum -= forced_end  # the forced end token takes the last position
    if maximum < 1:
        key = "max_new_tokens" if settings["max_new_tokens"] is not None else "max_length"
        raise _refuse(settings, key, "it leaves no token to decode" + " before the forced end token" * forced_end)
    return maximum, min(minimum, maximum)


def _penalties(settings: dict[str, Any], seq2seq: bool, minimum: int, maximum: int) -> None:
    """Refuse what CTranslate2 applies otherwise than transformers. Penalties: it sees the generated tokens only,
    transformers the prompt (decoder-only models) or the decoder start token as well. Beam search: transformers
    scores each step's log-probabilities after its processors change them, unrenormalized; CTranslate2 changes the
    logits and renormalizes, so a repetition penalty, or an end token forbidden at every position, makes other
    hypotheses win."""
    if settings["num_beams"] > 1 and settings["repetition_penalty"] != 1.0:
        raise _refuse(settings, "repetition_penalty", "with beams transformers penalizes log-probabilities, "
                                                      "CTranslate2 logits")
    if settings["num_beams"] > 1 and 0 < maximum <= minimum:
        key = "min_length" if settings["min_length"] else "min_new_tokens"
        raise _refuse(settings, key, f"with beams and a minimum that forbids the end token at every one of the "
                                     f"{maximum} positions CTranslate2 decodes, its renormalized scores pick other "
                                     "hypotheses than transformers")
    for key, neutral in (("repetition_penalty", 1.0), ("no_repeat_ngram_size", 0)):
        if settings[key] != neutral and not seq2seq:
            raise _refuse(settings, key, "transformers applies it to the prompt's tokens too, CTranslate2 to the "
                                         "generated ones only")
    start, ends = settings["decoder_start_token_id"], _ids(settings["eos_token_id"])
    if seq2seq and settings["repetition_penalty"] != 1.0 and start is not None and start in ends:
        raise _refuse(settings, "repetition_penalty", "transformers also penalizes the decoder start token, which "
                                                      "is this checkpoint's end token; CTranslate2 does not")


def _suppressed(settings: dict[str, Any]) -> list[list[int]]:
    """Token ids never to generate, from suppress_tokens and the single-token bad_words_ids (transformers drops a
    bad word that is an end token)."""
    ends = _ids(settings["eos_token_id"])
    words = settings["bad_words_ids"] or []
    if any(len(word) != 1 for word in words):
        raise _refuse(settings, "bad_words_ids", "transformers matches a sequence of several tokens against the "
                                                 "prompt and decoder start token too, CTranslate2 against the "
                                                 "generated tokens only")
    return [[token] for token in _ids(settings["suppress_tokens"])] + [word for word in words if word[0] not in ends]


def _sampling(settings: dict[str, Any], device: str) -> dict[str, Any]:
    """Sampling arguments; CTranslate2 samples with greedy search only, and on a GPU top_p among few tokens."""
    if settings["num_beams"] != 1:
        raise _refuse(settings, "num_beams", "CTranslate2 samples with greedy search only (num_beams: 1)")
    top_k, top_p = settings["top_k"] or 0, settings["top_p"]
    if device != "cpu" and top_p < 1 and not 0 < top_k <= GPU_TOP_P_CLASSES:
        raise _refuse(settings, "top_p", f"on a GPU CTranslate2 takes top_p < 1 with top_k at most "
                                         f"{GPU_TOP_P_CLASSES} only (top_k is {top_k})")
    return {"sampling_topk": top_k, "sampling_topp": top_p, "sampling_temperature": settings["temperature"]}


def ctranslate2_decoding(settings: dict[str, Any], seq2seq: bool, device: str = "cpu") -> dict[str, Any]:
    """Keyword arguments of translate_batch (`seq2seq`) or generate_batch for `generation_settings`, plus what the
    model applies itself: `seed`, `target_prefix_id` (the forced first token), `forced_end_id` and `suppress_ids`.
    `device`: where the pool may run (auto may be a GPU); the actor maps what the driver has checked."""
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
    maximum, minimum = _lengths(settings, seq2seq)
    _penalties(settings, seq2seq, minimum, maximum)
    forced_ends = _ids(settings["forced_eos_token_id"])
    decoding = {"beam_size": settings["num_beams"], "no_repeat_ngram_size": settings["no_repeat_ngram_size"],
                "length_penalty": settings["length_penalty"], "repetition_penalty": settings["repetition_penalty"],
                "return_end_token": True, "seed": settings.get("seed", 0), "suppress_ids": _suppressed(settings),
                "forced_end_id": min(forced_ends) if forced_ends else None}  # transformers' argmax of equal scores
    if seq2seq:
        decoding.update(max_decoding_length=maximum, min_decoding_length=minimum, max_input_length=0,
                        target_prefix_id=settings["forced_bos_token_id"])
    else:
        if settings["forced_bos_token_id"] is not None:
            raise _refuse(settings, "forced_bos_token_id", "a decoder-only model continues the prompt")
        decoding.update(max_length=maximum, min_length=minimum, include_prompt_in_result=False)
    if settings["eos_token_id"] is not None:
        decoding["end_token"] = _ids(settings["eos_token_id"])
    if settings["do_sample"]:
        decoding.update(_sampling(settings, device))
    return decoding
