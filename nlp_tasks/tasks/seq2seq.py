"""summarization and translation: encoder-decoder `generate` through AutoModelForSeq2SeqLM.

transformers 5 removed the summarization, translation and text2text pipelines; these adapters
take their place. Generation options left unset fall back to the checkpoint's own
generation_config (for example the beam settings a summarization checkpoint ships with).

Summarization with `long_text: chunk` is map-reduce: every window of a text is summarized, the
window summaries are joined and summarized again, level after level, until the input fits one
window. Each level runs batched over all texts of the actor's batch that still need it, and
the column records how many levels a text took.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from nlp_tasks.engines.decoding import ctranslate2_decoding, generation_settings
from nlp_tasks.tasks.base import LoadedModel, RowFailed, TaskAdapter, TaskOptions, split_rows
from nlp_tasks.tasks.registry import register


class GenerationOptions(TaskOptions):
    max_new_tokens: PositiveInt | None = 128
    min_length: NonNegativeInt | None = None
    """transformers' min_length: counts the decoder start token, and for text-generation the prompt too."""
    min_new_tokens: NonNegativeInt | None = None
    num_beams: PositiveInt | None = None
    no_repeat_ngram_size: NonNegativeInt | None = None
    repetition_penalty: PositiveFloat | None = None
    length_penalty: float | None = None
    early_stopping: bool | None = None
    do_sample: bool = False
    temperature: PositiveFloat | None = None
    top_k: PositiveInt | None = None
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int = 0
    """Seeds sampling per batch so that reruns with do_sample are reproducible."""

    def generate_kwargs(self) -> dict[str, Any]:
        """The options `generate` takes, leaving unset ones to the checkpoint's generation_config."""
        fields = ("max_new_tokens", "min_length", "min_new_tokens", "num_beams", "no_repeat_ngram_size",
                  "repetition_penalty", "length_penalty", "early_stopping", "do_sample", "temperature", "top_k",
                  "top_p")
        return {name: getattr(self, name) for name in fields if getattr(self, name) is not None}

    def reusable(self) -> bool:
        """Sampling is seeded per batch: a row's text is drawn from its batch's seed, not from its own inputs."""
        return not self.do_sample

    def engine_settings(self) -> dict[str, Any]:
        """What an engine other than transformers maps (engines/decoding.py): the generate options and the seed."""
        return {**self.generate_kwargs(), "seed": self.seed}


class Seq2SeqOptions(GenerationOptions):
    prefix: str = ""
    """Prepended to every text, e.g. "summarize: " for T5 checkpoints."""


class SummarizationOptions(Seq2SeqOptions):
    supports_chunk: ClassVar[bool] = True


class TranslationOptions(Seq2SeqOptions):
    src_lang: str | None = None
    tgt_lang: str | None = None
    """For multilingual checkpoints (NLLB, M2M100, mBART): language codes as the tokenizer names them."""


def generate(model: Any, inputs: dict[str, Any], options: GenerationOptions, **extra: Any) -> Any:
    """`model.generate` with the task's options, seeded when sampling."""
    import torch

    if options.do_sample:
        torch.manual_seed(options.seed)
    return model.generate(**inputs, **options.generate_kwargs(), **extra)


class GenerationTask(TaskAdapter):
    """What the generation tasks share: transformers' `generate` in `forward`, or CTranslate2 (`engine`), whose
    decoding arguments are mapped once from the checkpoint's generation_config and the task's options."""

    engines = ("transformers", "ctranslate2")

    def __init__(self, loaded: LoadedModel, options: GenerationOptions):
        super().__init__(loaded, options)
        self.engine = loaded.engine
        if self.engine is not None:
            task = {**options.engine_settings(), **self.generate_extra()}
            self.decoding = ctranslate2_decoding(generation_settings(self.engine.generation, task),
                                                 seq2seq=self.auto_class == "AutoModelForSeq2SeqLM")

    def generate_extra(self) -> dict[str, Any]:
        """Settings the task derives beyond its options (a forced first token)."""
        return {}

    def run(self, segments, batcher, tokens=None):
        if self.engine is None:
            return super().run(segments, batcher, tokens)
        return self.engine.generate(segments, self.decoding, batcher.token_budget, tokens)


SUMMARY_LEVELS = pa.struct([("summary", pa.string()), ("levels", pa.int32())])


@register
class Summarization(GenerationTask):
    name = "summarization"
    options_class = SummarizationOptions
    auto_class = "AutoModelForSeq2SeqLM"

    def arrow_type(self) -> pa.DataType:
        return pa.string() if self.options.long_text == "truncate" else SUMMARY_LEVELS

    def reserved_tokens(self) -> int:
        """Every window starts with the prefix."""
        return len(self.tokenizer(self.options.prefix, add_special_tokens=False)["input_ids"])

    def preprocess(self, texts, batch):
        return [[{**segment, "level": 1} for segment in row] for row in self.window_segments(texts)]

    def window_segments(self, texts: list[str]) -> list[list]:
        """Each text's windows (one with truncate), prefixed and tokenized."""
        windows = self.text_windows(texts)
        segments = self.encode([self.options.prefix + window for row in windows for window in row])
        return split_rows(segments, [len(row) for row in windows])

    def forward(self, inputs):
        sequences = generate(self.model, self.model_inputs(inputs), self.options, **self.generate_extra())
        return list(sequences.cpu().numpy())

    def decode(self, sequence: Any) -> str:
        return self.tokenizer.decode(sequence, skip_special_tokens=True).strip()

    def next_level(self, rows):
        """Texts summarized from more than one window go on with their joined window summaries."""
        follow_ups: list = [None] * len(rows)
        going_on = [index for index, (segments, _) in enumerate(rows) if len(segments) > 1]
        if not going_on:
            return follow_ups
        joined = [" ".join(map(self.decode, rows[index][1])) for index in going_on]
        for index, segments in zip(going_on, self.window_segments(joined)):
            windows, level = len(rows[index][0]), rows[index][0][0]["level"] + 1
            if len(segments) >= windows:
                follow_ups[index] = RowFailed(
                    f"map-reduce summarization does not converge: the summaries of {windows} windows need "
                    f"{len(segments)} windows again at level {level}; lower max_new_tokens")
            else:
                follow_ups[index] = [{**segment, "level": level} for segment in segments]
        return follow_ups

    def postprocess(self, text, segments, outputs):
        summary = self.decode(outputs[0])
        return summary if self.options.long_text == "truncate" else {"summary": summary, "levels": segments[0]["level"]}


@register
class Translation(Summarization):
    name = "translation"
    options_class = TranslationOptions

    def __init__(self, loaded: LoadedModel, options: TranslationOptions):
        super().__init__(loaded, options)
        if options.src_lang:
            self.tokenizer.src_lang = options.src_lang

    def generate_extra(self) -> dict[str, Any]:
        if not self.options.tgt_lang:
            return {}
        return {"forced_bos_token_id": self.tokenizer.convert_tokens_to_ids(self.options.tgt_lang)}
