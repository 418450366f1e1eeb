"""The step every actor runs: the tasks that share one model, over one batch of rows.

`Annotator` loads its model once (per actor) and builds one adapter per task on it. For each
Arrow batch it sets aside rows whose text is unusable, tokenizes the rest into units, runs
the model on length-sorted micro-batches, postprocesses per row, and returns the batch with
one more typed column per task and the per-row `errors` list extended. Tasks whose forward
passes are identical (same `share_key`) run the model once. No row is ever dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from nlp_tasks.config import ComputeConfig, TaskSpec
from nlp_tasks.tasks.base import RowError, TaskAdapter
from nlp_tasks.text_checks import as_text, text_problem

ERROR = pa.struct([("task", pa.string()), ("message", pa.string())])
ERRORS = pa.list_(ERROR)


def load_adapters(specs: dict[str, TaskSpec], compute: ComputeConfig) -> dict[str, TaskAdapter]:
    """Load the model the tasks share once, and build each task's adapter on it."""
    import torch

    from nlp_tasks.models import load_model
    from nlp_tasks.tasks import get_task

    first = next(iter(specs.values()))
    auto_class = get_task(first.task).auto_class
    if any((s.model, s.revision, get_task(s.task).auto_class) != (first.model, first.revision, auto_class)
           for s in specs.values()):
        raise ValueError(f"tasks {sorted(specs)} do not share one model; group them with plan.group_by_model")
    loaded = load_model(auto_class, first.model, first.revision, compute.device, compute.dtype)
    if loaded.device.type == "cpu":
        torch.set_num_threads(max(1, int(compute.num_cpus_per_actor)))
    with torch.inference_mode():
        return {column: get_task(spec.task)(loaded, spec.options) for column, spec in specs.items()}


@dataclass
class _ModelRun:
    """One adapter's units for a batch and the model's outputs for them."""

    prepared: list
    units: list
    owners: list[int]
    outputs: list


class Annotator:
    """Callable that adds the columns of tasks sharing one model to Arrow batches (the Ray actor class)."""

    def __init__(self, specs: dict[str, TaskSpec], compute: ComputeConfig, text_column: str, errors_column: str):
        import threading

        from nlp_tasks.batching import MicroBatcher

        self.tokenizer_lock = threading.Lock()  # fast tokenizers are not safe to share between threads
        self.text_column = text_column
        self.errors_column = errors_column
        self.adapters = load_adapters(specs, compute)
        some = next(iter(self.adapters.values()))
        self.batcher = MicroBatcher(compute.token_budget, some.pad_values(), some.padding_side)

    def __call__(self, batch: pa.Table) -> pa.Table:
        raw = batch.column(self.text_column).to_pylist()
        problems = [text_problem(value) for value in raw]
        clean = [row for row, problem in enumerate(problems) if problem is None]
        texts = [as_text(raw[row]) for row in clean]
        clean_batch = batch.take(pa.array(clean, type=pa.int64()))
        shared: dict[Any, _ModelRun] = {}
        for column, adapter in self.adapters.items():
            key = adapter.share_key()
            run = shared.get(key) if key is not None else None
            if run is None:
                run = self._run_model(adapter, texts, clean_batch)
                if key is not None:
                    shared[key] = run
            values, errors = self._postprocess(adapter, run, texts, clean, problems)
            batch = with_errors(batch.append_column(column, pa.array(values, type=adapter.arrow_type())),
                                self.errors_column, column, errors)
        return batch

    def _run_model(self, adapter: TaskAdapter, texts: list[str], clean_batch: pa.Table) -> _ModelRun:
        import torch

        with self.tokenizer_lock:
            prepared = adapter.preprocess(texts, clean_batch) if texts else []
        units, owners = [], []
        for position, row_units in enumerate(prepared):
            if not isinstance(row_units, RowError):
                units.extend(row_units)
                owners.extend([position] * len(row_units))
        with torch.inference_mode():
            outputs = self.batcher.run(units, adapter.forward)
        return _ModelRun(prepared, units, owners, outputs)

    @staticmethod
    def _postprocess(adapter, run: _ModelRun, texts, clean, problems) -> tuple[list[Any], list[str | None]]:
        """Each row's value and error message (None where the row was annotated)."""
        grouped: dict[int, tuple[list, list]] = {}
        for owner, unit, output in zip(run.owners, run.units, run.outputs):
            row_units, row_outputs = grouped.setdefault(owner, ([], []))
            row_units.append(unit)
            row_outputs.append(output)
        values: list[Any] = [None] * len(problems)
        errors = list(problems)
        for position, row_units in enumerate(run.prepared):
            if isinstance(row_units, RowError):
                errors[clean[position]] = str(row_units)
            else:
                units, outputs = grouped[position]
                values[clean[position]] = adapter.postprocess(texts[position], units, outputs)
        return values, errors


def with_errors(batch: pa.Table, errors_column: str, task: str, messages: list[str | None]) -> pa.Table:
    """Append this task's row errors to the batch's `errors` list column (created empty if absent)."""
    if errors_column in batch.column_names:
        existing = batch.column(errors_column).to_pylist()
        batch = batch.drop_columns([errors_column])
    else:
        existing = [[] for _ in range(batch.num_rows)]
    merged = [
        (row_errors or []) + ([{"task": task, "message": message}] if message else [])
        for row_errors, message in zip(existing, messages)
    ]
    return batch.append_column(errors_column, pa.array(merged, type=ERRORS))
