"""text-generation: a causal LM continues each text; greedy by default so reruns agree."""

from __future__ import annotations

import pyarrow as pa
from pydantic import PositiveInt

from nlp_tasks.tasks.base import LoadedModel, single_segments
from nlp_tasks.tasks.registry import register
from nlp_tasks.tasks.seq2seq import GenerationOptions, GenerationTask, generate


class TextGenerationOptions(GenerationOptions):
    max_new_tokens: PositiveInt | None = 50
    return_full_text: bool = False
    """False: only the continuation (the pipeline's `return_full_text=False`); True: text + continuation."""


@register
class TextGeneration(GenerationTask):
    name = "text-generation"
    options_class = TextGenerationOptions
    auto_class = "AutoModelForCausalLM"
    padding_side = "left"

    def __init__(self, loaded: LoadedModel, options: TextGenerationOptions):
        if loaded.tokenizer.pad_token_id is None:
            loaded.tokenizer.pad_token = loaded.tokenizer.eos_token
        super().__init__(loaded, options)

    @property
    def max_length(self) -> int:
        """Leave room in the window for the generated tokens."""
        return max(1, super().max_length - (self.options.max_new_tokens or 0))

    def arrow_type(self) -> pa.DataType:
        return pa.string()

    def preprocess(self, texts, batch):
        return single_segments(self.encode(texts))

    def forward(self, inputs):
        inputs = self.model_inputs(inputs)
        sequences = generate(self.model, inputs, self.options, pad_token_id=self.tokenizer.pad_token_id)
        prompt_width = inputs["input_ids"].shape[1]
        return list(sequences[:, prompt_width:].cpu().numpy())

    def postprocess(self, text, segments, outputs):
        # Decode prompt and continuation together and cut the prompt off, as the pipeline does,
        # so that tokens merging across the boundary decode the same way.
        prompt_ids = segments[0]["input_ids"]
        prompt = self.tokenizer.decode(prompt_ids, skip_special_tokens=True)
        full = self.tokenizer.decode(list(prompt_ids) + list(outputs[0]), skip_special_tokens=True)
        continuation = full[len(prompt):]
        return text + continuation if self.options.return_full_text else continuation
