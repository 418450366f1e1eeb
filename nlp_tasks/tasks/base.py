"""The shape every task adapter has: preprocess -> forward -> postprocess, each batched.

An adapter turns each clean text into one or more token sequences ("segments": one for most
tasks, one per candidate label for zero-shot, one per window of a long text with
`long_text: chunk`), runs the model on length-sorted micro-batches of segments, and folds each
row's segment outputs into one typed Arrow value.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from nlp_tasks.batching import Features, MicroBatcher

ENCODER_ENGINES = ("transformers", "openvino", "onnxruntime")
"""The engines of the encoder tasks: transformers, or a CPU engine running the exported model (engines/encoders.py)."""


STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
"""How every part of the config is validated: unknown keys, values of another type (`true` or `"32"` for a number)
and infinite or NaN numbers are errors naming the key, never coerced."""


class TaskOptions(BaseModel):
    """Options of one task; unknown keys are errors so that typos are caught at load time."""

    model_config = STRICT

    supports_chunk: ClassVar[bool] = False
    """Whether the task can cover a long text with windows (`long_text: chunk`)."""

    max_length: PositiveInt | None = Field(None, le=1_000_000)
    """Truncate inputs to this many tokens (default: the model's window); with chunk, the size of each window.
    Above the model's window (its max_position_embeddings or tokenizer limit) it is clamped to the window."""
    long_text: Literal["truncate", "chunk"] = "truncate"
    """A text longer than the window is truncated, or (chunk) covered by overlapping windows."""
    stride: int | None = Field(None, ge=0)
    """With chunk: tokens shared by consecutive windows (default: 1/8 of the window)."""

    def reusable(self) -> bool:
        """Whether a row's value is a function of its inputs alone, so that a value computed once serves every row
        with the same inputs (workers/reuse.py)."""
        return True

    def second_input(self) -> str | None:
        """The input column the task reads besides the text, if any."""
        return None

    @field_validator("long_text")
    @classmethod
    def _chunk_supported(cls, mode: str) -> str:
        if mode == "chunk" and not cls.supports_chunk:
            raise ValueError("this task only truncates long texts (long_text: truncate); 'chunk' is not supported")
        return mode

    @model_validator(mode="after")
    def _stride_inside_window(self):
        if self.stride is not None and self.long_text != "chunk":
            raise ValueError(f"stride {self.stride} moves the windows of long_text: chunk, and this task truncates "
                             "(long_text: truncate); set long_text: chunk to cover long texts with windows, as the "
                             "pipeline's stride does, or leave stride out")
        if self.stride is not None and self.max_length is not None and self.stride >= self.max_length:
            raise ValueError(f"stride {self.stride} must be smaller than the window (max_length {self.max_length})")
        return self


class ChunkScoresOptions(TaskOptions):
    """Options of classification tasks, which score every window of a chunked text and aggregate the scores."""

    supports_chunk: ClassVar[bool] = True
    chunk_aggregation: Literal["mean", "max"] = "mean"
    """With chunk: a label's score is the mean of its window scores, or the highest one."""


def one_label_slot(template: str) -> str:
    """A hypothesis template must hold exactly one `{}` (the label) and no other replacement field."""
    import string

    try:
        fields = [(field, spec, conversion) for _, field, spec, conversion in string.Formatter().parse(template)
                  if field is not None]
    except ValueError as error:
        raise ValueError(f"{template!r} is not a valid template ({error}); write literal braces as {{{{ }}}}") from None
    if fields != [("", "", None)]:  # a format spec or conversion ({:999999999}, {!r}) is refused: it can allocate GBs
        found = ", ".join("{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                          for field, spec, conversion in fields) or "none"
        raise ValueError(f"{template!r} must hold exactly one {{}} for the label, with no format spec or conversion, "
                         f"and no other field (found: {found})")
    return template


class RowError(Exception):
    """A row this task cannot annotate; its value becomes null and the message goes to `errors`. Raised as such, the
    row's own data is why (its text or question null, empty or not text; a fill-mask text without one mask)."""


FAILED = "model failed on this row: "
"""How the message of a RowFailed starts: what tells a failure from the row's own data in the counts of `errors`
the driver gets (driver/budget.py)."""


class RowFailed(RowError):
    """A row the task took and could not annotate (the model raised on it, a map-reduce did not converge): what the
    task's error budget counts (`max_error_share`)."""

    def __init__(self, reason: str):
        super().__init__(f"{FAILED}{reason}"[:500])

    def __reduce__(self):  # pickled between the split stages: rebuilt from its reason, not its whole message
        return type(self), (str(self).removeprefix(FAILED),)


@dataclass
class LoadedModel:
    """A tokenizer and model loaded once per actor, on their device."""

    tokenizer: Any
    model: Any
    """The transformers model; with another engine, its skeleton (config and modules, no weights)."""
    device: Any
    engine: Any = None
    """The engine that runs the model where it is not PyTorch (engines/ctranslate2_models.CTranslate2Model, or
    engines/encoders.EncoderEngine for the encoder tasks)."""


class TaskAdapter:
    """Base class of task adapters; subclasses set the class variables and the three steps."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    options_class: ClassVar[type[TaskOptions]] = TaskOptions
    auto_class: ClassVar[str]
    engines: ClassVar[tuple[str, ...]] = ("transformers",)
    """What can run the task's model; `engine: auto` picks one by the checkpoint (engines/choice.py)."""
    padding_side: ClassVar[str] = "right"
    text_encoding: ClassVar[dict[str, bool] | None] = None
    """For tasks whose segments are the text alone, tokenized: the tokenizer's options (their preprocess is then
    `encode_segments` with them). Such tasks on one tokenizer share their tokens (see tokens_key)."""

    def __init__(self, loaded: LoadedModel, options: TaskOptions):
        self.tokenizer = loaded.tokenizer
        self.model = loaded.model
        self.device = loaded.device
        self.engine = loaded.engine
        self.options = options
        if options.long_text == "chunk":
            room = self.max_length - self.reserved_tokens() - self.tokenizer.num_special_tokens_to_add()
            if self.stride >= room:
                raise ValueError(f"stride {self.stride} must be smaller than the {room} text tokens a window holds")

    @property
    def max_length(self) -> int:
        """The token window inputs are truncated to: the option, else the model's own limit."""
        limits = [self.options.max_length, self.tokenizer.model_max_length,
                  getattr(self.model.config, "max_position_embeddings", None)]
        return min(limit for limit in limits if isinstance(limit, int) and 0 < limit < 1_000_000)

    @property
    def stride(self) -> int:
        """Tokens shared by consecutive windows with `long_text: chunk`."""
        return self.options.stride if self.options.stride is not None else self.max_length // 8

    def reserved_tokens(self) -> int:
        """Tokens of each window that hold something other than the text (a prefix, a hypothesis): see text_windows."""
        return 0

    def pad_values(self) -> dict[str, int]:
        return {"input_ids": self.tokenizer.pad_token_id or 0}

    def arrow_type(self) -> pa.DataType:
        raise NotImplementedError

    def column_metadata(self) -> dict[str, str] | None:
        """Arrow field metadata of the column: how long texts were chunked (values then aggregate windows)."""
        if self.options.long_text == "truncate":
            return None
        metadata = {"long_text": "chunk", "window": str(self.max_length), "stride": str(self.stride)}
        if isinstance(self.options, ChunkScoresOptions):
            metadata["chunk_aggregation"] = self.options.chunk_aggregation
        return metadata

    def share_key(self) -> Any:
        """Tasks on one model with equal non-None keys have identical preprocess and forward: run them once."""
        return None

    @classmethod
    def splits(cls, options: TaskOptions) -> bool:
        """Whether the task can run in split stages: its preprocess and postprocess need no weights, only the
        tokenizer and the model's config (stages.py)."""
        return True

    @property
    def multi_level(self) -> bool:
        """Whether next_level may give rows segments of another level (map-reduce summarization)."""
        return type(self).next_level is not TaskAdapter.next_level

    def tokens_key(self) -> tuple | None:
        """What makes two tasks' segments equal, for tasks that tokenize the text alone (`text_encoding`): their
        window; the tokenizer itself is compared by the caller. None: the segments are this task's own."""
        if self.text_encoding is None:
            return None
        return self.max_length, self.options.long_text, self.stride if self.options.long_text == "chunk" else None

    def preprocess(self, texts: list[str], batch: pa.Table) -> list[list[Features] | RowError]:
        """Tokenize each text into its segments, or a RowError for a row the task cannot take."""
        if self.text_encoding is None:
            raise NotImplementedError
        return self.encode_segments(texts, **self.text_encoding)

    def forward(self, inputs: dict[str, Any]) -> list[Any]:
        """Run the model on one padded micro-batch; return one output per segment (CPU, unpadded)."""
        raise NotImplementedError

    def infer(self, inputs: dict[str, Any]) -> Any:
        """The model's outputs (`logits`, `last_hidden_state`, ...) for one padded micro-batch: PyTorch's on the
        model's device, or a CPU engine's, as tensors of the same names."""
        if self.engine is not None:
            return self.engine(inputs)
        return self.model(**self.model_inputs(inputs))

    def run(self, segments: list[Features], batcher: MicroBatcher, tokens: Counter | None = None) -> list[Any]:
        """Each segment's output, in order: `forward` over the batcher's length-sorted micro-batches (an engine with
        batching of its own overrides this)."""
        return batcher.run(segments, self.forward, tokens)

    def postprocess(self, text: str, segments: list[Features], outputs: list[Any]) -> Any:
        """Fold one row's segments and their outputs into the Python value of its Arrow column."""
        raise NotImplementedError

    def use_fitted(self, state: dict[str, Any]) -> None:
        """Take what the job fitted for this task once per run (a head on labelled examples: heads.fit_heads)."""
        raise TypeError(f"task {self.name!r} fits nothing")

    def next_level(self, rows: list[tuple[list[Features], list[Any]]]) -> list[list[Features] | RowError | None]:
        """For multi-level tasks (map-reduce summarization): given each row's segments and outputs, the segments of
        the row's next level, or None where the row is done. The actor runs each level over all rows at once."""
        return [None] * len(rows)

    # Helpers shared by the adapters.

    def encode(self, texts: list[str], **kwargs: Any) -> list[Features]:
        """Tokenize without padding, truncated to the window; one features dict per text."""
        if not texts:  # a tokenizer given no text at all raises (IndexError)
            return []
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length, **kwargs)
        return [{k: encoded[k][i] for k in encoded} for i in range(len(texts))]

    def encode_segments(self, texts: list[str], **kwargs: Any) -> list[list[Features]]:
        """Each text's segments: one truncated to the window, or with chunk the overlapping windows covering it all.

        Chunk uses the fast tokenizer's overflow with stride (as the token-classification pipeline does), for
        all texts in one call; every window keeps the tokenizer's special tokens and offsets into the text.
        """
        if self.options.long_text == "truncate":
            return single_segments(self.encode(texts, **kwargs))
        return self._windows(texts, self.max_length, **kwargs)

    def text_windows(self, texts: list[str]) -> list[list[str]]:
        """Each text as one piece (truncate), or (chunk) the substrings that its overlapping windows cover.

        For tasks that tokenize each window together with something else (a hypothesis, a prefix): the windows
        leave `reserved_tokens()` free, and each substring is tokenized again as the task's input.
        """
        if self.options.long_text == "truncate":
            return [[text] for text in texts]
        windows = self._windows(texts, self.max_length - self.reserved_tokens(),
                                return_offsets_mapping=True, return_special_tokens_mask=True)
        return [[text[slice(*text_span(window, len(text)))] for window in row] for text, row in zip(texts, windows)]

    def _windows(self, texts: list[str], width: int, **kwargs: Any) -> list[list[Features]]:
        if not texts:
            return []
        encoded = self.tokenizer(texts, truncation=True, max_length=width, stride=self.stride,
                                 return_overflowing_tokens=True, **kwargs)
        owners = encoded.pop("overflow_to_sample_mapping")
        rows: list[list[Features]] = [[] for _ in texts]
        for index, owner in enumerate(owners):
            rows[owner].append({k: encoded[k][index] for k in encoded})
        return rows

    def model_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Move the padded tensors onto the model's device; to a GPU from pinned memory without blocking, so that
        the copy overlaps what the GPU is still running (the forward pass on the same stream waits for it)."""
        if self.device.type == "cuda":
            return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in inputs.items()}
        return {k: v.to(self.device) for k, v in inputs.items()}


def single_segments(features: list[Features]) -> list[list[Features]]:
    """One segment per row: the common case."""
    return [[f] for f in features]


def split_rows(items: list, sizes: list[int]) -> list[list]:
    """Cut a flat list into consecutive rows of the given sizes."""
    rows, start = [], 0
    for size in sizes:
        rows.append(items[start:start + size])
        start += size
    return rows


def text_span(window: Features, text_length: int) -> tuple[int, int]:
    """Character span of a window's text tokens (the whole text if it has none)."""
    offsets = [o for o, special in zip(window["offset_mapping"], window["special_tokens_mask"]) if not special]
    return (offsets[0][0], offsets[-1][1]) if offsets else (0, text_length)


def aggregate_windows(scores: Any, how: str) -> Any:
    """Fold per-window scores (a numpy array, windows first) into the text's: their mean or their max."""
    return scores.max(axis=0) if how == "max" else scores.mean(axis=0)


LABEL_SCORE = pa.struct([("label", pa.string()), ("score", pa.float32())])
LABELS_SCORES = pa.struct([("labels", pa.list_(pa.string())), ("scores", pa.list_(pa.float32()))])
