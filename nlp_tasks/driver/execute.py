"""Running the plan on Ray: join or start Ray, size the pools, fit the heads, and stream the write stage's part
records into the commits. Only those small records reach the driver; the rows stay on the workers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from nlp_tasks.config import JobConfig, TaskSpec
from nlp_tasks.driver.commits import Commits, JobFailed
from nlp_tasks.driver.compute import WRITE_CPUS, Cluster, PoolSettings, group_by_model, size_pools
from nlp_tasks.driver.examples import LabelledTexts, fitted_heads
from nlp_tasks.driver.inputs import InputFiles
from nlp_tasks.driver.manifest import fingerprint
from nlp_tasks.driver.phases import timed
from nlp_tasks.driver.plan import annotated_dataset, fragments_of
from nlp_tasks.driver.ray_session import start_ray, stop_embedded_ray
from nlp_tasks.engines.calibration import pool_samples, spread
from nlp_tasks.models.loading import weights_sample
from nlp_tasks.output.store import OutputStore
from nlp_tasks.secrets import redact
from nlp_tasks.workers.annotator import Annotator, ModelLoadFailed
from nlp_tasks.workers.read import Fragment
from nlp_tasks.workers.reuse import Cache, Claims, Reusable, list_cache, merge_files, merge_plan
from nlp_tasks.workers.stages import ModelStage
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


LOAD_DEATHS = 3
"""Deaths of one actor while it loads its model that end the run. Ray Data's pools restart a dead actor without end
(max_restarts=-1): an actor whose process is killed while it loads (by the out-of-memory killer) is started again,
killed again, and the run hangs. An actor killed once it had loaded is restarted as before (tests/driver/test_faults.py)."""

WATCH_EVERY_S = 1.0


class LoadWatch:
    """While the plan runs, a thread reads the job's model actors in Ray's actor table every WATCH_EVERY_S: one that
    died LOAD_DEATHS times since it last finished loading is killed for good, so that Ray Data fails the run, and
    `failure` names its pool."""

    def __init__(self, pools: list[tuple[dict[str, TaskSpec], PoolSettings]]):
        self.pools = pools
        self.failure: str | None = None
        self.loaded: dict[str, tuple[int, int]] = {}
        """By actor id: its start time (Ray sets it when the actor finishes loading) and its restarts then."""
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.watch, name="load-watch", daemon=True)

    @contextmanager
    def running(self) -> Iterator[LoadWatch]:
        self.thread.start()
        try:
            yield self
        finally:
            self.stopped.set()
            self.thread.join()

    def watch(self) -> None:
        while self.failure is None and not self.stopped.wait(WATCH_EVERY_S):
            try:
                self.check(model_actors())
            except Exception:  # Ray's table out of reach a moment: the next look tries again
                log.debug("load watch: Ray's actor table not read", exc_info=True)

    def check(self, actors: list[dict]) -> None:
        """Remember each actor that finished loading; kill the first that died LOAD_DEATHS times since."""
        for actor in actors:
            started, restarts = self.loaded.get(actor["ActorID"], (0, 0))
            if actor["State"] == "ALIVE" or actor["StartTime"] != started:
                self.loaded[actor["ActorID"]] = (actor["StartTime"], actor["NumRestarts"])
            elif actor["State"] != "DEAD" and actor["NumRestarts"] - restarts >= LOAD_DEATHS:
                self.failure = died_loading(self.pools, actor["ActorClassName"])
                kill_for_good(actor["ActorID"])
                return


def model_actors() -> list[dict]:
    """This job's actors of the pools' stages, as Ray's actor table has them (Ray Data names their class
    MapWorker(...MapBatches(<the stage's class>))). The table is Ray's developer API, the one read without the
    dashboard."""
    import ray
    from ray._private.state import actors

    job = ray.JobID.from_hex(ray.get_runtime_context().get_job_id())
    names = (f"MapBatches({Annotator.__name__})", f"MapBatches({ModelStage.__name__})")
    return [actor for actor in actors(job_id=job).values() if any(name in actor["ActorClassName"] for name in names)]


def died_loading(pools: list[tuple[dict[str, TaskSpec], PoolSettings]], class_name: str) -> str:
    """The one line of an actor of class `class_name` that kept dying while it loaded: the pools whose stage that
    class is (several only where Ray's table cannot tell them apart)."""
    split = f"MapBatches({ModelStage.__name__})" in class_name
    named = [f"task(s) {', '.join(specs)} could not load model {next(iter(specs.values())).model!r}"
             for specs, settings in pools if (settings.stages == "split") == split]
    return (f"{' or '.join(named)}: its actor died {LOAD_DEATHS} times while loading it (its process was killed: "
            "out of memory?)")


def kill_for_good(actor_id: str) -> None:
    """ray.kill(no_restart=True) by the actor's id: Ray Data holds the handle."""
    import ray

    ray._private.worker.global_worker.core_worker.kill_actor(ray.ActorID.from_hex(actor_id), True)


def stream_parts(dataset, commits: Commits, timings: dict[str, float], started: float) -> None:
    """Commit each input file as the write stage's part records cover it, until all are in or the error budget stops
    the run."""
    for records in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        timings.setdefault("first_parts_written_after", round(time.perf_counter() - started, 2))
        part_records = records.cast(PART_RECORD).to_pylist()
        commits.events.parts_written(part_records)
        commits.add(part_records)
        if not commits.missing() or commits.budget.stopped:
            break  # every file is in, or a task clearly cannot do the run: do not wait for Ray's operators


def reuse_cache(config: JobConfig, tasks: dict[str, TaskSpec], fingerprints: dict[str, str],
                store: OutputStore) -> Cache | None:
    """The run's cache of values by content key (workers/reuse.py): its tasks that are reused, keyed on their
    fingerprint and a sample of their weights' bytes, its files, and the night's claims (an actor of no CPU)."""
    import ray

    if not config.output.reuse:
        return None
    reused = [Reusable(column, fingerprint([fingerprints[column], weights_sample(spec.model, spec.revision)]),
                       spec.options.second_input())
              for column, spec in tasks.items() if spec.options.reusable()]
    if not reused:
        return None
    return Cache(store.root, reused, list_cache(store.filesystem, store.root, reused),
                 ray.remote(num_cpus=0)(Claims).remote())


def second_pass(config: JobConfig, pools: list[tuple[dict[str, TaskSpec], PoolSettings]], source: InputFiles,
                fragments: list[Fragment], store: OutputStore, commits: Commits, columns: list[str], heads: dict,
                calibration: dict[int, Any], cache: Cache, timings: dict[str, float]) -> None:
    """Annotate again the files whose rows waited for values other batches of the night computed (reuse.py): now
    that the run stored them, from the cache, with one actor per pool for the rows whose value is still missing
    (its first batch failed on it). No claims: this time each batch computes what the cache lacks."""
    if commits.budget.stopped or not (units := commits.redo_deferred()):
        return
    again = [fragment for fragment in fragments if fragment.unit in units]
    log.info("reuse: %d file(s) repeat texts other batches computed; writing them again from the cache", len(units))
    one_each = [(specs, replace(settings, min_actors=1, max_actors=1)) for specs, settings in pools]
    commits.events.planned([(fragment.unit, fragment.name, fragment.rows) for fragment in again],
                           [("+".join(specs), 1) for specs, _ in one_each])
    with timed(timings, "annotate_again", commits.events):
        merge_cache(store.filesystem, cache)  # the night's files, a few per shard: what each look-up reads
        cache = replace(cache, listing=list_cache(store.filesystem, cache.root, cache.tasks), claims=None)
        dataset = annotated_dataset(config, one_each, source, again, store.filesystem, store.staging, columns, heads,
                                    store.part_names, calibration, cache)
        stream_parts(dataset, commits, timings, time.perf_counter())


def merge_cache(filesystem: Any, cache: Cache) -> None:
    """Merge the files of each shard that holds too many (reuse.merge_plan), in Ray tasks: only names and sizes reach
    the driver."""
    import ray

    merges = [(f"{cache.root}/{task.folder}/{shard}", paths)
              for task, shards in zip(cache.tasks, list_cache(filesystem, cache.root, cache.tasks).values())
              for shard, files in shards.items() if (paths := merge_plan(files))]
    if merges:
        merge = ray.remote(num_cpus=WRITE_CPUS)(merge_files)
        try:
            ray.get([merge.remote(filesystem, folder, paths) for folder, paths in merges])
        except Exception as error:  # noqa: BLE001 - the cache only saves work: a night never fails for it
            log.warning("reuse: cache files not merged (%s); the next run merges them", redact(str(error))[:300])


def run_plan(config: JobConfig, tasks: dict[str, TaskSpec], source: InputFiles, fragments: list[Fragment],
             store: OutputStore, commits: Commits, timings: dict[str, float], columns: list[str],
             examples: dict[str, LabelledTexts], fingerprints: dict[str, str]) -> tuple[dict, str, list[PoolSettings]]:
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
                               [("+".join(specs), settings.max_actors) for specs, settings in pools])
        with timed(timings, "fit_heads", commits.events):
            heads = fitted_heads(store, pools, examples, fingerprints)
            samples = pool_samples(pools, examples, source.filesystem, fragments, config.input.text_column,
                                   redact(config.input.path), fragments_of(spread(source.files), [], store.path))
        for index, (_, what) in samples.items():
            log.info("compute: pool %s calibrates int8 on %s", "+".join(pools[index][0]), what)
            pools[index] = (pools[index][0], replace(pools[index][1], calibration=what))
        with timed(timings, "list_reuse_cache", commits.events):
            cache = reuse_cache(config, tasks, fingerprints, store)
        started, started_at = time.perf_counter(), time.time()
        commits.events.phase_started("annotate")
        calibration = {index: texts for index, (texts, _) in samples.items()}
        with LoadWatch(pools).running() as watch:
            try:
                dataset = annotated_dataset(config, pools, source, fragments, store.filesystem, store.staging,
                                            columns, heads, store.part_names, calibration, cache)
                stream_parts(dataset, commits, timings, started)
                if cache is not None:
                    second_pass(config, pools, source, fragments, store, commits, columns, heads, calibration,
                                cache, timings)
            except ray.exceptions.RayActorError as error:
                if (line := watch.failure or load_failure(error)) is None:
                    raise
                raise JobFailed(f"{line}; what was committed before stays") from None
            finally:
                if cache is not None:
                    ray.kill(cache.claims)
        timings["annotate"] = round(time.perf_counter() - started, 2)
        commits.events.phase_ended("annotate")
        with timed(timings, "finish_commits", commits.events):
            commits.finish()
        if cache is not None:
            with timed(timings, "merge_reuse_cache", commits.events):
                merge_cache(store.filesystem, cache)
        return commits.stats.summary(started_at), dataset.stats(), [settings for _, settings in pools]
    finally:
        if started_here:  # an embedded Ray: stop it now, not at exit (which waits half a second more)
            with timed(timings, "stop_ray", commits.events):
                stop_embedded_ray()
