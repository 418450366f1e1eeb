"""The step every actor runs: the tasks that share one model, over one batch of rows.

`Annotator` loads its model once (per actor) and builds one adapter per task on it. For each
Arrow batch it sets aside rows whose text is unusable, tokenizes the rest into segments, runs
the model on length-sorted micro-batches, postprocesses per row, and returns the batch with
one more typed column per task and the per-row `errors` list extended. Tasks whose forward
passes are identical (same `share_key`) run the model once. No row is ever dropped. A task
whose column the batch already holds is carried, not computed: rows read back from committed
parts for an incremental run (`read.py`) hold the columns that stay.

A row may have many segments (the windows of a long text, the hypotheses of zero-shot): they are
micro-batched together with the other rows' segments and regrouped per row, so each row's value is
assembled once, in input order. Multi-level tasks (map-reduce summarization) run level after
level, each level batched over all rows of the batch that need it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any

import pyarrow as pa

from nlp_tasks.batching import CPU_TOKEN_BUDGET, MicroBatcher, gpu_token_budget
from nlp_tasks.config import ComputeConfig, TaskSpec
from nlp_tasks.engines.choice import choose_engine
from nlp_tasks.models import node_cpu
from nlp_tasks.models.cpu_memory import keep_freed_memory
from nlp_tasks.models.loading import model_fingerprint
from nlp_tasks.tasks import get_task
from nlp_tasks.tasks.base import Features, RowError, RowFailed, TaskAdapter
from nlp_tasks.text_checks import as_text, text_problem
from nlp_tasks.workers.columns import DEFERRED_PREFIX, HELD_PREFIX, KEY_PREFIX
from nlp_tasks.workers.load import load_model
from nlp_tasks.workers.stats import with_call

log = logging.getLogger(__name__)

ERROR = pa.struct([("task", pa.string()), ("message", pa.string())])
ERRORS = pa.list_(ERROR)

Pending = list[Features] | RowError
"""One row before the model runs: its segments, or why the task cannot annotate it."""
RowResult = tuple[list[Features], list[Any]] | RowError
"""One row after the model ran: its segments and their outputs, or why the task cannot annotate it."""


class ModelLoadFailed(Exception):
    """A pool could not load its model; the message, one line, names its tasks, the model and why. The driver finds
    it in the error Ray raises for an actor that died in its constructor (driver/execute.load_failure)."""


def load_adapters(specs: dict[str, TaskSpec], compute: ComputeConfig, fitted: dict[str, dict] | None = None,
                  weights: bool = True, calibration: list[str] | None = None) -> dict[str, TaskAdapter]:
    """Load the model the tasks share once, and build each task's adapter on it (with what was `fitted` for it);
    `weights=False`: on the model's skeleton, for stages that tokenize or postprocess only (workers/load.py);
    `calibration`: texts a CPU engine's static int8 is calibrated on."""
    import torch

    first = next(iter(specs.values()))
    auto_class = get_task(first.task).auto_class
    if any(spec.pool_key != first.pool_key for spec in specs.values()):
        raise ValueError(f"tasks {sorted(specs)} do not share one model; group them with plan.group_by_model")
    engine = first.engine if first.engine != "auto" else choose_engine(next(iter(specs)), first, compute.dtype,
                                                                       compute.device)[0]
    threads = compute.inter_threads if engine == "ctranslate2" else compute.torch_threads
    try:
        loaded = load_model(auto_class, first.model, first.revision, compute.device, compute.dtype, weights, engine,
                            threads or 1, calibration)
    except Exception as error:  # noqa: BLE001 - whatever stopped the load: missing or corrupt weights, memory
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        raise ModelLoadFailed(f"task(s) {', '.join(specs)} could not load model {first.model!r}: {reason}") from None
    if loaded.device.type == "cpu":
        torch.set_num_threads(compute.torch_threads or 1)
        keep_freed_memory()
    with torch.inference_mode():
        adapters = {column: get_task(spec.task)(loaded, spec.options) for column, spec in specs.items()}
    for column, state in (fitted or {}).items():
        adapters[column].use_fitted(state)
    return adapters


def kernel_path(adapter: TaskAdapter) -> str:
    """What runs the pool's model on this node: the engine and the precision it reports, or PyTorch's path
    (models/cpu_linear.kernel_path)."""
    engine = adapter.engine
    if engine is None:
        from nlp_tasks.models.cpu_linear import kernel_path as torch_path  # torch: imported in the actor only

        return torch_path(adapter.model)
    if hasattr(engine, "precision"):
        return f"{engine.engine} {engine.precision}"
    return f"ctranslate2 {engine.model.compute_type}"


def caller() -> tuple[str, str]:
    """The actor and node running this, under Ray; else the process and host (the benchmarks on a machine without
    Ray run the actor class in-process)."""
    import os
    import socket

    try:
        import ray
    except ImportError:
        ray = None
    if ray is not None and ray.is_initialized():
        context = ray.get_runtime_context()
        return context.get_actor_id() or f"pid {os.getpid()}", context.get_node_id()
    return f"pid {os.getpid()}", socket.gethostname()


class Reused(RowError):
    """A row whose values of a forward group's columns are taken, not computed: the cache's (`values`, by column,
    reuse.look_up), those of an earlier row of the batch with the same inputs (`same_as`), or (`deferred`) those
    another batch of the night computes, which the write stage takes (reuse.settle_deferred)."""

    def __init__(self, values: dict[str, Any] | None = None, same_as: int | None = None, deferred: bool = False):
        super().__init__("reused")
        self.values, self.same_as, self.deferred = values, same_as, deferred

    def __reduce__(self):  # pickled between the split stages
        return type(self), (self.values, self.same_as, self.deferred)


class Rows:
    """A batch's rows as the tasks see them: each row's clean text, or why it has none."""

    def __init__(self, batch: pa.Table, text_column: str):
        raw = batch.column(text_column).to_pylist()
        self.batch = batch
        self.problems = [text_problem(value) for value in raw]
        self.texts = [None if problem else as_text(value) for value, problem in zip(raw, self.problems)]
        self.clean = [row for row, problem in enumerate(self.problems) if problem is None]

    def settled(self, types: dict[str, pa.DataType], repeats: bool = True) -> dict[int, Reused]:
        """The clean rows whose values of the columns `types` names need no forward pass: every one held by the cache
        in the column's type, (`repeats`) the same inputs (content keys) as an earlier row that runs, or one whose
        every column is held or deferred to another row (the held ones taken; a row with a column neither runs, so
        that no column is left without its value). None without keys (a task not reused, or a refresh). The split
        stages
        pass repeats=False: Ray Data may cut their batches anew between stages, and a repeat names its row by its
        position in the batch."""
        names, columns = self.batch.column_names, list(types)
        if not all(KEY_PREFIX + column in names for column in columns):
            return {}
        keys = list(zip(*(self.batch.column(KEY_PREFIX + column).to_pylist() for column in columns)))
        held = {column: self.batch.column(HELD_PREFIX + column).to_pylist() for column in columns
                if HELD_PREFIX + column in names and self.batch.schema.field(HELD_PREFIX + column).type == types[column]}
        deferred = {column: self.batch.column(DEFERRED_PREFIX + column).to_pylist() for column in columns
                    if DEFERRED_PREFIX + column in names}
        settled: dict[int, Reused] = {}
        first: dict[tuple, int] = {}
        for row in self.clean:
            taken = {column: values[row] for column, values in held.items() if values[row] is not None}
            waiting = [column for column, flags in deferred.items() if flags[row] and column not in taken]
            if len(taken) == len(columns):
                settled[row] = Reused(values=taken)
            elif repeats and keys[row] in first:
                settled[row] = Reused(same_as=first[keys[row]])
            elif waiting and len(taken) + len(waiting) == len(columns):
                settled[row] = Reused(values=taken, deferred=True)
            else:
                first[keys[row]] = row
        return settled

    @cached_property
    def clean_batch(self) -> pa.Table:
        """The rows with usable text (what a task's preprocess may read other columns from)."""
        return self.batch.take(pa.array(self.clean, type=pa.int64()))


def preprocess_rows(adapter: TaskAdapter, rows: Rows, encoding: dict[str, Any] | None = None,
                    settled: dict[int, Reused] | None = None) -> list[Pending]:
    """Each row's segments, or its RowError (unusable text, or a row the task refuses), or its Reused (`settled`:
    rows that need no forward pass). `encoding`: for a task that tokenizes the text alone, the tokenizer options to
    use instead of its own `text_encoding` (a superset, when tasks of several models share these tokens: stages.py)."""
    pending: list[Pending] = [RowError(problem) if problem else None for problem in rows.problems]
    for row, reused in (settled or {}).items():
        pending[row] = reused
    todo = [row for row in rows.clean if pending[row] is None]
    if todo:
        texts = [rows.texts[row] for row in todo]
        segments = (adapter.encode_segments(texts, **encoding) if encoding is not None
                    else adapter.preprocess(texts, rows.clean_batch if len(todo) == len(rows.clean)
                                            else rows.batch.take(pa.array(todo, type=pa.int64()))))
        for row, row_segments in zip(todo, segments):
            pending[row] = row_segments
    return pending


def postprocess_rows(adapter: TaskAdapter, column: str, results: list[RowResult],
                     texts: list[str | None]) -> tuple[list[Any], list[str | None]]:
    """Each row's value of `column` and error message (None where the row was annotated); a Reused row takes the
    held value, or the value and error of the row it repeats."""
    values: list[Any] = [None] * len(results)
    errors: list[str | None] = [None] * len(results)
    for row, result in enumerate(results):
        if isinstance(result, Reused):
            values[row] = None if result.values is None else result.values.get(column)
        elif isinstance(result, RowError):
            errors[row] = str(result)
        else:
            values[row] = adapter.postprocess(texts[row], *result)
    for row, result in enumerate(results):
        if isinstance(result, Reused) and result.same_as is not None:
            values[row], errors[row] = values[result.same_as], errors[result.same_as]
    return values, errors


def task_counts(values: list[Any], results: list[RowResult], tokens: int, seconds: float) -> tuple:
    """A task's figures in a call record (stats.py): rows the model annotated, tokens, seconds, rows reused (a
    deferred row's value comes from another batch: reused)."""
    reused = [isinstance(result, Reused) for result in results]
    return (sum(value is not None and not taken for value, taken in zip(values, reused)), tokens, seconds,
            sum(taken and (value is not None or result.deferred) for value, taken, result in zip(values, reused, results)))


def forward_groups(adapters: dict[str, TaskAdapter]) -> dict[str, list[str]]:
    """Tasks whose preprocess and forward are identical (same share_key) run the model once: their columns,
    by the first one's name."""
    groups: dict[Any, list[str]] = {}
    for column, adapter in adapters.items():
        key = adapter.share_key()
        groups.setdefault(column if key is None else key, []).append(column)
    return {columns[0]: columns for columns in groups.values()}


def segment_tokens(results: list[RowResult]) -> int:
    """Tokens of the segments the model ran, over the rows that have them."""
    return sum(len(segment["input_ids"]) for result in results if not isinstance(result, RowError) for segment in result[0])


def append_column(batch: pa.Table, adapter: TaskAdapter, column: str, values: list[Any]) -> pa.Table:
    field = pa.field(column, adapter.arrow_type(), metadata=adapter.column_metadata())
    return batch.append_column(field, pa.array(values, type=field.type))


class Annotator:
    """Callable that adds the columns of tasks sharing one model to Arrow batches (the Ray actor class).

    It tokenizes, runs the model and postprocesses in one process (`compute.stages: fused`); with `split`
    the job runs `ModelStage`, this class's forward passes alone, between two CPU stages (stages.py).
    """

    def __init__(self, specs: dict[str, TaskSpec], compute: ComputeConfig, text_column: str, errors_column: str,
                 record_calls: bool = False, fitted: dict[str, dict] | None = None,
                 calibration: list[str] | Any = None):
        """`record_calls`: add each call's record (stats.py) to its output, as the job's actors do; `fitted`:
        what the job fitted per task before the run (fit_heads); `calibration`: texts a CPU engine's static int8
        is calibrated on, or the Ray object holding them (engines/calibration.pool_samples)."""
        import threading

        if calibration is not None and not isinstance(calibration, list):
            import ray

            calibration = ray.get(calibration)

        started = time.perf_counter()
        self.tokenizer_lock = threading.Lock()  # fast tokenizers are not safe to share between threads
        self.text_column = text_column
        self.errors_column = errors_column
        self.adapters = load_adapters(specs, compute, fitted, calibration=calibration)
        some = next(iter(self.adapters.values()))
        self.batcher = MicroBatcher(compute.token_budget or self._device_token_budget(), some.pad_values(),
                                    some.padding_side)
        self.kernels_lock = threading.Lock()
        self.kernels_verdict: str | None = None
        self.kernels_key = self._unsettled_kernels(specs, compute)
        self.identity: dict[str, Any] | None = None
        self.loaded: dict[str, Any] | None = None
        if record_calls:
            actor, node = caller()
            self.identity = {"actor": actor, "node": node, "pool": "+".join(specs)}
            self.loaded = {"load_s": time.perf_counter() - started, "ready_at": time.time(),
                           "token_budget": self.batcher.token_budget, "cpu": node_cpu.describe(),
                           "kernels": "; ".join(filter(None, [kernel_path(some), self.kernels_verdict]))}

    def _unsettled_kernels(self, specs: dict[str, TaskSpec], compute: ComputeConfig) -> str | None:
        """Where PyTorch runs the pool's model on this CPU: the key of its kernel verdict (kernel_choice.py),
        applied now where the node holds one, else timed on the first call's rows (returns the key then)."""
        from nlp_tasks.models import kernel_choice  # torch: imported in the actor only

        model = next(iter(self.adapters.values())).model
        if next(iter(self.adapters.values())).engine is not None or not kernel_choice.can_pack(model):
            return None

        first = next(iter(specs.values()))
        window = max(adapter.max_length for adapter in self.adapters.values())
        heap = "freed memory kept" if keep_freed_memory() else "glibc's heap defaults"  # timed as the actor runs
        key = "|".join([node_cpu.describe(), model_fingerprint(first.model, first.revision), str(model.dtype),
                        type(model).__name__, f"budget {self.batcher.token_budget}", f"window {window}", heap])
        verdict = kernel_choice.cached_verdict(key)
        if verdict is None:
            return key
        kernel_choice.apply(model, verdict)
        self.kernels_verdict = verdict.describe(cached=True)
        return None

    @contextmanager
    def _settled_kernels(self, adapter: TaskAdapter, segments: list[Features]) -> Iterator[None]:
        """Around a call's forward passes. While the pool's kernels are unsettled, calls run them one at a time, and
        the first with enough segments first times the model packed and plain on them (kernel_choice.py) and keeps
        the faster: no forward pass overlaps the timing's swaps of the model's layers. One try: a timing the model
        fails on leaves it plain (the call then retries its rows one by one)."""
        from nlp_tasks.models import kernel_choice  # torch: imported in the actor only

        if self.kernels_key is None:  # set to None only once settled, under the lock
            yield
            return
        with self.kernels_lock:
            sample = segments[:kernel_choice.TRIAL_SEGMENTS]
            if self.kernels_key is not None and len(sample) >= kernel_choice.TRIAL_SEGMENTS // 2:
                try:
                    settled = kernel_choice.choose(adapter.model, self.kernels_key,
                                                   lambda: adapter.run(sample, self.batcher), len(sample))
                    if settled is not None and self.loaded is not None:
                        verdict, cached = settled
                        self.loaded["kernels"] = f"{kernel_path(adapter)}; {verdict.describe(cached)}"
                except Exception as error:  # noqa: BLE001 - the model's own failure, met again by the call
                    log.warning("kernels not timed (%s: %s); linear layers stay plain", type(error).__name__, error)
                finally:
                    self.kernels_key = None
            yield

    def _device_token_budget(self) -> int:
        """No budget set: on a GPU, what its free memory holds; on a CPU, the planner's default."""
        some = next(iter(self.adapters.values()))
        if some.device.type != "cuda":
            return CPU_TOKEN_BUDGET
        return gpu_token_budget(some.model, some.device, max(a.max_length for a in self.adapters.values()),
                                generates=any(a.auto_class.endswith(("Seq2SeqLM", "CausalLM"))
                                              for a in self.adapters.values()))

    def __call__(self, batch: pa.Table, only: list[str] | None = None) -> pa.Table:
        """The batch with the columns of this actor's tasks (of `only` these) that it does not hold yet."""
        adapters = {column: adapter for column, adapter in self.adapters.items()
                    if column not in batch.column_names and (only is None or column in only)}
        if not adapters:
            return batch
        started, phases, tokens = time.time(), Counter(), Counter()
        rows = Rows(batch, self.text_column)
        errors_by_task: dict[str, list[str | None]] = {}
        per_task: dict[str, tuple] = {}
        for lead, columns in forward_groups(adapters).items():
            model_started = time.perf_counter()
            with self.tokenizer_lock:
                pending = preprocess_rows(adapters[lead], rows, settled=rows.settled(
                    {column: adapters[column].arrow_type() for column in columns}))
            phases["tokenize"] += time.perf_counter() - model_started
            results = self.forward_rows(adapters[lead], pending, phases, tokens)
            model_seconds = time.perf_counter() - model_started
            for column in columns:
                post_started = time.perf_counter()
                values, errors_by_task[column] = postprocess_rows(adapters[column], column, results, rows.texts)
                batch = append_column(batch, adapters[column], column, values)
                post_seconds = time.perf_counter() - post_started
                phases["postprocess"] += post_seconds
                per_task[column] = task_counts(values, results, segment_tokens(results), model_seconds + post_seconds)
        batch = with_errors(batch, self.errors_column, errors_by_task)
        return self.recorded(batch, started, phases, tokens, per_task)

    def recorded(self, batch: pa.Table, started: float, phases: Counter, tokens: Counter,
                 per_task: dict[str, tuple]) -> pa.Table:
        """The batch with this call's record (stats.py), where the job asked for records."""
        if self.identity is None:
            return batch
        batch = with_call(batch, {**self.identity, **(self.loaded or {}), "started": started, "ended": time.time(),
                                  "rows": batch.num_rows, "phases": dict(phases), "tokens": dict(tokens),
                                  "tasks": per_task})
        self.loaded = None  # the load is reported with the first call only
        return batch

    def forward_rows(self, adapter: TaskAdapter, pending: list[Pending], phases: Counter,
                     tokens: Counter) -> list[RowResult]:
        """Each row's segments and their outputs (of its last level), or its RowError; `phases` sums the
        seconds of each phase, `tokens` the real and padded tokens of the forward passes."""
        results: list[RowResult] = list(pending)
        todo = [row for row, segments in enumerate(pending) if not isinstance(segments, RowError)]
        while todo:
            started = time.perf_counter()
            for row, outputs in zip(todo, self._forward_segments(adapter, [pending[row] for row in todo], tokens)):
                results[row] = outputs if isinstance(outputs, RowError) else (pending[row], outputs)
            phases["forward"] += time.perf_counter() - started
            todo = [row for row in todo if not isinstance(results[row], RowError)]
            started = time.perf_counter()
            with self.tokenizer_lock:
                follow_ups = adapter.next_level([results[row] for row in todo])
            phases["tokenize"] += time.perf_counter() - started
            for row, follow_up in zip(todo, follow_ups):
                if isinstance(follow_up, RowError):
                    results[row] = follow_up
                elif follow_up is not None:
                    pending[row] = follow_up
            todo = [row for row, follow_up in zip(todo, follow_ups) if isinstance(follow_up, list)]
        return results

    def _forward_segments(self, adapter: TaskAdapter, rows: list[list[Features]],
                       tokens: Counter) -> list[list[Any] | RowError]:
        """Each row's segment outputs. If the model fails on the micro-batches, retry row by row, so that a
        row the model cannot take fails alone (as a RowError) instead of failing its whole batch."""
        import torch

        with torch.inference_mode(), self._settled_kernels(adapter, [s for segments in rows for s in segments]):
            try:
                outputs = iter(adapter.run([segment for segments in rows for segment in segments], self.batcher, tokens))
                return [[next(outputs) for _ in segments] for segments in rows]
            except Exception as error:  # noqa: BLE001 - isolate whatever the model raised
                log.warning("model failed on a batch of %d rows (%s: %s); retrying row by row",
                            len(rows), type(error).__name__, error)
            results: list[list[Any] | RowError] = []
            for segments in rows:
                try:
                    results.append(adapter.run(segments, self.batcher, tokens))
                except Exception as error:  # noqa: BLE001
                    results.append(RowFailed(f"{type(error).__name__}: {error}"))
            return results


def with_errors(batch: pa.Table, errors_column: str, messages_by_task: dict[str, list[str | None]]) -> pa.Table:
    """Append each task's row errors to the batch's `errors` list column (created empty if absent), in one pass."""
    if errors_column in batch.column_names:
        merged = batch.column(errors_column).to_pylist()
        batch = batch.drop_columns([errors_column])
    else:
        merged = [[] for _ in range(batch.num_rows)]
    for task, messages in messages_by_task.items():
        for row, message in enumerate(messages):
            if message:
                merged[row].append({"task": task, "message": message})
    return batch.append_column(errors_column, pa.array(merged, type=ERRORS))
