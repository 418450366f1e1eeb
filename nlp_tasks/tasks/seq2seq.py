"""summarization and translation: encoder-decoder `generate` through AutoModelForSeq2SeqLM.

transformers 5 removed the summarization, translation and text2text pipelines; these adapters
take their place. Generation options left unset fall back to the checkpoint's own
generation_config (for example the beam settings a summarization checkpoint ships with).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from nlp_tasks.tasks.base import LoadedModel, TaskAdapter, TaskOptions, single_units
from nlp_tasks.tasks.registry import register


class GenerationOptions(TaskOptions):
    max_new_tokens: int | None = 128
    min_length: int | None = None
    num_beams: int | None = None
    no_repeat_ngram_size: int | None = None
    length_penalty: float | None = None
    early_stopping: bool | None = None
    do_sample: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    """Seeds sampling per batch so that reruns with do_sample are reproducible."""

    def generate_kwargs(self) -> dict[str, Any]:
        """The options `generate` takes, leaving unset ones to the checkpoint's generation_config."""
        fields = ("max_new_tokens", "min_length", "num_beams", "no_repeat_ngram_size", "length_penalty",
                  "early_stopping", "do_sample", "temperature", "top_k", "top_p")
        return {name: getattr(self, name) for name in fields if getattr(self, name) is not None}


class Seq2SeqOptions(GenerationOptions):
    prefix: str = ""
    """Prepended to every text, e.g. "summarize: " for T5 checkpoints."""


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


@register
class Summarization(TaskAdapter):
    name = "summarization"
    options_class = Seq2SeqOptions
    auto_class = "AutoModelForSeq2SeqLM"

    def arrow_type(self) -> pa.DataType:
        return pa.string()

    def generate_extra(self) -> dict[str, Any]:
        return {}

    def preprocess(self, texts, batch):
        return single_units(self.encode([self.options.prefix + text for text in texts]))

    def forward(self, inputs):
        sequences = generate(self.model, self.model_inputs(inputs), self.options, **self.generate_extra())
        return list(sequences.cpu().numpy())

    def postprocess(self, text, units, outputs):
        return self.tokenizer.decode(outputs[0], skip_special_tokens=True).strip()


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
