"""The job on the driver, step by step as docs/output.md tells it. It never touches a row.

    check        the config's URLs, the input files and columns, the models          (checks.py)
    qualify      engines other than transformers, on the input's rows                 (qualification.py)
    open         the output: its lease, its committed files verified, if_exists       (checks.py, output/)
    compare      the input files with the output's markers: what to annotate          (changes.py)
    run          the Ray Data plan over those files, committing each file whole       (execute.py, commits.py)
    verify       every input file committed, with all its rows, each task within its
                 error budget (else the report is written, then exit 1)               (commits.py, budget.py)
    report       `__reports/run-*.json` and `.html`                                   (report.py)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from nlp_tasks.config import JobConfig
from nlp_tasks.driver.budget import budget_failure
from nlp_tasks.driver.changes import InputChanges, apply_changes, compare
from nlp_tasks.driver.checks import CheckedJob, check_job, open_output
from nlp_tasks.driver.commits import Commits, JobFailed
from nlp_tasks.driver.phases import timed
from nlp_tasks.driver.progress import RunEvents
from nlp_tasks.driver.qualification import qualify_engines
from nlp_tasks.driver.report import RunReport, write_report
from nlp_tasks.errors import UserError
from nlp_tasks.output.store import OutputStore


@dataclass
class JobResult:
    output_path: str
    rows_in: int
    rows_out: int
    """Rows the committed parts of the input's files hold (files a task's error budget kept out are not there)."""
    tasks: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    files_done_before: int = 0
    files_processed: int = 0
    seconds: float = 0.0
    quarantined: dict[str, str] = field(default_factory=dict)
    skipped_inputs: dict[str, str] = field(default_factory=dict)
    """Folders and files below input.path that readers pass over, so the job did too (inputs.hidden_part)."""
    rows_kept_vanished: int = 0
    """Rows the output keeps of committed input files that are gone (output.vanished_inputs: keep)."""
    changes: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds of the driver's phases: checks, Ray start, annotating (first record, all records), commits."""
    pools: list[dict] = field(default_factory=list)
    """Each actor pool's resolved compute settings."""
    error_budget: dict = field(default_factory=dict)
    """Each task's rows taken and failed against its max_error_share, and the budget blown if one was (budget.py)."""
    report: dict | None = None
    report_path: str | None = None


def run_job(config: JobConfig, progress: Any = None) -> JobResult:
    """Check inputs and models, annotate the files that need it, commit each one whole, and report.

    `progress`: a display (progress.py) told of the run's phases, parts written and commits as they happen."""
    started, timings, events = time.perf_counter(), {}, RunEvents(progress)
    checked = check_job(config, timings, events)
    qualify_engines(config, checked, timings, events)
    store = open_output(config, checked, timings, events)
    refused = False
    try:
        keep_vanished = config.output.vanished_inputs == "keep" and checked.source.delta_version is None
        changes = compare(checked.source, store.markers, checked.fingerprints, config.output.removed_tasks == "drop",
                          set(checked.skipped), set(store.redone))
        repaired = apply_changes(store, changes, checked.source, keep_vanished)
        report = RunReport(list(checked.tasks))
        commits = Commits(store, changes, checked.fingerprints, report, events,
                          {column: spec.max_error_share for column, spec in checked.tasks.items()})
        commits.commit_empty()
        try:
            needed, run_stats, stage_stats, pools = run_pending(config, checked, changes, store, commits, timings)
        finally:
            with timed(timings, "finish_commits", events):
                commits.finish()
        budget = commits.budget.as_report(len(commits.missing()))
        with timed(timings, "close_output", events):
            store.finish()
        if (failure := budget_failure(budget)) is None:
            commits.verify(checked.source)
        rows_out = sum(part["rows"] for file in checked.source.files if file.unit in store.markers
                       for part in store.markers[file.unit]["parts"])  # what the committed parts hold
        result = JobResult(
            store.name, checked.source.num_rows, rows_out, list(checked.tasks), checked.skipped,
            files_done_before=changes.unchanged, files_processed=len(changes.todo) + len(changes.refreshes),
            quarantined=checked.source.quarantined, skipped_inputs=checked.source.skipped,
            rows_kept_vanished=sum(store.markers[unit]["rows"] for unit in changes.vanished_units
                                   if unit in store.markers),
            seconds=time.perf_counter() - started,
            changes={**changes.as_report(keep_vanished, [column for column in checked.tasks if column in needed]),
                     "repaired": repaired + store.repaired},
            timings=timings, pools=[pool.as_dict() for pool in pools], error_budget=budget)
        result.report = report.to_dict(checked.job, result, run_stats, stage_stats, events.as_report())
        result.report_path = write_report(store.filesystem, store.root, result.report)
        if failure is not None:
            raise JobFailed(failure, result)
        return result
    except UserError:
        refused = True
        raise
    finally:
        store.close()
        if refused:
            store.discard_if_new()


def run_pending(config: JobConfig, checked: CheckedJob, changes: InputChanges, store: OutputStore, commits: Commits,
                timings: dict[str, float]) -> tuple[set[str], dict, str, list]:
    """Run the plan over the files with rows to annotate: new and changed files with every task, refreshed files
    with the columns they lack. Returns the task columns computed, the actors' stats, Ray Data's and the pools."""
    pending = [file for file in changes.todo if file.rows]
    refreshes = [refresh for refresh in changes.refreshes if refresh.file.rows]
    needed = {column for refresh in refreshes for column in refresh.recompute} | (set(checked.tasks) if pending
                                                                                   else set())
    if not (pending or refreshes):
        return needed, {}, "nothing to do: every input file was already committed", []
    # Ray and Ray Data: imported on nights with work for them
    from nlp_tasks.driver.execute import run_plan
    from nlp_tasks.driver.plan import fragments_of

    ids = [] if config.input.id_column else [config.output.generated_id_column]
    columns = ids + checked.source.schema.names + list(checked.tasks)
    return needed, *run_plan(config, {column: spec for column, spec in checked.tasks.items() if column in needed},
                             checked.source, fragments_of(pending, refreshes, store.path), store, commits, timings,
                             columns, checked.examples, checked.fingerprints)
