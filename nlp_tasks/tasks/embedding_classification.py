"""embedding-classification: rank labels by a sentence embedding of the text, with no fine-tuning.

A sentence-embedding model (such as all-MiniLM-L6-v2) embeds the text once. The labels come either
from `candidate_labels` (zero-shot: each label's hypothesis is embedded once and scores are cosine
similarities) or from `examples`, a Parquet file of labelled texts: the job embeds them with this
task's own model and pooling, fits a head once per run (`head: centroid`, cosine similarity to each
label's mean embedding, or `logistic`, probabilities of logistic regression; see heads.py) and
hands it to every actor. Either way the value is the labels and their scores, best first. With
`long_text: chunk` every window is scored and the scores are aggregated per label
(`chunk_aggregation`: mean or max).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import AfterValidator, BaseModel, Field, model_validator

from nlp_tasks.batching import pad_features
from nlp_tasks.models.heads import head_scores
from nlp_tasks.tasks.base import (
    LABELS_SCORES,
    STRICT,
    ChunkScoresOptions,
    LoadedModel,
    aggregate_windows,
    one_label_slot,
)
from nlp_tasks.tasks.feature_extraction import FeatureExtraction, FeatureExtractionOptions, normalized
from nlp_tasks.tasks.registry import register
from nlp_tasks.tasks.zero_shot_classification import ranked


class Examples(BaseModel):
    """Labelled texts to fit the head on: a Parquet file or folder (any fsspec path) and its two columns."""

    model_config = STRICT

    path: str
    text_column: str = "text"
    label_column: str = "label"


class EmbeddingClassificationOptions(FeatureExtractionOptions, ChunkScoresOptions):
    candidate_labels: list[str] | None = Field(None, min_length=1)
    hypothesis_template: Annotated[str, AfterValidator(one_label_slot)] = "{}"
    examples: Examples | None = None
    head: Literal["centroid", "logistic"] = "centroid"
    """With examples: how the head is fitted on their embeddings."""

    @model_validator(mode="after")
    def _one_source_of_labels(self):
        if (self.candidate_labels is None) == (self.examples is None):
            raise ValueError("set either candidate_labels (zero-shot) or examples (labelled texts), not both")
        return self

    def embedding_options(self) -> dict[str, Any]:
        """The feature-extraction options that embed texts as this task does (for the examples), normalized."""
        return {**self.model_dump(include=set(FeatureExtractionOptions.model_fields), exclude_unset=True),
                "normalize": True}


@register
class EmbeddingClassification(FeatureExtraction):
    name = "embedding-classification"
    aliases = ("zero-shot-embedding-classification",)
    options_class = EmbeddingClassificationOptions

    def __init__(self, loaded: LoadedModel, options: EmbeddingClassificationOptions):
        super().__init__(loaded, options)
        self.head: dict[str, Any] | None = None
        if options.candidate_labels is not None:
            hypotheses = [options.hypothesis_template.format(label) for label in options.candidate_labels]
            labels = self.embed(pad_features(self.encode(hypotheses), self.pad_values())).cpu().numpy()
            self.use_fitted({"kind": "centroid", "labels": list(options.candidate_labels),
                             "weights": np.stack([normalized(label) for label in labels]),
                             "bias": np.zeros(len(labels))})

    @classmethod
    def splits(cls, options: EmbeddingClassificationOptions) -> bool:
        """Candidate labels are scored against their hypotheses' embeddings, which the weights compute at load."""
        return options.candidate_labels is None

    def use_fitted(self, head: dict[str, Any]) -> None:
        """Score with `head` (heads.fit_head's dict), its weights as arrays once rather than per row."""
        self.head = {**head, "weights": np.asarray(head["weights"], np.float32),
                     "bias": np.asarray(head["bias"], np.float32)}

    def arrow_type(self) -> pa.DataType:
        return LABELS_SCORES

    def postprocess(self, text, segments, outputs):
        if self.head is None:
            raise RuntimeError("embedding-classification with examples needs its fitted head (heads.fit_heads)")
        scores = head_scores(self.head, np.stack([normalized(window) for window in outputs]))
        return ranked(self.head["labels"], aggregate_windows(scores, self.options.chunk_aggregation))
