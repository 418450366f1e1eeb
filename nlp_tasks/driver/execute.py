"""Running the plan on Ray: join or start Ray, size the pools, fit the heads, and stream the write stage's part
records into the commits. Only those small records reach the driver; the rows stay on the workers."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from nlp_tasks.config import JobConfig, TaskSpec
from nlp_tasks.driver.commits import Commits, JobFailed
from nlp_tasks.driver.compute import Cluster, PoolPlan, size_pools
from nlp_tasks.driver.examples import LabelledTexts, fitted_heads
from nlp_tasks.driver.inputs import InputFiles
from nlp_tasks.driver.phases import timed
from nlp_tasks.driver.plan import annotated_dataset, fragments_of, group_by_model
from nlp_tasks.driver.ray_session import start_ray, stop_embedded_ray
from nlp_tasks.engines.calibration import pool_samples, spread
from nlp_tasks.output.store import OutputStore
from nlp_tasks.secrets import redact
from nlp_tasks.workers.annotate import ModelLoadFailed
from nlp_tasks.workers.read import Fragment
from nlp_tasks.workers.write import PART_RECORD

log = logging.getLogger(__name__)


def load_failure(error: Exception) -> str | None:
    """The one line of an actor that died loading its model (workers/annotate.ModelLoadFailed, found in the
    traceback Ray passes on as text), or of one that died in its constructor otherwise; None for any other error."""
    marker = f"{ModelLoadFailed.__name__}: "
    lines = str(error).splitlines()
    found = [line.split(marker, 1)[1] for line in lines if marker in line]
    if found:
        return found[-1]
    if getattr(error, "actor_init_failed", False):
        return f"an actor could not start: {lines[-1].strip() if lines else type(error).__name__}"
    return None


def run_plan(config: JobConfig, tasks: dict[str, TaskSpec], source: InputFiles, fragments: list[Fragment],
             store: OutputStore, commits: Commits, timings: dict[str, float], columns: list[str],
             examples: dict[str, LabelledTexts], fingerprints: dict[str, str]) -> tuple[dict, str, list[PoolPlan]]:
    """Run `tasks` over `fragments` on Ray and commit their files; returns the actors' stats, Ray Data's stage
    stats, the pools."""
    import ray

    with timed(timings, "start_ray", commits.events):
        started_here = start_ray()
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the CLI draws its own (progress.py), from the records below
        pools = size_pools(config, group_by_model(tasks), Cluster.now(fixed_size=started_here),
                           sum(fragment.rows for fragment in fragments))
        commits.events.planned([(fragment.unit, fragment.name, fragment.rows) for fragment in fragments],
                               [("+".join(specs), plan.max_actors) for specs, plan in pools])
        with timed(timings, "fit_heads", commits.events):
            heads = fitted_heads(store, pools, examples, fingerprints)
            samples = pool_samples(pools, examples, source.filesystem, fragments, config.input.text_column,
                                   redact(config.input.path), fragments_of(spread(source.files), [], store.path))
        for index, (_, what) in samples.items():
            log.info("compute: pool %s calibrates int8 on %s", "+".join(pools[index][0]), what)
            pools[index] = (pools[index][0], replace(pools[index][1], calibration=what))
        started, started_at = time.perf_counter(), time.time()
        commits.events.phase_started("annotate")
        dataset = annotated_dataset(config, pools, source, fragments, store.filesystem, store.staging, columns,
                                    heads, store.part_names, {index: texts for index, (texts, _) in samples.items()})
        try:
            for records in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
                timings.setdefault("first_parts_written_after", round(time.perf_counter() - started, 2))
                part_records = records.cast(PART_RECORD).to_pylist()
                commits.events.parts_written(part_records)
                commits.add(part_records)
                if not commits.missing() or commits.budget.stopped:
                    break  # every file is in, or a task clearly cannot do the run: do not wait for Ray's operators
        except ray.exceptions.RayActorError as error:
            if (line := load_failure(error)) is None:
                raise
            raise JobFailed(f"{line}; what was committed before stays") from None
        timings["annotate"] = round(time.perf_counter() - started, 2)
        commits.events.phase_ended("annotate")
        commits.finish()
        return commits.stats.summary(started_at), dataset.stats(), [plan for _, plan in pools]
    finally:
        if started_here:  # an embedded Ray: stop it now, not at exit (which waits half a second more)
            with timed(timings, "stop_ray", commits.events):
                stop_embedded_ray()
