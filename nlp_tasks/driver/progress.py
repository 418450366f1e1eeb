"""What a person watching a run sees while it runs, from what the driver already sees: its phases, the write stage's
part records as the dataset streams, and its own commits. No row data, no other process.

The driver iterates over the write stage's records (write.PART_RECORD: unit, rows, and the JSON of the actor calls
on those rows) and commits each input file once its parts cover it; `RunEvents` counts both as they happen, so rows
annotated (written to staging), rows and files committed, rows/s and time left, and per pool the actors seen and
ready, are known on the driver for the price of a counter. The same record, kept, is the run report's timeline
(pages/run_page.py draws it).
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

PHASE_NAMES = {
    "inspect_input": "reading the input's footers", "check_models": "checking models",
    "open_output": "opening the output", "start_ray": "starting Ray", "fit_heads": "fitting heads",
    "annotate": "annotating", "finish_commits": "committing", "stop_ray": "stopping Ray",
    "close_output": "recording the commits",
}
"""Outside a terminal, a progress line at least this often while rows are annotated..."""
"""... and each time another tenth of the rows is annotated."""
CPU_STAGES = ("tokenize", "postprocess")
REPORTED_FILES = 500
"""Input files whose rows over time the report keeps (the page draws a few of them; commits are all kept)."""


@dataclass
class PoolProgress:
    name: str
    actors_planned: int = 0
    actors: set[str] = field(default_factory=set)
    cpu_workers: set[str] = field(default_factory=set)
    rows: int = 0
    load_s: float = 0.0


@dataclass
class Snapshot:
    """The run as the driver sees it now."""

    elapsed_s: float
    phase: str | None
    rows_total: int
    rows_written: int
    rows_committed: int
    files_total: int
    files_committed: int
    rows_per_s: float | None
    seconds_left: float | None
    pools: list[PoolProgress]

    def share(self) -> float:
        return self.rows_written / self.rows_total if self.rows_total else 0.0


class RunEvents:
    """The driver's record of a run as it happens: phases, parts written, files committed. Thread-safe (commits
    run in threads); a display, if any, is told of each event."""

    def __init__(self, display: Any = None):
        self.t0 = time.perf_counter()
        self.started_at = time.time()
        self.display = display
        self.lock = threading.Lock()
        self.phases: list[list] = []
        self.current: str | None = None
        self.files: dict[str, tuple[str, int]] = {}
        self.pools: dict[str, PoolProgress] = {}
        self.rows_total = 0
        self.rows_written = 0
        self.rows_committed = 0
        self.committed_units: set[str] = set()
        self.written: list[list] = []
        self.written_by_unit: dict[str, int] = defaultdict(int)
        self.file_written: dict[str, list[list]] = defaultdict(list)
        self.commits: list[list] = []
        self.first_written_at: float | None = None
        self.first_written_rows = 0
        self.annotate_started_s: float | None = None
        if display is not None:
            display.attach(self)

    def now(self) -> float:
        return round(time.perf_counter() - self.t0, 3)

    def _tell(self) -> None:
        if self.display is not None:
            self.display.changed(self.snapshot())

    def phase_started(self, phase: str) -> None:
        with self.lock:
            self.current = phase
            self.phases.append([phase, self.now(), None])
            if phase == "annotate":
                self.annotate_started_s = self.phases[-1][1]
        self._tell()

    def phase_ended(self, phase: str) -> None:
        with self.lock:
            for entry in reversed(self.phases):
                if entry[0] == phase and entry[2] is None:
                    entry[2] = self.now()
                    break
            if self.current == phase:
                self.current = None

    def planned(self, files: list[tuple[str, str, int]], pools: list[tuple[str, int]]) -> None:
        """The files this run annotates (unit, name, rows to annotate) and its pools (name, most actors)."""
        with self.lock:
            for unit, name, rows in files:
                previous = self.files.get(unit, (name, 0))[1]
                self.files[unit] = (name, previous + rows)
            self.rows_total = sum(rows for _, rows in self.files.values())
            for name, actors in pools:
                self.pools.setdefault(name, PoolProgress(name)).actors_planned = actors
        self._tell()

    def parts_written(self, records: list[dict]) -> None:
        """Records of the write stage (write.PART_RECORD), as the driver takes them."""
        with self.lock:
            now = self.now()
            for record in records:
                self.rows_written += record["rows"]
                self.written_by_unit[record["unit"]] += record["rows"]
                self.file_written[record["unit"]].append([now, self.written_by_unit[record["unit"]]])
                for call in json.loads(record.get("calls") or "[]"):
                    pool = self.pools.setdefault(call["pool"], PoolProgress(call["pool"]))
                    phases = call.get("phases", {})
                    if len(phases) == 1 and next(iter(phases)) in CPU_STAGES:
                        pool.cpu_workers.add(call["actor"])
                        continue
                    pool.actors.add(call["actor"])
                    pool.rows += call["rows"]
                    pool.load_s += call.get("load_s", 0.0)
            if records:
                if self.first_written_at is None:
                    self.first_written_at, self.first_written_rows = now, self.rows_written
                self.written.append([now, self.rows_written])
        self._tell()

    def committed(self, unit: str, name: str, rows: int) -> None:
        with self.lock:
            self.rows_committed += rows
            self.committed_units.add(unit)
            self.commits.append([self.now(), name, rows])
        self._tell()

    def snapshot(self) -> Snapshot:
        with self.lock:
            now = self.now()
            rate = None
            if self.first_written_at is not None and now - self.first_written_at > 0.5 \
                    and self.rows_written > self.first_written_rows:
                rate = (self.rows_written - self.first_written_rows) / (now - self.first_written_at)
            left = (self.rows_total - self.rows_written) / rate if rate else None
            return Snapshot(now, self.current, self.rows_total, self.rows_written, self.rows_committed,
                            len(self.files), len(self.committed_units & self.files.keys()), rate, left,
                            [PoolProgress(p.name, p.actors_planned, set(p.actors), set(p.cpu_workers),
                                          p.rows, p.load_s) for p in self.pools.values()])

    def as_report(self) -> dict:
        """What the run page draws: phases, rows written and committed over time, and per file."""
        with self.lock:
            return {
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at)),
                "phases": [[name, start, end if end is not None else self.now()] for name, start, end in self.phases],
                "annotate_started_s": self.annotate_started_s,
                "rows_total": self.rows_total,
                "written": self.written,
                "commits": self.commits,
                "files": {unit: {"name": name, "rows": rows, "written": self.file_written.get(unit, [])}
                          for unit, (name, rows) in list(self.files.items())[:REPORTED_FILES]},
                "files_not_listed": max(0, len(self.files) - REPORTED_FILES),
            }
