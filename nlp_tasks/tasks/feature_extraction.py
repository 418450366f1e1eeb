"""feature-extraction: one pooled sentence embedding per text (mean over real tokens by default).

With `long_text: chunk` each window is pooled on its own and the text's embedding is the mean of
the window embeddings weighted by each window's token count (then normalised if `normalize`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from nlp_tasks.tasks.base import ENCODER_ENGINES, TaskAdapter, TaskOptions
from nlp_tasks.tasks.registry import register


class FeatureExtractionOptions(TaskOptions):
    supports_chunk: ClassVar[bool] = True
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = False


def pool(hidden: Any, attention_mask: Any, pooling: str) -> Any:
    """Pool token states into one float32 vector per sequence, ignoring padding."""
    if pooling == "cls":
        return hidden[:, 0].float()
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return ((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).float()


def normalized(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


@register
class FeatureExtraction(TaskAdapter):
    name = "feature-extraction"
    aliases = ("embedding",)
    options_class = FeatureExtractionOptions
    auto_class = "AutoModel"
    engines = ENCODER_ENGINES
    text_encoding: ClassVar[dict[str, bool] | None] = {}

    def arrow_type(self) -> pa.DataType:
        """A list of hidden_size floats: a variable list, because pyarrow before 26 cannot read back a null in a
        fixed-size list from Parquet (apache/arrow#35692), and rows with unusable text hold null."""
        return pa.list_(pa.float32())

    def share_key(self):
        return ("pooled-embedding", self.max_length, self.options.pooling, self.options.long_text, self.stride)

    def embed(self, inputs: dict[str, Any]) -> Any:
        hidden = self.infer(inputs).last_hidden_state
        return pool(hidden, inputs["attention_mask"].to(hidden.device), self.options.pooling)

    def forward(self, inputs):
        return list(self.embed(inputs).cpu().numpy())

    def postprocess(self, text, segments, outputs):
        weights = [len(segment["input_ids"]) for segment in segments]
        vector = np.average(np.stack(outputs), axis=0, weights=weights).astype(np.float32)
        return normalized(vector) if self.options.normalize else vector
