"""The shape every task adapter has: preprocess -> forward -> postprocess, each batched.

An adapter turns each clean text into one or more token sequences ("units": one for most
tasks, one per candidate label for zero-shot), runs the model on length-sorted micro-batches
of units, and folds each row's unit outputs into one typed Arrow value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from nlp_tasks.batching import Features


class TaskOptions(BaseModel):
    """Options of one task; unknown keys are errors so that typos are caught at load time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_length: int | None = None
    """Truncate inputs to this many tokens (default: the model's window)."""


class RowError(Exception):
    """A row this task cannot annotate; its value becomes null and the message goes to `errors`."""


@dataclass
class LoadedModel:
    """A tokenizer and model loaded once per actor, on their device."""

    tokenizer: Any
    model: Any
    device: Any


class TaskAdapter:
    """Base class of task adapters; subclasses set the class variables and the three steps."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    options_class: ClassVar[type[TaskOptions]] = TaskOptions
    auto_class: ClassVar[str]
    padding_side: ClassVar[str] = "right"

    def __init__(self, loaded: LoadedModel, options: TaskOptions):
        self.tokenizer = loaded.tokenizer
        self.model = loaded.model
        self.device = loaded.device
        self.options = options

    @property
    def max_length(self) -> int:
        """The token window inputs are truncated to: the option, else the model's own limit."""
        limits = [self.options.max_length, self.tokenizer.model_max_length,
                  getattr(self.model.config, "max_position_embeddings", None)]
        return min(limit for limit in limits if isinstance(limit, int) and 0 < limit < 1_000_000)

    def pad_values(self) -> dict[str, int]:
        return {"input_ids": self.tokenizer.pad_token_id or 0}

    def arrow_type(self) -> pa.DataType:
        raise NotImplementedError

    def share_key(self) -> Any:
        """Tasks on one model with equal non-None keys have identical preprocess and forward: run them once."""
        return None

    def preprocess(self, texts: list[str], batch: pa.Table) -> list[list[Features] | RowError]:
        """Tokenize each text into its units, or a RowError for a row the task cannot take."""
        raise NotImplementedError

    def forward(self, inputs: dict[str, Any]) -> list[Any]:
        """Run the model on one padded micro-batch; return one output per unit (CPU, unpadded)."""
        raise NotImplementedError

    def postprocess(self, text: str, units: list[Features], outputs: list[Any]) -> Any:
        """Fold one row's units and their outputs into the Python value of its Arrow column."""
        raise NotImplementedError

    # Helpers shared by the adapters.

    def encode(self, texts: list[str], **kwargs: Any) -> list[Features]:
        """Tokenize without padding, truncated to the window; one features dict per text."""
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length, **kwargs)
        return [{k: encoded[k][i] for k in encoded.keys()} for i in range(len(texts))]

    def model_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Move the padded tensors onto the model's device."""
        return {k: v.to(self.device) for k, v in inputs.items()}


def single_units(features: list[Features]) -> list[list[Features]]:
    """One unit per row: the common case."""
    return [[f] for f in features]


def unpadded_lengths(inputs: dict[str, Any]) -> list[int]:
    return inputs["attention_mask"].sum(dim=1).tolist()


LABEL_SCORE = pa.struct([("label", pa.string()), ("score", pa.float32())])
LABELS_SCORES = pa.struct([("labels", pa.list_(pa.string())), ("scores", pa.list_(pa.float32()))])
