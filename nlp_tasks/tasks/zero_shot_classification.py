"""zero-shot-classification: an NLI model scores each candidate label as a hypothesis about the text."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field

from nlp_tasks.tasks.base import LABELS_SCORES, LoadedModel, TaskAdapter, TaskOptions
from nlp_tasks.tasks.registry import register


class ZeroShotOptions(TaskOptions):
    candidate_labels: list[str] = Field(min_length=1)
    multi_label: bool = False
    hypothesis_template: str = "This example is {}."


def ranked(labels: list[str], scores: np.ndarray) -> dict:
    """Labels and scores, highest score first (the pipeline's output order)."""
    order = list(reversed(scores.argsort()))
    return {"labels": [labels[i] for i in order], "scores": [float(scores[i]) for i in order]}


@register
class ZeroShotClassification(TaskAdapter):
    name = "zero-shot-classification"
    options_class = ZeroShotOptions
    auto_class = "AutoModelForSequenceClassification"

    def __init__(self, loaded: LoadedModel, options: ZeroShotOptions):
        super().__init__(loaded, options)
        if options.hypothesis_template.format("{label}") == options.hypothesis_template:
            raise ValueError(f"hypothesis_template {options.hypothesis_template!r} has no {{}} for the label")
        label2id = self.model.config.label2id
        entailment = [i for label, i in label2id.items() if label.lower().startswith("entail")]
        if not entailment:
            raise ValueError(f"model has no 'entailment' label (labels: {sorted(label2id)}); it is not an NLI model")
        self.entailment_id = entailment[0]
        self.hypotheses = [options.hypothesis_template.format(label) for label in options.candidate_labels]

    def arrow_type(self) -> pa.DataType:
        return LABELS_SCORES

    def preprocess(self, texts, batch):
        labels = len(self.hypotheses)
        pairs = self.tokenizer(
            [text for text in texts for _ in range(labels)], self.hypotheses * len(texts),
            truncation="only_first", max_length=self.max_length,
        )
        units = [{k: pairs[k][i] for k in pairs.keys()} for i in range(len(texts) * labels)]
        return [units[row * labels:(row + 1) * labels] for row in range(len(texts))]

    def forward(self, inputs):
        return list(self.model(**self.model_inputs(inputs)).logits.float().cpu().numpy())

    def postprocess(self, text, units, outputs):
        logits = np.stack(outputs)
        if self.options.multi_label or len(outputs) == 1:
            contradiction_id = -1 if self.entailment_id == 0 else 0
            pair = logits[:, [contradiction_id, self.entailment_id]]
            scores = np.exp(pair) / np.exp(pair).sum(-1, keepdims=True)
            scores = scores[:, 1]
        else:
            entail = logits[:, self.entailment_id]
            scores = np.exp(entail) / np.exp(entail).sum(-1, keepdims=True)
        return ranked(list(self.options.candidate_labels), scores)
