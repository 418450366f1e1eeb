"""token-classification (alias ner): entities grouped by `aggregation_strategy`, with character offsets.

The model runs batched here; grouping reuses the token-classification pipeline's own
postprocessing, so entities match `pipeline("token-classification")` exactly. With
`long_text: chunk` a text is covered by overlapping windows and entities found in several
windows are merged as the pipeline does with `stride` (the longest, then the most confident,
wins), so the result equals `pipeline(..., stride=stride)`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import pyarrow as pa
from pydantic import model_validator

from nlp_tasks.tasks.base import LoadedModel, TaskAdapter, TaskOptions
from nlp_tasks.tasks.registry import register

ENTITY = pa.struct([
    ("entity_group", pa.string()), ("score", pa.float32()), ("word", pa.string()),
    ("start", pa.int32()), ("end", pa.int32()),
])


class TokenClassificationOptions(TaskOptions):
    supports_chunk: ClassVar[bool] = True
    aggregation_strategy: Literal["none", "simple", "first", "average", "max"] = "simple"
    ignore_labels: list[str] = ["O"]

    @model_validator(mode="after")
    def _chunk_merges_entities(self):
        if self.long_text == "chunk" and self.aggregation_strategy == "none":
            raise ValueError("long_text: chunk merges entities across windows; it needs an aggregation_strategy "
                             "other than none (as the pipeline's stride does)")
        return self


@register
class TokenClassification(TaskAdapter):
    name = "token-classification"
    aliases = ("ner",)
    options_class = TokenClassificationOptions
    auto_class = "AutoModelForTokenClassification"

    def __init__(self, loaded: LoadedModel, options: TokenClassificationOptions):
        super().__init__(loaded, options)
        from transformers import TokenClassificationPipeline
        from transformers.pipelines.token_classification import AggregationStrategy

        self._pipeline = TokenClassificationPipeline(model=self.model, tokenizer=self.tokenizer, device=self.device)
        self._strategy = AggregationStrategy[options.aggregation_strategy.upper()]

    def arrow_type(self) -> pa.DataType:
        return pa.list_(ENTITY)

    def preprocess(self, texts, batch):
        return self.encode_units(texts, return_offsets_mapping=True, return_special_tokens_mask=True)

    def forward(self, inputs):
        logits = self.model(**self.model_inputs(inputs)).logits.float().cpu().numpy()
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        return [row[:length] for row, length in zip(logits, lengths)]

    def postprocess(self, text, units, outputs):
        import torch

        entities = self._pipeline.postprocess(
            [{
                "logits": torch.from_numpy(logits)[None],
                "input_ids": torch.tensor(unit["input_ids"])[None],
                "offset_mapping": torch.tensor(unit["offset_mapping"])[None],
                "special_tokens_mask": torch.tensor(unit["special_tokens_mask"])[None],
                "sentence": text,
            } for unit, logits in zip(units, outputs)],
            aggregation_strategy=self._strategy,
            ignore_labels=list(self.options.ignore_labels),
        )
        return [
            {
                "entity_group": e.get("entity_group", e.get("entity")),
                "score": float(e["score"]),
                "word": e["word"],
                "start": int(e["start"]),
                "end": int(e["end"]),
            }
            for e in entities
        ]
