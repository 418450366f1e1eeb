"""zero-shot-classification: an NLI model scores each candidate label as a hypothesis about the text.

With `long_text: chunk` the text is cut into overlapping windows that leave room for the longest
hypothesis; each window's substring is paired with every hypothesis (tokenized as the pipeline
tokenizes a text), the labels are scored per window as the pipeline scores a text, and the
scores are aggregated per label (`chunk_aggregation`: mean or max).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import pyarrow as pa
from pydantic import AfterValidator, Field

from nlp_tasks.tasks.base import (
    ENCODER_ENGINES,
    LABELS_SCORES,
    ChunkScoresOptions,
    LoadedModel,
    TaskAdapter,
    aggregate_windows,
    one_label_slot,
    split_rows,
)
from nlp_tasks.tasks.registry import register


class ZeroShotOptions(ChunkScoresOptions):
    candidate_labels: list[str] = Field(min_length=1)
    multi_label: bool = False
    hypothesis_template: Annotated[str, AfterValidator(one_label_slot)] = "This example is {}."

    @property
    def hypotheses(self) -> list[str]:
        return [self.hypothesis_template.format(label) for label in self.candidate_labels]


def ranked(labels: list[str], scores: np.ndarray) -> dict:
    """Labels and scores, highest score first (the pipeline's output order)."""
    order = list(reversed(scores.argsort()))
    return {"labels": [labels[i] for i in order], "scores": [float(scores[i]) for i in order]}


@register
class ZeroShotClassification(TaskAdapter):
    name = "zero-shot-classification"
    options_class = ZeroShotOptions
    auto_class = "AutoModelForSequenceClassification"
    engines = ENCODER_ENGINES

    def __init__(self, loaded: LoadedModel, options: ZeroShotOptions):
        super().__init__(loaded, options)
        label2id = self.model.config.label2id
        entailment = [i for label, i in label2id.items() if label.lower().startswith("entail")]
        if not entailment:
            raise ValueError(f"model has no 'entailment' label (labels: {sorted(label2id)}); it is not an NLI model")
        self.entailment_id = entailment[0]

    def arrow_type(self) -> pa.DataType:
        return LABELS_SCORES

    def reserved_tokens(self) -> int:
        """Room for the longest hypothesis and the special tokens a pair adds over a single text."""
        hypotheses = self.tokenizer(self.options.hypotheses, add_special_tokens=False)["input_ids"]
        pair_extra = self.tokenizer.num_special_tokens_to_add(pair=True) - self.tokenizer.num_special_tokens_to_add()
        return max(map(len, hypotheses)) + pair_extra

    def preprocess(self, texts, batch):
        hypotheses = self.options.hypotheses
        windows = self.text_windows(texts)
        pieces = [piece for row in windows for piece in row]
        if not pieces:  # a tokenizer given no text at all raises (IndexError)
            return []
        pairs = self.tokenizer(
            [piece for piece in pieces for _ in hypotheses], hypotheses * len(pieces),
            truncation="only_first", max_length=self.max_length,
        )
        segments = [{k: pairs[k][i] for k in pairs} for i in range(len(pieces) * len(hypotheses))]
        return split_rows(segments, [len(row) * len(hypotheses) for row in windows])

    def forward(self, inputs):
        return list(self.infer(inputs).logits.float().cpu().numpy())

    def postprocess(self, text, segments, outputs):
        labels = len(self.options.candidate_labels)
        logits = np.stack(outputs).reshape(len(outputs) // labels, labels, -1)  # windows x labels x NLI classes
        if self.options.multi_label or labels == 1:
            contradiction_id = -1 if self.entailment_id == 0 else 0
            pair = logits[..., [contradiction_id, self.entailment_id]]
            scores = np.exp(pair) / np.exp(pair).sum(-1, keepdims=True)
            scores = scores[..., 1]
        else:
            entail = logits[..., self.entailment_id]
            scores = np.exp(entail) / np.exp(entail).sum(-1, keepdims=True)
        return ranked(list(self.options.candidate_labels), aggregate_windows(scores, self.options.chunk_aggregation))
