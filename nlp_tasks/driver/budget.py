"""Each task's error budget (`tasks.<name>.max_error_share`): the share of the rows a task took that it may fail on.

A task fails on a row it took when the model raised on it or a map-reduce did not converge (its message in `errors`
starts with tasks.base.FAILED). An error about the row's own data (its text or question null, empty or not text, a
fill-mask text without one mask) is the user's data: that row was not taken, and counts neither way. The workers
count each part's errors by task and message (write.part_counts); from those the driver keeps, per task, the rows
taken and failed in each input file and in the run so far.

- A file in which a task failed on more than its share of the rows it took is not committed: the next run
  annotates it again.
- The run stops once a task's failures so far are clearly over its budget: the lower bound of a 99.9% Wilson
  interval of its share is above max_error_share. A sound model's first few failures do not stop a night; one
  that fails on every row stops it within its first parts.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from nlp_tasks.tasks.base import FAILED

CLEARLY = 3.29
"""z of the Wilson interval whose lower bound says a budget is clearly blown: two-sided 99.9%."""


def is_failure(message: str) -> bool:
    """Whether a row error says the task failed on the row, rather than why the row's own data was not taken."""
    return message.startswith(FAILED)


def lower_bound(failed: int, taken: int) -> float:
    """The lower bound of the Wilson score interval of the share failed / taken, at CLEARLY."""
    if not taken:
        return 0.0
    share, z2 = failed / taken, CLEARLY ** 2
    centre = share + z2 / (2 * taken)
    spread = CLEARLY * math.sqrt(share * (1 - share) / taken + z2 / (4 * taken ** 2))
    return (centre - spread) / (1 + z2 / taken)


@dataclass
class Tally:
    """One task's rows taken and failed, and the reasons of its failures."""

    taken: int = 0
    failed: int = 0
    reasons: Counter = field(default_factory=Counter)

    def add(self, other: Tally) -> None:
        self.taken += other.taken
        self.failed += other.failed
        self.reasons.update(other.reasons)

    @property
    def share(self) -> float:
        return self.failed / self.taken if self.taken else 0.0


def part_tallies(rows: int, counts: dict, tasks: tuple[str, ...]) -> dict[str, Tally]:
    """Per task of `tasks`, what one part's counts (write.part_counts) say it took and failed on."""
    tallies = {task: Tally(taken=rows) for task in tasks}
    for task, message, count, *_ in counts["errors"]:
        if task not in tallies:
            continue  # a column this run carried, not computed
        if is_failure(message):
            tallies[task].failed += count
            tallies[task].reasons[message] += count
        else:
            tallies[task].taken -= count
    return tallies


def blown_line(blown: dict) -> str:
    """A blown budget as the run's last line, its summary and its page say it (`blown`: Blown.as_report)."""
    reason = blown["reasons"][0][0] if blown["reasons"] else "-"
    where = f"in input file {blown['file']!r}" if blown["file"] else "so far in this run"
    return (f"task {blown['task']!r} failed on {blown['failed']:,} of the {blown['taken']:,} rows it took {where} "
            f"({blown['share']:.1%}; max_error_share {blown['max_error_share']:g}), most often: {reason}")


@dataclass(frozen=True)
class Blown:
    """A task over its budget: in one input file, or (file None) in the run so far."""

    task: str
    limit: float
    tally: Tally
    file: str | None = None

    def as_report(self) -> dict:
        return {"task": self.task, "file": self.file, "failed": self.tally.failed, "taken": self.tally.taken,
                "share": round(self.tally.share, 4), "max_error_share": self.limit,
                "reasons": [[message, count] for message, count in self.tally.reasons.most_common(3)]}


class ErrorBudget:
    """The run's error budgets, told of each part as it arrives and asked of each file before its commit."""

    def __init__(self, limits: dict[str, float]):
        """`limits`: max_error_share by task column."""
        self.limits = limits
        self.run: dict[str, Tally] = {task: Tally() for task in limits}
        self.files_over: dict[str, Blown] = {}
        """Input files not committed for a task over its budget in them, by unit."""
        self.stopped: Blown | None = None
        """The task whose budget the run so far clearly blew, if one did: the run stops."""

    def count(self, rows: int, counts: dict, tasks: tuple[str, ...]) -> None:
        """A part of `rows` rows, with `tasks` computed for it; stops the run once a budget is clearly blown."""
        for task, tally in part_tallies(rows, counts, tasks).items():
            total = self.run[task]
            total.add(tally)
            if self.stopped is None and lower_bound(total.failed, total.taken) > self.limits[task]:
                self.stopped = Blown(task, self.limits[task], total)

    def uncount(self, rows: int, counts: dict, tasks: tuple[str, ...]) -> None:
        """Take back a part `count` was told of: its file is annotated again (commits.Commits.redo_deferred)."""
        for task, tally in part_tallies(rows, counts, tasks).items():
            total = self.run[task]
            total.taken -= tally.taken
            total.failed -= tally.failed
            total.reasons -= tally.reasons

    def file_over(self, unit: str, name: str, parts: list[tuple[int, dict]], tasks: tuple[str, ...]) -> bool:
        """Whether a task computed for a file failed on more than its share of the rows it took there, given the
        file's parts as (rows, counts); such a file is remembered, and not committed."""
        totals = {task: Tally() for task in tasks}
        for rows, counts in parts:
            for task, tally in part_tallies(rows, counts, tasks).items():
                totals[task].add(tally)
        for task, tally in totals.items():
            if tally.share > self.limits[task]:
                self.files_over[unit] = Blown(task, self.limits[task], tally, name)
                return True
        return False

    def as_report(self, not_committed: int) -> dict:
        """Per task its rows taken and failed in this run; the budget blown, if one was (the stop, else the first
        file over its budget); and how many input files the run did not commit (every one it left, not only those
        over a budget)."""
        blown = self.stopped or next(iter(self.files_over.values()), None)
        return {
            "tasks": {task: {"taken": tally.taken, "failed": tally.failed, "share": round(tally.share, 4),
                             "max_error_share": self.limits[task]} for task, tally in self.run.items()},
            "blown": blown.as_report() if blown else None,
            "stopped": self.stopped is not None,
            "files_over": sorted(blown.file for blown in self.files_over.values()),
            "files_not_committed": not_committed,
        }


def budget_failure(budget: dict) -> str | None:
    """What a run that blew an error budget says, in one line (`budget`: ErrorBudget.as_report); None when it blew
    none."""
    if not budget.get("blown"):
        return None
    return (blown_line(budget["blown"]) + ("; the run stopped" if budget["stopped"] else "")
            + f"; {budget['files_not_committed']} input file(s) not committed (the next run annotates them), "
            "what was committed before stays")
