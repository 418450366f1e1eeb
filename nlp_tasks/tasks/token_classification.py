"""token-classification (alias ner): entities grouped by `aggregation_strategy`, with character offsets.

The model runs batched here. Entities match `pipeline("token-classification")`: the token-level
strategies (`none`, `simple`) label and group tokens with numpy and visit only the entities
kept, while the pipeline's own postprocessing, a Python loop over every token, is reused for
the word-level strategies (`first`, `average`, `max`). With `long_text: chunk` a text is
covered by overlapping windows and entities found in several windows are merged as the
pipeline does with `stride` (the longest, then the most confident, wins), so the result
equals `pipeline(..., stride=stride)`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import pyarrow as pa
from pydantic import model_validator

from nlp_tasks.tasks.base import ENCODER_ENGINES, LoadedModel, TaskAdapter, TaskOptions
from nlp_tasks.tasks.registry import register

ENTITY = pa.struct([
    ("entity_group", pa.string()), ("score", pa.float32()), ("word", pa.string()),
    ("start", pa.int32()), ("end", pa.int32()),
])


class TokenClassificationOptions(TaskOptions):
    supports_chunk: ClassVar[bool] = True
    aggregation_strategy: Literal["none", "simple", "first", "average", "max"] = "simple"
    ignore_labels: list[str] = ["O"]  # noqa: RUF012 - a pydantic field: each instance gets its own copy

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
    engines = ENCODER_ENGINES
    text_encoding: ClassVar[dict[str, bool] | None] = {"return_offsets_mapping": True, "return_special_tokens_mask": True}

    def __init__(self, loaded: LoadedModel, options: TokenClassificationOptions):
        super().__init__(loaded, options)
        from transformers import TokenClassificationPipeline

        self._pipeline = TokenClassificationPipeline(model=self.model, tokenizer=self.tokenizer,
                                                     device=self.model.device)  # a CPU engine's skeleton: meta
        if options.aggregation_strategy in ("none", "simple"):
            self._token_groups = TokenGroups(self._pipeline, self.model.config.id2label,
                                             grouped=options.aggregation_strategy == "simple")

    def arrow_type(self) -> pa.DataType:
        return pa.list_(ENTITY)

    def forward(self, inputs):
        logits = self.infer(inputs).logits.float().cpu().numpy()
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        return [row[:length] for row, length in zip(logits, lengths)]

    def postprocess(self, text, segments, outputs):
        if self.options.aggregation_strategy in ("none", "simple"):
            entities = [entity for segment, logits in zip(segments, outputs)
                        for entity in self._token_groups.entities(text, segment, logits, self.options.ignore_labels)]
            if len(segments) > 1:
                entities = self._pipeline.aggregate_overlapping_entities(entities)
        else:
            entities = pipeline_entities(self._pipeline, text, segments, outputs, self.options.aggregation_strategy,
                                         self.options.ignore_labels)
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


def pipeline_entities(pipeline, text: str, segments: list[dict], outputs: list, strategy: str,
                      ignore_labels: list[str]) -> list[dict]:
    """The token-classification pipeline's own postprocessing of one text's segments and their logits."""
    import torch
    from transformers.pipelines.token_classification import AggregationStrategy

    return pipeline.postprocess(
        [{
            "logits": torch.from_numpy(logits)[None],
            "input_ids": torch.tensor(segment["input_ids"])[None],
            "offset_mapping": torch.tensor(segment["offset_mapping"])[None],
            "special_tokens_mask": torch.tensor(segment["special_tokens_mask"])[None],
            "sentence": text,
        } for segment, logits in zip(segments, outputs)],
        aggregation_strategy=AggregationStrategy[strategy.upper()],
        ignore_labels=list(ignore_labels),
    )


class TokenGroups:
    """The pipeline's `none` and `simple` aggregation, with numpy over the tokens and Python over the entities.

    The pipeline labels every non-special token with its softmax argmax, and (`simple`) groups
    consecutive tokens while their tag (the label without a B-/I- prefix) stays the same and no B-
    starts a new entity; a group's word is its tokens joined back into a string, its score the mean
    of theirs, and its label the first token's without the prefix. Groups whose label is ignored
    ("O") are then dropped. Here the labels and group boundaries are computed as arrays, so only the
    kept groups cost Python work; that keeps a mostly-"O" text cheap.
    """

    def __init__(self, pipeline, id2label: dict[int, str], grouped: bool):
        import numpy as np

        labels = [id2label[i] for i in range(len(id2label))]
        tags = [pipeline.get_tag(label) for label in labels]
        tag_ids = {tag: i for i, tag in enumerate(dict.fromkeys(tag for _, tag in tags))}
        self.tokenizer = pipeline.tokenizer
        self.unk_token_id = pipeline.tokenizer.unk_token_id
        self.grouped = grouped
        self.tag_of = np.array([tag_ids[tag] for _, tag in tags])
        self.begins = np.array([bi == "B" for bi, _ in tags])
        self.names = [label.split("-", 1)[-1] for label in labels] if grouped else labels

    def entities(self, text: str, segment: dict, logits, ignore_labels) -> list[dict]:
        import numpy as np

        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        scores = exp / exp.sum(axis=-1, keepdims=True)  # as the pipeline computes them, in float32
        tokens = np.flatnonzero(~np.asarray(segment["special_tokens_mask"], dtype=bool))
        if not len(tokens):
            return []
        labels = scores[tokens].argmax(axis=-1)
        best = scores[tokens, labels]
        starts = np.ones(len(tokens), dtype=bool)
        if self.grouped:
            starts[1:] = (self.tag_of[labels[1:]] != self.tag_of[labels[:-1]]) | self.begins[labels[1:]]
        firsts = np.flatnonzero(starts)
        ends = np.append(firsts[1:], len(tokens))
        known = ~np.isnan(best)  # the group score is a nanmean, as in the pipeline
        means = np.add.reduceat(np.where(known, best, 0), firsts) / np.add.reduceat(known, firsts)
        kept = [g for g, first in enumerate(firsts.tolist()) if self.names[labels[first]] not in ignore_labels]
        positions = [tokens[firsts[g]:ends[g]].tolist() for g in kept]
        input_ids, offsets = segment["input_ids"], segment["offset_mapping"]
        words = iter(self.tokenizer.convert_ids_to_tokens([input_ids[i] for group in positions for i in group]))
        found = []
        for g, group in zip(kept, positions):
            pieces = [self._piece(text, next(words), input_ids[i], offsets[i]) for i in group]
            found.append({
                "entity_group": self.names[labels[firsts[g]]],
                "score": means[g],
                "word": self.tokenizer.convert_tokens_to_string(pieces) if self.grouped else pieces[0],
                "start": offsets[group[0]][0],
                "end": offsets[group[-1]][1],
            })
        return found

    def _piece(self, text: str, token: str, token_id: int, offset: tuple[int, int]) -> str:
        """A token's string, or for an unknown token the text it stands for (as the pipeline does)."""
        return text[offset[0]:offset[1]] if token_id == self.unk_token_id else token
