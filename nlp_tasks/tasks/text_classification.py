"""text-classification (alias sentiment-analysis): label and score per text, or the top k.

With `long_text: chunk` every window is scored and the scores are aggregated per label
(`chunk_aggregation`: mean or max) before the best label(s) are picked.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import PositiveInt

from nlp_tasks.tasks.base import ENCODER_ENGINES, LABEL_SCORE, ChunkScoresOptions, TaskAdapter, aggregate_windows
from nlp_tasks.tasks.registry import register


class TextClassificationOptions(ChunkScoresOptions):
    top_k: PositiveInt | None = None
    """None: the best label as a struct; k: the k best as a list, highest first (as the pipeline)."""
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = None
    """Default as the pipeline: sigmoid for one label or multi-label models, else softmax."""


def score_function(config: Any, requested: str | None) -> str:
    """The pipeline's rule for turning logits into scores."""
    if requested:
        return requested
    if config.problem_type == "regression":
        return "none"
    if config.problem_type == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    return "softmax"


def apply_score_function(logits: np.ndarray, function: str) -> np.ndarray:
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    if function == "softmax":
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    return logits


@register
class TextClassification(TaskAdapter):
    name = "text-classification"
    aliases = ("sentiment-analysis",)
    options_class = TextClassificationOptions
    auto_class = "AutoModelForSequenceClassification"
    engines = ENCODER_ENGINES
    text_encoding: ClassVar[dict[str, bool] | None] = {}

    def arrow_type(self) -> pa.DataType:
        return LABEL_SCORE if self.options.top_k is None else pa.list_(LABEL_SCORE)

    def forward(self, inputs):
        logits = self.infer(inputs).logits.float().cpu().numpy()
        return list(logits)

    def postprocess(self, text, segments, outputs):
        function = score_function(self.model.config, self.options.function_to_apply)
        scores = aggregate_windows(apply_score_function(np.stack(outputs), function), self.options.chunk_aggregation)
        id2label = self.model.config.id2label
        if self.options.top_k is None:
            best = int(scores.argmax())
            return {"label": id2label[best], "score": float(scores[best])}
        ranked = np.argsort(-scores, kind="stable")[: self.options.top_k]
        return [{"label": id2label[int(i)], "score": float(scores[i])} for i in ranked]
