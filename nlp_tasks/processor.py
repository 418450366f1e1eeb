"""`build_processor(tasks)(dataset)`: the job's annotation as one step of a Ray Data pipeline of the user's own.

`tasks` and `compute` take the shape of a job config's `tasks:` and `compute:` sections and are validated by the
same code, with the same one-line errors (config.py); the models are checked and the engines chosen when the
processor is built, before any Dataset is touched. Applied to a Dataset, it sizes the pools from the cluster as
the job does (compute.py), fits the heads of tasks with labelled examples, and returns a lazy Dataset: the
user's columns, one typed column per task and the `errors` column, computed by the job's own stages (pools.py).
What the job adds around them (reading files, part files, commits, resume, incremental runs) stays with the job:
a processor's rows go wherever the user's pipeline sends them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import ray

from nlp_tasks.config import JobConfig, TaskSpec, parse_config
from nlp_tasks.driver.checks import runnable_tasks
from nlp_tasks.driver.compute import READ_CPUS, Cluster, PoolSettings, group_by_model, size_pools
from nlp_tasks.driver.examples import LabelledTexts, fit_now, read_examples
from nlp_tasks.driver.inputs import text_type_problem
from nlp_tasks.driver.pools import Pool, Stage, annotation_stages, run_stages
from nlp_tasks.driver.ray_session import started_by_this_process
from nlp_tasks.engines.calibration import CALIBRATION_ROWS, needs_calibration
from nlp_tasks.errors import InputError
from nlp_tasks.secrets import check_credentials, register_secrets
from nlp_tasks.text_checks import as_text, text_problem
from nlp_tasks.workers.columns import CALLS_COLUMN

SOURCE = "build_processor"
"""What a config error names as its source, where the job names its YAML file."""
USER_STAGE_CPUS = 1.0
"""CPUs per node the pools' actors leave unreserved for the user's own stages: a Ray Data read, map or write task
takes one unless told otherwise, and actors holding every CPU would keep it waiting for ever. The actors are as many,
with as many threads, as the job's: only what they reserve is less."""
NO_ID_COLUMN = "<no id column>"
"""The generated id column of the job config a processor is validated as: a processor adds none, and no task
column is named so."""


def build_processor(tasks: dict[str, Any], text_column: str = "text",
                    compute: dict[str, Any] | None = None) -> Processor:
    """A callable that annotates the `text_column` of a `ray.data.Dataset` with `tasks` (output column -> task, as
    the YAML's `tasks:`) and returns the annotated Dataset, lazily; `compute` as the YAML's `compute:` (left out:
    sized from the cluster). A bad key, a missing model or unreadable examples raise a UserError naming it."""
    config = parse_config({"input": {"path": SOURCE, "text_column": text_column},
                           "output": {"path": SOURCE, "generated_id_column": NO_ID_COLUMN},
                           "tasks": tasks, "compute": compute or {}}, source=SOURCE)
    register_secrets(config.model_dump_json())
    for column, spec in config.tasks.items():
        check_credentials(f"tasks.{column}.model", spec.model)
        if (examples := getattr(spec.options, "examples", None)) is not None:
            check_credentials(f"tasks.{column}.examples", examples.path)
    runnable, _ = runnable_tasks(config)
    return Processor(config, runnable, {column: read_examples(column, spec.options.examples)
                                        for column, spec in runnable.items()
                                        if getattr(spec.options, "examples", None) is not None})


@dataclass(frozen=True)
class Processor:
    """The tasks checked, their engines chosen (checks.runnable_tasks) and their labelled examples read."""

    config: JobConfig
    tasks: dict[str, TaskSpec]
    examples: dict[str, LabelledTexts]

    def __call__(self, dataset: ray.data.Dataset) -> ray.data.Dataset:
        """`dataset` with the task columns and the errors column added, lazily. The pools are sized from the cluster,
        leaving USER_STAGE_CPUS per node unreserved; heads are fitted now (a Ray task per pool with examples); a
        static int8 pool without examples calibrates on the Dataset's first rows, read now."""
        text_column, errors_column = self.config.input.text_column, self.config.output.errors_column
        outputs = [*self.tasks, errors_column]
        schema = dataset.schema(fetch_if_missing=False)
        if schema is not None:
            problem = column_problem(schema.names, text_column, outputs)
            problem = problem or (text_type_problem(schema.base_schema, text_column)
                                  if isinstance(schema.base_schema, pa.Schema) else None)
            if problem:
                raise InputError(f"the Dataset: {problem}")
        if not ray.is_initialized():
            ray.init()
        cluster = replace(Cluster.now(fixed_size=started_by_this_process()), kept_free=USER_STAGE_CPUS)
        planned = size_pools(self.config, group_by_model(self.tasks), cluster, None)
        heads = fit_now(planned, self.examples)
        pools = [Pool(specs, settings, {column: heads[column] for column in specs if column in heads},
                      calibration_texts(specs, settings, self.examples, dataset, text_column))
                 for specs, settings in planned]
        stages = [Stage(checked_columns, dict(text_column=text_column, outputs=outputs), None, READ_CPUS),
                  *annotation_stages(pools, text_column, errors_column, record_calls=False)]
        split = [pool for pool in pools if pool.split]
        if split:  # the split pools' CPU stages record their calls, which are the job's alone
            stages.append(Stage(without_call_records, {}, None, split[-1].settings.stage_cpus))
        # blocks of a batch's rows at most, so that every actor has work until the end: Ray Data hands an actor a
        # whole block, and a reader's blocks (a file's rows, or a megabyte) would leave the others idle
        rows = min(pool.settings.batch_size for pool in pools)
        return run_stages(dataset.repartition(target_num_rows_per_block=rows), stages)


def column_problem(names: list[str], text_column: str, outputs: list[str]) -> str | None:
    """Why a Dataset with these columns cannot be annotated: no text column, or a column the processor adds (it
    would be carried as it is rather than computed, as the job carries committed columns)."""
    if text_column not in names:
        return f"no column {text_column!r} (columns: {', '.join(names)}); set text_column"
    clash = next((column for column in outputs if column in names), None)
    return f"column {clash!r} clashes with an output column of the same name" if clash else None


def checked_columns(batch: pa.Table, *, text_column: str, outputs: list[str]) -> pa.Table:
    """The batch as it is, once its columns are checked (column_problem): a Dataset's schema may be known only as
    it runs."""
    problem = column_problem(batch.column_names, text_column, outputs)
    if problem:
        raise InputError(f"the Dataset: {problem}")
    return batch


def without_call_records(batch: pa.Table) -> pa.Table:
    """The batch without the record of the calls that made it (stats.py), which only the job reads."""
    return batch.drop_columns([CALLS_COLUMN]) if CALLS_COLUMN in batch.column_names else batch


def calibration_texts(specs: dict[str, TaskSpec], settings: PoolSettings, examples: dict[str, LabelledTexts],
                      dataset: ray.data.Dataset, text_column: str) -> Any:
    """The Ray object of the texts a static int8 pool calibrates on (engines/calibration.py): its task's examples,
    else the usable texts among the Dataset's first CALIBRATION_ROWS rows; None for any other pool."""
    if not needs_calibration(settings.engine, settings.dtype):
        return None
    labelled = next((column for column in specs if column in examples), None)
    if labelled is not None:
        return ray.put(list(examples[labelled].texts))
    rows = dataset.select_columns([text_column]).limit(CALIBRATION_ROWS).take_all()
    texts = [as_text(row[text_column]) for row in rows if text_problem(row[text_column]) is None]
    if not texts:
        raise InputError(f"the Dataset: no usable text in column {text_column!r} among its first "
                         f"{CALIBRATION_ROWS} rows to calibrate int8 for {', '.join(f'tasks.{c}' for c in specs)}; "
                         "give the task examples, or set compute.dtype to float32")
    return ray.put(texts)
