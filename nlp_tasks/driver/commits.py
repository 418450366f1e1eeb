"""Committing input files as the workers' parts arrive: each file once its parts cover all its rows, in a few
threads so that the driver keeps taking records while storage answers, unless a task blew its error budget in the file
(budget.py); and the check that every file made it."""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from nlp_tasks.driver.budget import ErrorBudget
from nlp_tasks.driver.changes import InputChanges
from nlp_tasks.driver.inputs import InputFile, InputFiles
from nlp_tasks.driver.progress import RunEvents
from nlp_tasks.driver.report import RunReport
from nlp_tasks.output.layout import PartRecord, exact_cover
from nlp_tasks.output.store import OutputStore
from nlp_tasks.workers.stats import RunStats

COMMITTERS = 64
"""Input files committed at once: on object storage a commit is a PUT and a server-side copy per part; on a Delta
table, the files ready while a version is written are the next version (output/delta.py), up to this many."""


class JobFailed(Exception):
    """The run could not make the output whole; the message names the file and what to do. Not a user error.
    `result`: the run's result (job.JobResult), where it got as far as its report."""

    def __init__(self, message: str, result: object = None):
        super().__init__(message)
        self.result = result


class Commits:
    """Gathers the write stage's part records and commits each input file once its parts cover all its rows."""

    def __init__(self, store: OutputStore, changes: InputChanges, fingerprints: dict[str, str], report: RunReport,
                 events: RunEvents, budgets: dict[str, float]):
        """`fingerprints`: the configured tasks' fingerprints, which every file this run commits holds columns of
        (a refreshed file keeps its other columns' fingerprints, less those it drops); `budgets`: each task's
        max_error_share."""
        self.store = store
        self.report = report
        self.events = events
        self.stats = RunStats()
        self.budget = ErrorBudget(budgets)
        self.computed = {file.unit: tuple(fingerprints) for file in changes.todo}
        self.computed.update({refresh.file.unit: refresh.recompute for refresh in changes.refreshes})
        """The task columns this run computes for each file: what its budgets count."""
        self.task_fingerprints = {file.unit: fingerprints for file in changes.todo}
        for refresh in changes.refreshes:
            done = store.markers[refresh.file.unit].get("tasks", {})
            kept = {column: value for column, value in done.items() if column not in refresh.drop}
            self.task_fingerprints[refresh.file.unit] = {**kept, **fingerprints}
        self.files = {file.unit: file for file in changes.todo + [refresh.file for refresh in changes.refreshes]}
        self.parts: dict[str, list[PartRecord]] = {}
        self.deferred: set[str] = set()
        """Files with a part the write stage left unwritten: rows waiting for values other batches computed."""
        self.again: set[str] = set()
        """Files the run annotates a second time, from the values the first time stored (redo_deferred)."""
        self.committed: set[str] = set()
        self.pool = ThreadPoolExecutor(COMMITTERS, thread_name_prefix="commit")
        self.running: list[Future] = []
        self.lock = threading.Lock()

    def commit_empty(self) -> None:
        """Files without rows have nothing for the workers to do: commit them now."""
        for file in self.files.values():
            if file.rows == 0:
                self.commit(file, [])

    def add(self, records: list[dict]) -> None:
        self._raise_failed()
        for record in records:
            part = PartRecord(**record)
            if part.unit in self.committed or part.unit in self.budget.files_over:
                continue  # a retried write of rows already decided on: its staged copy is discarded at the end
            parts = self.parts.setdefault(part.unit, [])
            parts.append(part)
            if part.deferred:
                self.deferred.add(part.unit)
                continue
            self.budget.count(part.rows, json.loads(part.counts), self.computed[part.unit])
            written = [p for p in parts if not p.deferred]
            file = self.files[part.unit]
            if (sum(p.rows for p in written) >= file.rows and (cover := exact_cover(written, file.rows)) is not None
                    and self.within_budget(file, cover)):
                self.commit(file, cover)

    def redo_deferred(self) -> set[str]:
        """The files left waiting for values (`deferred`), to annotate again now that the run stored them: their
        parts so far are dropped, their calls counted now (each once); the second time counts only what the model
        computes, not what it takes again."""
        units = self.deferred - self.committed - set(self.budget.files_over)
        with self.lock:
            for unit in units:
                for part in self.parts.pop(unit, []):
                    self.stats.add(json.loads(part.calls))
                    if not part.deferred:  # counted as it came: its rows come again
                        self.budget.uncount(part.rows, json.loads(part.counts), self.computed[unit])
        self.deferred -= units
        self.again |= units
        return units

    def within_budget(self, file: InputFile, parts: list[PartRecord]) -> bool:
        """Whether every task computed for the file failed on no more than its share of the rows it took there;
        a file over a budget is not committed (its staged parts go with the staging folder)."""
        return not self.budget.file_over(file.unit, file.name, [(p.rows, json.loads(p.counts)) for p in parts],
                                         self.computed[file.unit])

    def commit(self, file: InputFile, parts: list[PartRecord]) -> None:
        self.committed.add(file.unit)
        self.parts.pop(file.unit, None)
        self.running.append(self.pool.submit(self._commit, file, parts))

    def _commit(self, file: InputFile, parts: list[PartRecord]) -> None:
        self.store.commit(self.marker(file), parts)
        self.events.committed(file.unit, file.name, sum(part.rows for part in parts))
        with self.lock:
            for part in parts:
                self.report.add_part(part.rows, json.loads(part.counts), part.writer)
                self.stats.add(json.loads(part.calls), reused=file.unit not in self.again)

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
                "layout": file.layout, "tasks": self.task_fingerprints[file.unit]}

    def missing(self) -> dict[str, int]:
        """Input files not committed, and how many of their rows never arrived."""
        return {file.name: file.rows - sum(p.rows for p in self.parts.get(unit, []) if not p.deferred)
                for unit, file in self.files.items() if unit not in self.committed}

    def verify(self, source: InputFiles) -> None:
        """Every input file is committed, with all its rows; else the run failed, and says what to do."""
        if missing := self.missing():
            name, rows = next(iter(missing.items()))
            raise JobFailed(f"{len(missing)} input file(s) not committed, e.g. {name!r}: {rows} rows missing; run "
                            "the job again to annotate them")
        for file in source.files:
            if (rows := self.store.markers[file.unit]["rows"]) != file.rows:
                raise JobFailed(f"input file {file.name!r} has {file.rows} rows but its commit in the output holds "
                                f"{rows}; run the job again: it annotates the file again")
