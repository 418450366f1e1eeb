"""The Ray Data plan: read Parquet once -> one actor pool per task -> write Parquet.

Each task is a `map_batches` stage over a pool of `Annotator` actors that hold its model;
stages are chained, so the input is read once however many tasks there are, and Ray
streams batches through all pools at the same time.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field

from nlp_tasks.annotate import Annotator
from nlp_tasks.config import ComputeConfig, JobConfig, TaskSpec
from nlp_tasks.io import InputError, arrow_filesystem, count_output_rows, inspect_input, prepare_output
from nlp_tasks.models import ModelUnavailable, check_available
from nlp_tasks.tasks import get_task

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    output_path: str
    rows_in: int
    rows_out: int
    tasks: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def runnable_tasks(config: JobConfig) -> tuple[dict, dict[str, str]]:
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


def run_job(config: JobConfig) -> JobResult:
    """Check inputs and models, run every task over the corpus, write and verify the output."""
    import ray

    started = time.perf_counter()
    source = inspect_input(config.input)
    for column in [*config.tasks, config.output.errors_column]:
        if column in source.schema.names:
            raise InputError(f"tasks.{column}: output column {column!r} already exists in the input")
    tasks, skipped = runnable_tasks(config)
    for column, reason in skipped.items():
        log.warning("skipping task %r: %s", column, reason)
    output_fs, output_root = prepare_output(config.output)

    started_here = not ray.is_initialized() and "RAY_ADDRESS" not in os.environ
    if not ray.is_initialized():
        ray.init()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = sys.stderr.isatty()

    compute = config.compute
    groups = group_by_model(tasks)
    check_cpu_reservations(len(groups), compute, ray.cluster_resources().get("CPU", 0), fixed_size=started_here)

    dataset = ray.data.read_parquet(source.paths, filesystem=arrow_filesystem(source.filesystem))
    for specs in groups:
        dataset = dataset.map_batches(
            Annotator,
            fn_constructor_kwargs=dict(
                specs=specs, compute=compute,
                text_column=config.input.text_column, errors_column=config.output.errors_column,
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
    dataset.write_parquet(output_root, filesystem=arrow_filesystem(output_fs))

    rows_out = count_output_rows(output_fs, output_root)
    if rows_out != source.num_rows:
        raise RuntimeError(f"output has {rows_out} rows but the input has {source.num_rows}: rows were lost")
    return JobResult(config.output.path, source.num_rows, rows_out, list(tasks), skipped,
                     time.perf_counter() - started)
