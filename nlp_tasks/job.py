"""The job on the driver: check, plan, commit, report. It never touches a row.

`run_job` checks the config's inputs and models, takes the output's lease, compares the input
files with what the output already holds (new, changed, unchanged, vanished, renamed) and each
committed file's task fingerprints with the config's (tasks added, changed or removed since),
runs the Ray Data plan (`plan.py`) over the files that need it, commits each file once the
workers' parts cover all its rows, and writes the run report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from typing import Any

from nlp_tasks.commit import OutputConflict, OutputStore, PartRecord, exact_cover
from nlp_tasks.compute import CPU_RESERVE, Cluster, PoolPlan, plan_pools
from nlp_tasks.config import JobConfig, TaskSpec
from nlp_tasks.engines.calibration import pool_samples
from nlp_tasks.engines.choice import choose_engine
from nlp_tasks.examples import LabelledTexts, read_examples
from nlp_tasks.io import InputError, InputFile, InputFiles, check_credentials, inspect_input, redact, register_secrets
from nlp_tasks.lease import LeaseHeld
from nlp_tasks.models import ModelUnavailable, check_available, model_fingerprint, weights_bytes
from nlp_tasks.plan import Refresh, annotated_dataset, fragments_of, group_by_model
from nlp_tasks.read import Fragment
from nlp_tasks.report import RunReport, write_report
from nlp_tasks.stats import RunStats
from nlp_tasks.write import PART_RECORD

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
    skipped_inputs: dict[str, str] = field(default_factory=dict)
    """Folders and files below input.path that readers pass over, so the job did too (io.hidden_part)."""
    rows_kept_vanished: int = 0
    """Rows the output keeps of committed input files that are gone (output.vanished_inputs: keep)."""
    changes: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds of the driver's phases: checks, Ray start, annotating (first record, all records), commits."""
    pools: list[dict] = field(default_factory=list)
    """Each actor pool's resolved compute settings."""
    report: dict | None = None
    report_path: str | None = None


def runnable_tasks(config: JobConfig) -> tuple[dict[str, TaskSpec], dict[str, str]]:
    """Tasks whose models are here (or downloadable), each with the engine that runs it (`engine: auto` resolved),
    and the reasons for those that are not."""
    ready, skipped = {}, {}
    for column, spec in config.tasks.items():
        try:
            check_available(spec.model, spec.revision)
        except ModelUnavailable as error:
            if not config.skip_unavailable_models:
                raise InputError(f"tasks.{column}: {error}") from None
            skipped[column] = str(error)
            continue
        compute = config.pool_compute({column: spec})
        engine, why_not = choose_engine(column, spec, compute.dtype, compute.device)
        if why_not:
            log.info("task %r runs on %s: %s", column, engine, why_not)
        ready[column] = spec.model_copy(update={"engine": engine})
    if not ready:
        raise InputError("no task has a model available here: " + "; ".join(f"{c}: {r}" for c, r in skipped.items()))
    return ready, skipped


class JobFailed(Exception):
    """The run could not make the output whole; the message names the file and what to do. Not a user error."""


def fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def job_manifest(config: JobConfig, tasks: dict[str, TaskSpec], examples: dict[str, LabelledTexts]) -> dict:
    """What produced an output, and fingerprints of everything that changes its values: per task (its model,
    options and labelled examples) and for the whole job."""
    entries = {}
    for column, spec in tasks.items():
        entry = {
            "task": spec.task, "model": redact(spec.model), "revision": spec.revision,
            "options": json.loads(redact(json.dumps(spec.options.model_dump(mode="json")))),
            "model_fingerprint": model_fingerprint(spec.model, spec.revision),
        }
        if column in examples:
            entry["examples"] = {"rows": len(examples[column].texts), "sha256": examples[column].sha256}
        entries[column] = {**entry, "fingerprint": fingerprint([entry, config.input.text_column])}
    columns = {"text": config.input.text_column, "id": config.input.id_column or config.output.generated_id_column,
               "errors": config.output.errors_column, "partitioning": config.input.partitioning}
    return {
        "fingerprint": fingerprint([entries, columns]), "tasks": entries, "columns": columns,
        "versions": {name: version(name) for name in ("nlp-tasks", "ray", "transformers", "torch")},
    }


def job_change(previous: dict, job: dict) -> str | None:
    """Why an output made by `previous` cannot be resumed by `job` (None if it can). Tasks may differ: each
    committed file's marker says which tasks' columns it holds, and a run computes the missing ones."""
    before, now = previous.get("columns", {}), job["columns"]
    changed = sorted(key for key in set(before) | set(now) if before.get(key) != now.get(key))
    return f"was produced with other columns (changed: {', '.join(changed)})" if changed else None


def check_reservations(pools: list[PoolPlan], cluster: Cluster) -> None:
    """The pools' smallest sizes must fit the cluster and leave room for reading and writing, or the job
    waits forever. Auto-sized pools always fit; hand-set ones may not. On a fixed-size cluster (the embedded
    local Ray) that is an error; a cluster that can autoscale may still grow, so there it is a warning.
    """
    reserved = sum(plan.min_actors * plan.num_cpus_per_actor for plan in pools)
    gpus = sum(plan.min_actors * plan.num_gpus_per_actor for plan in pools)
    stage_tasks = max((2 * plan.stage_cpus for plan in pools if plan.stages == "split"), default=0.0)
    room = cluster.cpus - cluster.nodes * CPU_RESERVE - stage_tasks
    if reserved > room + 1e-9 or gpus > cluster.gpus:
        message = (f"compute: the actor pools' min_actors reserve {reserved:g} CPUs and {gpus:g} GPUs; the cluster "
                   f"has {cluster.cpus:g} CPUs ({room:g} after reading, writing"
                   f"{' and split stages' if stage_tasks else ''}) and {cluster.gpus:g} GPUs: "
                   "lower min_actors or num_cpus_per_actor, or leave them out to size them automatically")
        if cluster.fixed_size:
            raise InputError(message)
        log.warning(message)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def check_separate(source: InputFiles, store: OutputStore) -> None:
    """Input and output must not overlap: the output would be read as input, or overwrite it."""
    if type(source.filesystem) is not type(store.filesystem):
        return
    real = os.path.realpath if "file" in str(store.filesystem.protocol) else (lambda p: p.rstrip("/"))
    output, root = real(store.root), real(source.root)
    inside_output = next((f for f in source.files if _inside(real(f.path), output)), None)
    if inside_output or _inside(output, root):
        where = f"input file {inside_output.name!r} is inside it" if inside_output else "it is inside input.path"
        raise InputError(f"output.path {store.name!r} overlaps the input ({where}); choose an output outside it")


@dataclass
class InputChanges:
    """The input files against the output's markers."""

    todo: list[InputFile]
    """New and changed files: annotated this run."""
    unchanged: int
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    """Committed files no longer in the input (renamed ones excluded)."""
    renamed: dict[str, str] = field(default_factory=dict)
    """New name -> old name, for new files with the content of a vanished one."""
    vanished_units: list[str] = field(default_factory=list)
    renamed_units: list[str] = field(default_factory=list)
    refreshes: list[Refresh] = field(default_factory=list)
    """Committed, unchanged files that lack a task's column (added or changed since), or hold a dropped one."""
    removed_kept: list[str] = field(default_factory=list)
    """Columns of tasks no longer configured that committed files keep (output.removed_tasks: keep)."""

    def as_report(self, kept_vanished: bool, tasks: list[str]) -> dict:
        """The changes, and which columns this run computed (or dropped) for which files."""
        computed: dict[str, list[str]] = {column: [file.name for file in self.todo] for column in tasks}
        dropped: dict[str, list[str]] = {}
        for refresh in self.refreshes:
            for column in refresh.recompute:
                computed[column].append(refresh.file.name)
            for column in refresh.drop:
                dropped.setdefault(column, []).append(refresh.file.name)
        return {"new": self.new, "changed": self.changed, "renamed": self.renamed,
                "vanished": self.vanished, "vanished_rows": "kept" if kept_vanished else "removed",
                "columns_computed": {column: files for column, files in computed.items() if files},
                "columns_dropped": dropped, "removed_tasks_kept": self.removed_kept}


def upgrade_markers(store: OutputStore, job: dict) -> None:
    """Markers committed before tasks had fingerprints of their own hold each task's model fingerprint instead.
    Where the output's earlier manifest shows the task configured as now, re-tag them (the markers only), so that
    the first run of this version recomputes nothing that is current."""
    previous = (store.previous_job or {}).get("tasks", {})
    if not previous or any("fingerprint" in entry for entry in previous.values()):
        return
    legacy = {column: (entry["model_fingerprint"], entry["fingerprint"]) for column, entry in job["tasks"].items()
              if previous.get(column) == {key: value for key, value in entry.items() if key != "fingerprint"}}
    for unit, marker in list(store.markers.items()):
        done = marker.get("tasks", {})
        tasks = {column: legacy[column][1] if legacy.get(column, (None,))[0] == value else value
                 for column, value in done.items()}
        if tasks != done:
            store.retag(unit, tasks)


def compare(source: InputFiles, markers: dict[str, dict], fingerprints: dict[str, str], drop_removed: bool,
            skipped: set[str], redone: set[str] = frozenset()) -> InputChanges:
    """Which input files need annotating: new ones and ones whose identity (or row count) changed since their
    commit, in full; committed ones whose task fingerprints differ from `fingerprints`, for the differing columns
    only. Files whose committed output was dropped as broken (`redone`, reported as repaired) are not called new.

    A skipped task (its model unavailable here) keeps whatever column committed files hold.
    """
    files = {file.unit: file for file in source.files}
    quarantined = set(source.quarantined)
    gone = {unit: marker for unit, marker in markers.items()
            if unit not in files and marker["source"] not in quarantined}
    gone_by_content = {(m["identity"]["size"], m["identity"]["footer_sha256"]): unit for unit, m in gone.items()}
    changes = InputChanges(todo=[], unchanged=0)
    for unit, file in files.items():
        marker = markers.get(unit)
        if marker is not None and marker["identity"] == file.identity and marker["rows"] == file.rows:
            done = marker.get("tasks", {})
            recompute = tuple(column for column, value in fingerprints.items() if done.get(column) != value)
            removed = [column for column in done if column not in fingerprints and column not in skipped]
            drop = tuple(removed) if drop_removed else ()
            changes.removed_kept += [column for column in removed if not drop_removed]
            if recompute or drop:
                changes.refreshes.append(Refresh(file, marker["parts"], recompute, drop))
            else:
                changes.unchanged += 1
            continue
        changes.todo.append(file)
        if marker is not None:
            changes.changed.append(file.name)
        elif unit in redone:
            continue
        elif (old := gone_by_content.pop(file.content_key, None)) is not None:
            changes.renamed[file.name] = gone[old]["source"]
            changes.renamed_units.append(old)
        else:
            changes.new.append(file.name)
    changes.vanished_units = [unit for unit in gone if unit not in changes.renamed_units]
    changes.vanished = [gone[unit]["source"] for unit in changes.vanished_units]
    changes.removed_kept = sorted(set(changes.removed_kept))
    return changes


COMMITTERS = 16
"""Units committed at once: on object storage a commit is a PUT and a server-side copy per part."""


class Commits:
    """Gathers the write stage's part records and commits each unit once its parts cover all its rows.

    Commits run in a few threads, so that the driver keeps taking records while storage answers.
    """

    def __init__(self, store: OutputStore, files: list[InputFile], report: RunReport,
                 task_fingerprints: dict[str, dict[str, str]]):
        """`task_fingerprints`: by unit, the fingerprints of the task columns its parts will hold."""
        self.store = store
        self.files = {file.unit: file for file in files}
        self.report = report
        self.stats = RunStats()
        self.task_fingerprints = task_fingerprints
        self.parts: dict[str, list[PartRecord]] = {}
        self.committed: set[str] = set()
        self.pool = ThreadPoolExecutor(COMMITTERS, thread_name_prefix="commit")
        self.running: list[Future] = []
        self.lock = threading.Lock()

    def add(self, records: list[dict]) -> None:
        self._raise_failed()
        for record in records:
            part = PartRecord(**record)
            if part.unit in self.committed:
                continue  # a retried write of rows already committed: its staged copy is discarded at the end
            parts = self.parts.setdefault(part.unit, [])
            parts.append(part)
            file = self.files[part.unit]
            if sum(p.rows for p in parts) >= file.rows and (cover := exact_cover(parts, file.rows)) is not None:
                self.commit(file, cover)

    def commit(self, file: InputFile, parts: list[PartRecord]) -> None:
        self.committed.add(file.unit)
        self.parts.pop(file.unit, None)
        self.running.append(self.pool.submit(self._commit, file, parts))

    def _commit(self, file: InputFile, parts: list[PartRecord]) -> None:
        self.store.commit(self.marker(file), parts)
        with self.lock:
            for part in parts:
                self.report.add_part(part.rows, json.loads(part.counts), part.writer)
                self.stats.add(json.loads(part.calls))

    def _raise_failed(self) -> None:
        for future in [f for f in self.running if f.done()]:
            self.running.remove(future)
            future.result()

    def finish(self) -> None:
        """Wait for the commits under way; the first that failed raises."""
        self.pool.shutdown(wait=True)
        self._raise_failed()

    def marker(self, file: InputFile) -> dict:
        return {"unit": file.unit, "source": file.name, "identity": file.identity, "rows": file.rows,
                "tasks": self.task_fingerprints[file.unit]}

    def missing(self) -> dict[str, int]:
        """Input files not committed, and how many of their rows never arrived."""
        return {file.name: file.rows - sum(p.rows for p in self.parts.get(unit, []))
                for unit, file in self.files.items() if unit not in self.committed}


EMBEDDED_RAY_SYSTEM_CONFIG = {"idle_worker_killing_time_threshold_ms": 600_000}
"""The embedded Ray keeps an idle worker process for the run: by default it kills one after a second idle, and on a
machine whose cores the actors keep busy a new one takes about 2 s to start, which the last write of a run waited
for (1,000 rows: the last commit 2.35 s after the last actor call in one run of two; 0.07-0.08 s kept)."""


def start_ray() -> bool:
    """Join the cluster named by RAY_ADDRESS (or the one running this job), else start an embedded local Ray.

    The embedded Ray starts its dashboard only for a person at a terminal: it costs a second or two of
    every run's start. Returns whether this call started Ray (a fixed-size local cluster).
    """
    import ray

    if ray.is_initialized():
        return False
    if "RAY_ADDRESS" in os.environ:
        ray.init()
        return False
    ray.init(address="local", include_dashboard=sys.stderr.isatty(),  # never some other cluster on this machine
             _system_config=EMBEDDED_RAY_SYSTEM_CONFIG)
    return True


def stop_embedded_ray() -> None:
    """Stop the Ray that start_ray started. `ray.shutdown` gives each of its processes a second to exit on SIGTERM,
    and the autoscaler monitor, idle on a local cluster, always takes all of it (1.0 of 1.4 s, Ray 2.60): it is
    killed first. Its handle is private to Ray; where it is not found, the shutdown is only slower."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    for monitor in getattr(node, "all_processes", {}).get("monitor", []):
        monitor.process.kill()
        monitor.process.wait()
    ray.shutdown()


@contextmanager
def timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = round(timings.get(phase, 0.0) + time.perf_counter() - started, 2)


def size_pools(config: JobConfig, tasks: dict[str, TaskSpec], cluster: Cluster,
               rows: int) -> list[tuple[dict, PoolPlan]]:
    """Each pool's tasks and settings for a run of `rows`, logged, and checked against the cluster."""
    groups = group_by_model(tasks)
    weights = [weights_bytes(spec.model, spec.revision) for spec in (next(iter(g.values())) for g in groups)]
    plans = [replace(plan, engine_note=engine_note(config, specs, plan))
             for specs, plan in zip(groups, plan_pools(config, groups, cluster, weights, rows))]
    for plan in plans:
        log.info("compute: %s", plan.describe())
    check_reservations(plans, cluster)
    # A CPU engine `auto` took gives way to transformers on a GPU pool (compute.plan_pools): the actors load the plan's.
    groups = [{column: spec.model_copy(update={"engine": plan.engine}) for column, spec in specs.items()}
              for specs, plan in zip(groups, plans)]
    return list(zip(groups, plans))


def engine_note(config: JobConfig, specs: dict[str, TaskSpec], plan: PoolPlan) -> str | None:
    """Why `engine: auto` left a CPU pool of encoder tasks on transformers (no CPU engine installed, a model type
    the exporter does not take), for its plan line."""
    if plan.engine != "transformers" or plan.device != "cpu":
        return None
    column = next(iter(specs))
    return choose_engine(column, config.tasks[column], plan.dtype, "cpu")[1] if config.tasks[column].engine == "auto" \
        else None


def fitted_heads(store: OutputStore, pools: list[tuple[dict, PoolPlan]], examples: dict[str, LabelledTexts],
                 fingerprints: dict[str, str]) -> dict[str, dict]:
    """The heads of the pools' tasks with labelled examples: the output's own copy where it holds one of the same
    task fingerprint (a nightly rerun fits nothing), else fitted now (one Ray task per pool, all at once) and kept."""
    import ray

    from nlp_tasks.annotate import fit_heads

    heads, fitting = {}, []
    for specs, plan in pools:
        todo = {}
        for column in (column for column in specs if column in examples):
            if (head := store.head(column, fingerprints[column])) is not None:
                heads[column] = head
            else:
                todo[column] = (examples[column].texts, examples[column].labels)
        if todo:
            fit = ray.remote(fit_heads).options(num_cpus=plan.num_cpus_per_actor,
                                                num_gpus=plan.num_gpus_per_actor or None, max_retries=1)
            fitting.append(fit.remote(specs, plan.compute, todo))
    try:
        for fitted in ray.get(fitting):
            for column, head in fitted.items():
                store.save_head(column, fingerprints[column], head)
                heads[column] = head
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, ValueError):
            raise InputError(str(error.cause)) from None
        raise
    return heads


def run_plan(config: JobConfig, tasks: dict[str, TaskSpec], source: InputFiles, fragments: list[Fragment],
             store: OutputStore, commits: Commits, timings: dict[str, float], columns: list[str],
             examples: dict[str, LabelledTexts], fingerprints: dict[str, str]) -> tuple[dict, str, list[PoolPlan]]:
    """Run `tasks` over `fragments` on Ray and commit their files; returns the actors' stats, Ray Data's stage
    stats, the pools."""
    import ray

    with timed(timings, "start_ray"):
        started_here = start_ray()
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = sys.stderr.isatty()
        pools = size_pools(config, tasks, Cluster.now(fixed_size=started_here),
                           sum(fragment.rows for fragment in fragments))
        with timed(timings, "fit_heads"):
            heads = fitted_heads(store, pools, examples, fingerprints)
            samples = pool_samples(pools, examples, source.filesystem, fragments, config.input.text_column)
        for index, (texts, what) in samples.items():
            log.info("compute: pool %s calibrates int8 on %s", "+".join(pools[index][0]), what)
            pools[index] = (pools[index][0], replace(pools[index][1], calibration=what))
        started, started_at = time.perf_counter(), time.time()
        dataset = annotated_dataset(config, pools, source, fragments, store.filesystem, store.staging, columns,
                                    heads, {index: texts for index, (texts, _) in samples.items()})
        for records in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            timings.setdefault("first_parts_written_after", round(time.perf_counter() - started, 2))
            commits.add(records.cast(PART_RECORD).to_pylist())
            if not commits.missing():
                break  # every file is in: do not wait for Ray Data to wind its operators down
        timings["annotate"] = round(time.perf_counter() - started, 2)
        commits.finish()
        return commits.stats.summary(started_at), dataset.stats(), [plan for _, plan in pools]
    finally:
        if started_here:  # an embedded Ray: stop it now, not at exit (which waits half a second more)
            with timed(timings, "stop_ray"):
                stop_embedded_ray()


def run_job(config: JobConfig) -> JobResult:
    """Check inputs and models, annotate the files that need it, commit each one whole, and report."""
    from fsspec.core import url_to_fs

    started, timings = time.perf_counter(), {}
    register_secrets(config.model_dump_json())
    for key, url in [("input.path", config.input.path), ("output.path", config.output.path),
                     *((f"tasks.{column}.model", spec.model) for column, spec in config.tasks.items()),
                     *((f"tasks.{column}.examples", spec.options.examples.path) for column, spec in config.tasks.items()
                       if getattr(spec.options, "examples", None) is not None)]:
        check_credentials(key, url)
    with timed(timings, "inspect_input"):
        source = inspect_input(config.input)
    for column in [*config.tasks, config.output.errors_column,
                   None if config.input.id_column else config.output.generated_id_column]:
        if column in source.schema.names:
            raise InputError(f"input column {column!r} clashes with an output column of the same name")
    for path, problem in source.quarantined.items():
        log.warning("quarantined input file %r: %s", path, problem)
    for path, why in source.skipped.items():
        log.info("input: not reading %r: %s", path, why)
    with timed(timings, "check_models"):
        tasks, skipped = runnable_tasks(config)
        examples = {column: read_examples(column, spec.options.examples) for column, spec in tasks.items()
                    if getattr(spec.options, "examples", None) is not None}
        job = job_manifest(config, tasks, examples)
    for column, reason in skipped.items():
        log.warning("skipping task %r: %s", column, reason)

    name = redact(config.output.path)
    try:
        store = OutputStore(*url_to_fs(config.output.path), name=name)
        check_separate(source, store)
        with timed(timings, "open_output"):
            store.open(job, config.output.if_exists, job_change)
    except (OutputConflict, LeaseHeld) as error:
        raise InputError(str(error)) from None
    except (OSError, ValueError, ImportError) as error:
        raise InputError(f"output.path {name!r}: cannot create or write it ({type(error).__name__}: "
                         f"{redact(str(error))})") from None
    try:
        return _annotate_and_commit(config, tasks, skipped, source, store, job, examples, started, timings)
    finally:
        store.close()


def _annotate_and_commit(config: JobConfig, tasks: dict[str, TaskSpec], skipped: dict[str, str],
                         source: InputFiles, store: OutputStore, job: dict, examples: dict[str, LabelledTexts],
                         started: float, timings: dict[str, float]) -> JobResult:
    fingerprints = {column: entry["fingerprint"] for column, entry in job["tasks"].items()}
    upgrade_markers(store, job)
    changes = compare(source, store.markers, fingerprints, config.output.removed_tasks == "drop", set(skipped),
                      set(store.redone))
    current = {file.unit for file in source.files}
    repaired = [f"{why}; " + ("its input file is annotated again" if unit in current else
                              "its input file is gone: its rows are no longer in the output")
                for unit, why in store.redone.items()]
    for note in repaired:
        log.warning("repaired: %s", note)
    keep_vanished = config.output.vanished_inputs == "keep"
    for unit in changes.renamed_units + ([] if keep_vanished else changes.vanished_units):
        store.remove(unit)
    for name in changes.vanished:
        log.warning("input file %r was committed but is gone; its rows are %s", name,
                    "kept" if keep_vanished else "removed")

    for column in changes.removed_kept:
        log.warning("task %r is no longer configured; committed files keep its column (output.removed_tasks: keep)",
                    column)

    report = RunReport(list(tasks))
    marker_tasks = {file.unit: fingerprints for file in changes.todo}
    for refresh in changes.refreshes:
        done = store.markers[refresh.file.unit].get("tasks", {})
        kept = {column: value for column, value in done.items() if column not in refresh.drop}
        marker_tasks[refresh.file.unit] = {**kept, **fingerprints}
    commits = Commits(store, changes.todo + [refresh.file for refresh in changes.refreshes], report, marker_tasks)
    for file in changes.todo:
        if file.rows == 0:
            commits.commit(file, [])
    pending = [file for file in changes.todo if file.rows]
    refreshes = [refresh for refresh in changes.refreshes if refresh.file.rows]
    for refresh in changes.refreshes:
        if not refresh.file.rows:
            commits.commit(refresh.file, [])
    needed = {column for refresh in refreshes for column in refresh.recompute} | (set(tasks) if pending else set())
    ids = [] if config.input.id_column else [config.output.generated_id_column]
    columns = ids + source.schema.names + list(tasks)
    run_stats, stage_stats, plans = {}, "nothing to do: every input file was already committed", []
    try:
        if pending or refreshes:
            run_stats, stage_stats, plans = run_plan(
                config, {column: spec for column, spec in tasks.items() if column in needed}, source,
                fragments_of(pending, refreshes, store.path), store, commits, timings, columns, examples,
                fingerprints)
    finally:
        with timed(timings, "finish_commits"):
            commits.finish()
    if missing := commits.missing():
        name, rows = next(iter(missing.items()))
        raise JobFailed(f"{len(missing)} input file(s) not committed, e.g. {name!r}: {rows} rows missing; run the "
                        "job again to annotate them")
    for file in source.files:
        if store.markers[file.unit]["rows"] != file.rows:
            raise JobFailed(f"input file {file.name!r} has {file.rows} rows but its commit in the output holds "
                            f"{store.markers[file.unit]['rows']}; run the job again: it annotates the file again")

    kept_vanished = sum(store.markers[unit]["rows"] for unit in changes.vanished_units if unit in store.markers)
    result = JobResult(store.name, source.num_rows, source.num_rows, list(tasks), skipped,
                       files_done_before=changes.unchanged, files_processed=len(changes.todo) + len(changes.refreshes),
                       quarantined=source.quarantined, skipped_inputs=source.skipped, rows_kept_vanished=kept_vanished,
                       seconds=time.perf_counter() - started,
                       changes={**changes.as_report(keep_vanished, [column for column in tasks if column in needed]),
                                "repaired": repaired + store.repaired},
                       timings=timings, pools=[plan.as_dict() for plan in plans])
    result.report = report.to_dict(job, result, run_stats, stage_stats)
    result.report_path = write_report(store.filesystem, store.root, result.report)
    return result
