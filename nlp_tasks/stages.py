"""Split stages (`compute.stages: split`, the default on GPUs): the GPU actors only run the model.

    read -> tokenize (CPU tasks) -> ModelStage (GPU actors) -> postprocess (CPU tasks) -> ... -> write

The tokenize stage, a task pool over the cluster's CPUs, turns each row into its units for every
split pool (tasks that tokenize the text alone on one tokenizer, in any pool, share one column of
units, tokenized once with the union of their tokenizer options). A `ModelStage` actor plans
length-sorted micro-batches, copies them to its GPU and runs the forward passes (the later levels
of a multi-level task included), and hands back each row's raw outputs. The postprocess stage
turns them into the typed columns and row errors, exactly as the fused `Annotator` does: both
run the same functions (annotate.py) on the same units.

Between stages, units and outputs travel as internal columns of pickled per-row values
(`__units.<key>`, `__results.<run>`), dropped once no later stage needs them. The CPU stages load
each model's tokenizer and its skeleton (no weights) once per worker process.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import time
from collections import Counter
from typing import Any

import pyarrow as pa

from nlp_tasks.annotate import (
    Annotator,
    Rows,
    append_column,
    caller,
    load_adapters,
    postprocess_rows,
    preprocess_rows,
    runs_of,
    unit_tokens,
    with_errors,
)
from nlp_tasks.config import ComputeConfig, TaskSpec
from nlp_tasks.stats import with_call
from nlp_tasks.tasks.base import TaskAdapter

UNITS_PREFIX = "__units."
RESULTS_PREFIX = "__results."

SplitPool = tuple[dict[str, TaskSpec], ComputeConfig]
"""A split pool as its CPU stages take it: its tasks and compute."""

_skeletons: dict[str, dict[str, TaskAdapter]] = {}


def skeleton_adapters(specs: dict[str, TaskSpec], compute: ComputeConfig,
                      fitted: dict[str, dict] | None = None) -> dict[str, TaskAdapter]:
    """The pool's adapters on its tokenizer and model skeleton, loaded once per worker process."""
    key = json.dumps([{c: s.model_dump(mode="json") for c, s in specs.items()}, compute.model_dump(mode="json"),
                      fitted or {}], sort_keys=True, default=str)
    if key not in _skeletons:
        _skeletons[key] = load_adapters(specs, compute, fitted, weights=False)
    return _skeletons[key]


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


def units_column(adapter: TaskAdapter, run: str) -> str:
    """The column holding a run's units: one per tokenizer and window for tasks that tokenize the text alone."""
    key = adapter.tokens_key()
    if key is None:
        return UNITS_PREFIX + run
    if not hasattr(adapter.tokenizer, "_nlp_tasks_identity"):
        adapter.tokenizer._nlp_tasks_identity = tokenizer_identity(adapter.tokenizer)
    digest = hashlib.sha256(f"{adapter.tokenizer._nlp_tasks_identity}\n{key!r}".encode()).hexdigest()[:16]
    return UNITS_PREFIX + digest


def units_columns(pool: SplitPool) -> set[str]:
    """The units columns a split pool's model stage reads."""
    adapters = skeleton_adapters(*pool)
    return {units_column(adapters[run], run) for run in runs_of(adapters)}


def pickled(values: list[Any]) -> pa.Array:
    return pa.array([pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL) for value in values], type=pa.binary())


def unpickled(column: pa.ChunkedArray) -> list[Any]:
    return [pickle.loads(value) for value in column.to_pylist()]


def pending_runs(adapters: dict[str, TaskAdapter], batch: pa.Table) -> dict[str, list[str]]:
    """The runs (annotate.runs_of) of the tasks whose column the batch does not hold yet."""
    return runs_of({column: adapter for column, adapter in adapters.items() if column not in batch.column_names})


def stage_call(stage: str, pool: str, started: float, rows: int, phase: str,
               tasks: dict[str, tuple[int, int, float]]) -> dict:
    """A CPU stage's call record (stats.py), its process counted as an actor of the pool `pool`."""
    process, node = caller()
    return {"actor": f"{process} {stage}", "node": node, "pool": pool, "started": started, "ended": time.time(),
            "rows": rows, "phases": {phase: time.time() - started}, "tokens": {}, "tasks": tasks}


def tokenize(batch: pa.Table, *, pools: list[SplitPool], text_column: str) -> pa.Table:
    """The CPU stage before the split pools: each run's units, as a column, tokenized once per key."""
    started = time.time()
    rows = Rows(batch, text_column)
    wanted: dict[str, tuple[TaskAdapter, dict[str, bool] | None, list[str]]] = {}
    for specs, compute in pools:
        adapters = skeleton_adapters(specs, compute)
        for run, columns in pending_runs(adapters, batch).items():
            adapter = adapters[run]
            name = units_column(adapter, run)
            _, encoding, charged = wanted.get(name, (adapter, None, []))
            if adapter.text_encoding is not None:
                encoding = {**(encoding or {}), **adapter.text_encoding}
            wanted[name] = (adapter, encoding, charged + columns)
    seconds: dict[str, float] = {}
    for name, (adapter, encoding, columns) in wanted.items():
        run_started = time.perf_counter()
        batch = batch.append_column(name, pickled(preprocess_rows(adapter, rows, encoding)))
        for column in columns:
            seconds[column] = time.perf_counter() - run_started
    if not wanted:
        return batch
    return with_call(batch, stage_call("tokenize", "tokenize", started, batch.num_rows, "tokenize",
                                       {column: (0, 0, spent) for column, spent in seconds.items()}))


class ModelStage(Annotator):
    """The GPU actor of a split pool: each run's units in, its raw outputs out; no tokenizing, no postprocessing
    (but for the follow-up levels of multi-level tasks, which need the model's outputs)."""

    def __call__(self, batch: pa.Table, only: list[str] | None = None) -> pa.Table:
        started, phases, tokens = time.time(), Counter(), Counter()
        per_task: dict[str, tuple[int, int, float]] = {}
        for run, columns in pending_runs(self.adapters, batch).items():
            run_started = time.perf_counter()
            pending = unpickled(batch.column(units_column(self.adapters[run], run)))
            results = self.forward_rows(self.adapters[run], pending, phases, tokens)
            batch = batch.append_column(RESULTS_PREFIX + run, pickled(results))
            for column in columns:
                per_task[column] = (0, unit_tokens(results), time.perf_counter() - run_started)
        return self.recorded(batch, started, phases, tokens, per_task) if per_task else batch


def postprocess(batch: pa.Table, *, specs: dict[str, TaskSpec], compute: ComputeConfig, fitted: dict[str, dict],
                text_column: str, errors_column: str, later: list[SplitPool]) -> pa.Table:
    """The CPU stage after a split pool: its tasks' typed columns and row errors from the raw outputs. Drops the
    pool's results, and the units no `later` split pool reads."""
    started = time.time()
    adapters = skeleton_adapters(specs, compute, fitted)
    runs = {run: columns for run, columns in pending_runs(adapters, batch).items()
            if RESULTS_PREFIX + run in batch.column_names}
    rows = Rows(batch, text_column)
    errors_by_task: dict[str, list[str | None]] = {}
    per_task: dict[str, tuple[int, int, float]] = {}
    for run, columns in runs.items():
        results = unpickled(batch.column(RESULTS_PREFIX + run))
        for column in columns:
            column_started = time.perf_counter()
            values, errors_by_task[column] = postprocess_rows(adapters[column], results, rows.texts)
            batch = append_column(batch, adapters[column], column, values)
            per_task[column] = (sum(value is not None for value in values), 0, time.perf_counter() - column_started)
    still_read = {name for pool in later for name in units_columns(pool)}
    batch = batch.drop_columns([name for name in batch.column_names
                                if name.startswith(RESULTS_PREFIX) and name[len(RESULTS_PREFIX):] in runs
                                or name.startswith(UNITS_PREFIX) and name not in still_read])
    if not runs:
        return batch
    batch = with_errors(batch, errors_column, errors_by_task)
    return with_call(batch, stage_call("postprocess", f"{'+'.join(specs)} postprocess", started, batch.num_rows,
                                       "postprocess", per_task))
