"""The Ray Data plan: read the pending input files once -> batch_size blocks -> one actor pool per model
-> commit per file.

Tasks on the same checkpoint share a `map_batches` stage over a pool of `Annotator` actors;
stages are chained, so the input is read once however many tasks there are, and Ray streams
batches through all pools at the same time. Annotated batches come back to the driver, which
commits them per input file (see `commit.py`): a rerun only processes files not yet committed.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import version
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field

from nlp_tasks.annotate import Annotator
from nlp_tasks.commit import SOURCE_COLUMN, OutputConflict, OutputStore, Unit, UnitWriter, unit_id
from nlp_tasks.config import ComputeConfig, JobConfig, TaskSpec
from nlp_tasks.io import InputError, InputFiles, arrow_filesystem, inspect_input
from nlp_tasks.models import ModelUnavailable, check_available, model_fingerprint
from nlp_tasks.report import STATS_ACTOR_PREFIX, RunReport, TaskStats, write_report
from nlp_tasks.tasks import get_task

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    output_path: str
    rows_in: int
    rows_out: int
    tasks: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    files_done_before: int = 0
    files_processed: int = 0
    seconds: float = 0.0
    quarantined: dict[str, str] = field(default_factory=dict)
    report: dict | None = None
    report_path: str | None = None


def runnable_tasks(config: JobConfig) -> tuple[dict[str, TaskSpec], dict[str, str]]:
    """Tasks whose models are here (or downloadable), and the reasons for those that are not."""
    ready, skipped = {}, {}
    for column, spec in config.tasks.items():
        try:
            check_available(spec.model, spec.revision)
        except ModelUnavailable as error:
            if not config.skip_unavailable_models:
                raise InputError(f"tasks.{column}: {error}") from None
            skipped[column] = str(error)
            continue
        ready[column] = spec
    if not ready:
        raise InputError("no task has a model available here: " + "; ".join(f"{c}: {r}" for c, r in skipped.items()))
    return ready, skipped


def job_manifest(config: JobConfig, tasks: dict[str, TaskSpec]) -> dict:
    """What produced an output, and a fingerprint of everything that changes its values."""
    entries = {
        column: {
            "task": spec.task, "model": spec.model, "revision": spec.revision,
            "options": spec.options.model_dump(mode="json"),
            "model_fingerprint": model_fingerprint(spec.model, spec.revision),
        }
        for column, spec in tasks.items()
    }
    columns = {"text": config.input.text_column, "id": config.input.id_column or config.output.generated_id_column,
               "errors": config.output.errors_column}
    fingerprint = hashlib.sha256(json.dumps([entries, columns], sort_keys=True).encode()).hexdigest()[:16]
    return {
        "fingerprint": fingerprint, "tasks": entries, "columns": columns,
        "versions": {name: version(name) for name in ("nlp-tasks", "ray", "transformers", "torch")},
    }


def group_by_model(tasks: dict[str, TaskSpec]) -> list[dict[str, TaskSpec]]:
    """Tasks that load the same checkpoint the same way share one actor pool and one model copy."""
    groups: dict[tuple, dict[str, TaskSpec]] = {}
    for column, spec in tasks.items():
        key = (spec.model, spec.revision, get_task(spec.task).auto_class)
        groups.setdefault(key, {})[column] = spec
    return list(groups.values())


def check_cpu_reservations(stages: int, compute: ComputeConfig, cluster_cpus: float, fixed_size: bool) -> None:
    """Actor pools must leave a CPU for reading and writing, or the job stalls waiting for one.

    On a fixed-size cluster (the embedded local Ray) that is an error; a cluster that can
    autoscale may still grow, so there it is a warning.
    """
    reserved = stages * compute.min_actors * compute.num_cpus_per_actor
    if reserved > cluster_cpus - 1:
        message = (
            f"compute: {stages} actor pool(s) x min_actors {compute.min_actors} x num_cpus_per_actor "
            f"{compute.num_cpus_per_actor} reserve {reserved:g} of the cluster's {cluster_cpus:g} CPUs; "
            "leave at least one for reading and writing"
        )
        if fixed_size:
            raise InputError(message)
        log.warning(message)


def pending_units(source: InputFiles, store: OutputStore) -> tuple[list[Unit], int]:
    """Input files not yet committed (empty ones are committed on the spot), and how many were done before."""
    committed = store.committed()
    pending = []
    for path, rows in source.rows.items():
        if unit_id(path) in committed:
            continue
        if rows == 0:
            store.publish_empty(Unit(path, 0))
        else:
            pending.append(Unit(path, rows))
    return pending, sum(1 for path in source.rows if unit_id(path) in committed)


def annotated_dataset(config: JobConfig, tasks: dict[str, TaskSpec], units: list[Unit], source: InputFiles,
                      stats_actor: str | None = None):
    """The lazy Ray Data plan over the pending files; rows carry their source file in SOURCE_COLUMN."""
    import ray

    compute = config.compute
    dataset = ray.data.read_parquet([u.source for u in units], filesystem=arrow_filesystem(source.filesystem),
                                    include_paths=True)
    # Ray reads small files together into one big block, and one block goes to one actor: cut the
    # stream into blocks of batch_size rows, so that every actor of the pool gets work.
    dataset = dataset.repartition(target_num_rows_per_block=compute.batch_size)
    for specs in group_by_model(tasks):
        dataset = dataset.map_batches(
            Annotator,
            fn_constructor_kwargs=dict(
                specs=specs, compute=compute,
                text_column=config.input.text_column, errors_column=config.output.errors_column,
                stats_actor=stats_actor,
            ),
            batch_format="pyarrow",
            batch_size=compute.batch_size,
            num_gpus=compute.num_gpus_per_actor or None,
            num_cpus=compute.num_cpus_per_actor,
            compute=ray.data.ActorPoolStrategy(
                min_size=compute.min_actors, max_size=compute.max_actors,
                max_concurrent_calls_per_actor=compute.actor_concurrency,
                enable_true_multi_threading=compute.actor_concurrency > 1,
            ),
        )
    return dataset


def run_job(config: JobConfig) -> JobResult:
    """Check inputs and models, annotate the files not yet committed, and commit each one whole."""
    import ray
    from fsspec.core import url_to_fs
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    started = time.perf_counter()
    source = inspect_input(config.input)
    generated_id = None if config.input.id_column else config.output.generated_id_column
    for column in [*config.tasks, config.output.errors_column, SOURCE_COLUMN, generated_id]:
        if column in source.schema.names:
            raise InputError(f"input column {column!r} clashes with an output column of the same name")
    for path, problem in source.quarantined.items():
        log.warning("quarantined input file %r: %s", path, problem)
    tasks, skipped = runnable_tasks(config)
    for column, reason in skipped.items():
        log.warning("skipping task %r: %s", column, reason)

    store = OutputStore(*url_to_fs(config.output.path))
    job = job_manifest(config, tasks)
    try:
        store.start(job, config.output.if_exists)
    except OutputConflict as error:
        raise InputError(str(error)) from None
    units, done_before = pending_units(source, store)

    report = RunReport(list(tasks), config.output.errors_column)
    task_stats, stage_stats = {}, "nothing to do: every input file was already committed"
    if units:
        started_here = not ray.is_initialized() and "RAY_ADDRESS" not in os.environ
        if not ray.is_initialized():  # embedded: a new local Ray, never some other cluster on this machine
            ray.init(address=None if "RAY_ADDRESS" in os.environ else "local")
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = sys.stderr.isatty()
        context.execution_options.preserve_order = True  # files complete, and commit, one after another
        check_cpu_reservations(len(group_by_model(tasks)), config.compute, ray.cluster_resources().get("CPU", 0),
                               fixed_size=started_here)
        stats_name = STATS_ACTOR_PREFIX + uuid.uuid4().hex[:8]
        stats = ray.remote(num_cpus=0)(TaskStats).options(
            name=stats_name,  # on the driver's node: losing a worker node must not lose the counts
            scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False),
        ).remote()
        writer = UnitWriter(store, units, generated_id)
        dataset = annotated_dataset(config, tasks, units, source, stats_name)
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            writer.write(batch)
            report.observe(batch)
        writer.finish()
        task_stats, stage_stats = ray.get(stats.summary.remote()), dataset.stats()
        ray.kill(stats)

    rows_out = sum(marker["rows"] for marker in store.committed().values())
    if rows_out != source.num_rows:
        raise RuntimeError(f"output has {rows_out} rows but the input has {source.num_rows}")
    result = JobResult(config.output.path, source.num_rows, rows_out, list(tasks), skipped,
                       files_done_before=done_before, files_processed=len(units), quarantined=source.quarantined,
                       seconds=time.perf_counter() - started)
    result.report = report.to_dict(job, result, task_stats, stage_stats)
    result.report_path = write_report(store.filesystem, store.root, result.report)
    return result
