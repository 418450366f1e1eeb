"""Split stages (`compute.stages: split`, the default on GPUs): the GPU actors only run the model.

    read -> tokenize (CPU tasks) -> ModelStage (GPU actors) -> postprocess (CPU tasks) -> ... -> write

The tokenize stage, a task pool over the cluster's CPUs, turns each row into its segments for every
split pool (tasks that tokenize the text alone on one tokenizer, in any pool, share one column of
segments, tokenized once with the union of their tokenizer options). A `ModelStage` actor plans
length-sorted micro-batches, copies them to its GPU and runs the forward passes (the later levels
of a multi-level task included), and hands back each row's raw outputs. The postprocess stage
turns them into the typed columns and row errors, exactly as the fused `Annotator` does: both
run the same functions (annotator.py) on the same segments.

Between stages, segments and outputs travel as internal columns: the segments whole (pickled) for
postprocessing, their lengths and model inputs alone as Arrow lists of int32 for the GPU actor
(whose Python time per batch is what keeps a GPU waiting), the raw outputs (pickled); each is
dropped once no later stage reads it. The CPU stages load each model's tokenizer and its skeleton (no weights)
once per worker process.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import time
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa

from nlp_tasks.batching import MODEL_INPUT_KEYS
from nlp_tasks.config import ComputeConfig, TaskSpec
from nlp_tasks.tasks.base import RowError, TaskAdapter
from nlp_tasks.workers.annotator import (
    Annotator,
    Pending,
    RowResult,
    Rows,
    append_column,
    caller,
    forward_groups,
    load_adapters,
    postprocess_rows,
    preprocess_rows,
    segment_tokens,
    task_counts,
    with_errors,
)
from nlp_tasks.workers.columns import INPUTS_PREFIX, RESULTS_PREFIX, SEGMENTS_PREFIX
from nlp_tasks.workers.stats import with_call

SplitPool = tuple[dict[str, TaskSpec], ComputeConfig]
"""A split pool as its CPU stages take it: its tasks and compute."""

class Skeletons:
    """Each pool's adapters on its tokenizer and model skeleton, loaded once per worker process; the seconds spent
    loading are reported with the next call record (as an actor reports its model load)."""

    def __init__(self):
        self.loaded: dict[str, dict[str, TaskAdapter]] = {}
        self.unreported_load_s = 0.0

    def get(self, specs: dict[str, TaskSpec], compute: ComputeConfig,
            fitted: dict[str, dict] | None = None) -> dict[str, TaskAdapter]:
        key = json.dumps([{c: s.model_dump(mode="json") for c, s in specs.items()}, compute.model_dump(mode="json"),
                          fitted or {}], sort_keys=True, default=str)
        if key not in self.loaded:
            started = time.perf_counter()
            self.loaded[key] = load_adapters(specs, compute, fitted, weights=False)
            self.unreported_load_s += time.perf_counter() - started
        return self.loaded[key]

    def take_load_s(self) -> float:
        load_s, self.unreported_load_s = self.unreported_load_s, 0.0
        return load_s


SKELETONS = Skeletons()


def tokenizer_identity(tokenizer: Any) -> str:
    """What a tokenizer turns text into depends on: its class and, for a fast one, its serialized state but for
    the padding and truncation it was saved with (each call sets its own)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        for per_call in ("padding", "truncation"):
            state.pop(per_call, None)
    else:
        state = tokenizer.get_vocab()
    state = json.dumps(state, sort_keys=True)
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{tokenizer.truncation_side}\n{state}".encode()).hexdigest()


def segments_key(adapter: TaskAdapter, lead: str) -> str:
    """What names a forward group's segments: one key per tokenizer and window for tasks that tokenize the text alone."""
    key = adapter.tokens_key()
    if key is None:
        return lead
    if not hasattr(adapter.tokenizer, "_nlp_tasks_identity"):
        adapter.tokenizer._nlp_tasks_identity = tokenizer_identity(adapter.tokenizer)
    return hashlib.sha256(f"{adapter.tokenizer._nlp_tasks_identity}\n{key!r}".encode()).hexdigest()[:16]


def segments_keys(pool: SplitPool) -> set[str]:
    """The segments a split pool's model stage reads."""
    adapters = SKELETONS.get(*pool)
    return {segments_key(adapters[lead], lead) for lead in forward_groups(adapters)}


INPUTS_TYPE = pa.struct([("lengths", pa.list_(pa.int32())), *((key, pa.list_(pa.int32())) for key in MODEL_INPUT_KEYS)])


def inputs_array(pending: list[Pending]) -> pa.Array:
    """Each row's segments as the model stage reads them: their lengths and, per model input, the segments' tokens end to
    end (null for a RowError row). Arrow lists of int32 reach the actor as arrays with no per-token Python
    work: unpickling the same segments as lists took the actor's Python 73 ms per batch of 512 BBC rows."""
    rows: list[dict | None] = []
    for segments in pending:
        if isinstance(segments, RowError):
            rows.append(None)
            continue
        row = {"lengths": [len(segment["input_ids"]) for segment in segments]}
        for key in (key for key in MODEL_INPUT_KEYS if segments and key in segments[0]):
            row[key] = np.concatenate([np.asarray(segment[key], dtype=np.int32) for segment in segments])
        rows.append(row)
    return pa.array(rows, type=INPUTS_TYPE)


def pending_from_inputs(column: pa.ChunkedArray) -> list[Pending]:
    """inputs_array's rows back as segments of int32 arrays (views, no copies); a null row is a RowError whose
    message the postprocess stage takes from the segments whole."""
    inputs = column.combine_chunks()
    lengths = inputs.field("lengths").to_pylist()
    tokens = {}
    for key in MODEL_INPUT_KEYS:
        field = inputs.field(key)
        if field.null_count < len(field):
            tokens[key] = (field.values.to_numpy(zero_copy_only=False), field.offsets.to_numpy())
    pending: list[Pending] = []
    for row, row_lengths in enumerate(lengths):
        if row_lengths is None:
            pending.append(RowError("no segments"))
            continue
        ends = np.cumsum(row_lengths).tolist()
        pending.append([{key: values[offsets[row] + end - length:offsets[row] + end]
                         for key, (values, offsets) in tokens.items()}
                        for end, length in zip(ends, row_lengths)])
    return pending


def pickled(values: list[Any]) -> pa.Array:
    return pa.array([pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL) for value in values], type=pa.binary())


def unpickled(column: pa.ChunkedArray) -> list[Any]:
    return [pickle.loads(value) for value in column.to_pylist()]


def pending_groups(adapters: dict[str, TaskAdapter], batch: pa.Table) -> dict[str, list[str]]:
    """The forward groups (annotator.forward_groups) of the tasks whose column the batch does not hold yet."""
    return forward_groups({column: adapter for column, adapter in adapters.items() if column not in batch.column_names})


def stage_call(stage: str, pool: str, started: float, rows: int, tasks: dict[str, tuple]) -> dict:
    """A CPU stage's call record (stats.py), its process counted as an actor of the pool `pool`; the stage's name is
    its phase, and a skeleton loaded during the call is its load."""
    process, node = caller()
    load_s, ended = SKELETONS.take_load_s(), time.time()
    loaded = {"load_s": load_s, "ready_at": started + load_s, "token_budget": None} if load_s else {}
    return {"actor": f"{process} {stage}", "node": node, "pool": pool, **loaded, "started": started + load_s,
            "ended": ended, "rows": rows, "phases": {stage: ended - started - load_s}, "tokens": {}, "tasks": tasks}


def tokenize(batch: pa.Table, *, pools: list[SplitPool], text_column: str) -> pa.Table:
    """The CPU stage before the split pools: each forward group's segments, as a column, tokenized once per key."""
    started = time.time()
    rows = Rows(batch, text_column)
    wanted: dict[str, tuple[TaskAdapter, dict[str, bool] | None, dict[str, pa.DataType]]] = {}
    for specs, compute in pools:
        adapters = SKELETONS.get(specs, compute)
        for lead, columns in pending_groups(adapters, batch).items():
            adapter = adapters[lead]
            key = segments_key(adapter, lead)
            _, encoding, charged = wanted.get(key, (adapter, None, {}))
            if adapter.text_encoding is not None:
                encoding = {**(encoding or {}), **adapter.text_encoding}
            wanted[key] = (adapter, encoding, {**charged, **{column: adapters[column].arrow_type() for column in columns}})
    seconds: dict[str, float] = {}
    for key, (adapter, encoding, columns) in wanted.items():
        run_started = time.perf_counter()
        pending = preprocess_rows(adapter, rows, encoding, rows.settled(columns, repeats=False))
        batch = batch.append_column(SEGMENTS_PREFIX + key, pickled(pending))
        batch = batch.append_column(INPUTS_PREFIX + key, inputs_array(pending))
        for column in columns:
            seconds[column] = time.perf_counter() - run_started
    if not wanted:
        return batch
    return with_call(batch, stage_call("tokenize", "tokenize", started, batch.num_rows,
                                       {column: (0, 0, spent, 0) for column, spent in seconds.items()}))


class ModelStage(Annotator):
    """The GPU actor of a split pool: each forward group's model inputs in, its raw outputs out; no tokenizing and no
    postprocessing, but for the follow-up levels of multi-level tasks (which read whole segments and hand them on)."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        started, phases, tokens = time.time(), Counter(), Counter()
        per_task: dict[str, tuple] = {}
        for lead, columns in pending_groups(self.adapters, batch).items():
            run_started = time.perf_counter()
            adapter = self.adapters[lead]
            key = segments_key(adapter, lead)
            pending = (unpickled(batch.column(SEGMENTS_PREFIX + key)) if adapter.multi_level
                       else pending_from_inputs(batch.column(INPUTS_PREFIX + key)))
            results = self.forward_rows(adapter, pending, phases, tokens)
            handed_on = results if adapter.multi_level else [
                result if isinstance(result, RowError) else (None, result[1]) for result in results]
            batch = batch.append_column(RESULTS_PREFIX + lead, pickled(handed_on))
            for column in columns:
                per_task[column] = (0, segment_tokens(results), time.perf_counter() - run_started, 0)
        return self.recorded(batch, started, phases, tokens, per_task) if per_task else batch


def with_segments(segments: Pending, handed_on: RowResult) -> RowResult:
    """A row's result as postprocess takes it: the model stage's outputs with the segments the tokenize stage made
    (or the new ones a multi-level task handed on); a row the tokenize stage refused keeps its own RowError (the
    model stage saw only a placeholder)."""
    if isinstance(segments, RowError) or isinstance(handed_on, RowError):
        return segments if isinstance(segments, RowError) else handed_on
    new_segments, outputs = handed_on
    return (segments if new_segments is None else new_segments, outputs)


def postprocess(batch: pa.Table, *, specs: dict[str, TaskSpec], compute: ComputeConfig, fitted: dict[str, dict],
                text_column: str, errors_column: str, later: list[SplitPool]) -> pa.Table:
    """The CPU stage after a split pool: its tasks' typed columns and row errors from the raw outputs. Drops the
    pool's results, and the segments no `later` split pool reads."""
    started = time.time()
    adapters = SKELETONS.get(specs, compute, fitted)
    groups = {lead: columns for lead, columns in pending_groups(adapters, batch).items()
              if RESULTS_PREFIX + lead in batch.column_names}
    rows = Rows(batch, text_column)
    errors_by_task: dict[str, list[str | None]] = {}
    per_task: dict[str, tuple] = {}
    for lead, columns in groups.items():
        segments = unpickled(batch.column(SEGMENTS_PREFIX + segments_key(adapters[lead], lead)))
        results = list(map(with_segments, segments, unpickled(batch.column(RESULTS_PREFIX + lead))))
        for column in columns:
            column_started = time.perf_counter()
            values, errors_by_task[column] = postprocess_rows(adapters[column], column, results, rows.texts)
            batch = append_column(batch, adapters[column], column, values)
            per_task[column] = task_counts(values, results, 0, time.perf_counter() - column_started)
    still_read = {key for pool in later for key in segments_keys(pool)}
    batch = batch.drop_columns([name for name in batch.column_names
                                if name.startswith(RESULTS_PREFIX) and name[len(RESULTS_PREFIX):] in groups
                                or name.startswith((SEGMENTS_PREFIX, INPUTS_PREFIX))
                                and name.split(".", 1)[1] not in still_read])
    if not groups:
        return batch
    batch = with_errors(batch, errors_column, errors_by_task)
    return with_call(batch, stage_call("postprocess", f"{'+'.join(specs)} postprocess", started, batch.num_rows,
                                       per_task))
