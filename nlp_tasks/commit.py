"""The output folder and its commits: exactly-once, resumable, one writer at a time. Runs on the driver.

Layout (local or object storage), meant to be read by people too:

    part-<unit>-<first row>.parquet   annotated rows of one input file, from that row on
    __manifest/job.json               what produced this output: tasks, models, fingerprints
    __manifest/units/<unit>.json      one marker per committed input file: source, identity, rows, parts,
                                      and the fingerprint of each task whose column its parts hold
    __manifest/heads/<task>-<fp>.json heads fitted on a task's labelled examples, by task fingerprint
    __manifest/lease-<n>.json         the running job's lease (see lease.py)
    __staging/<run>/                  parts written by the workers, not yet committed
    __reports/run-*.json, .html       one report per run

Every name that is not a part starts with "__": pandas, pyarrow.dataset, DuckDB (`*.parquet`),
Spark, Ray and `datasets.load_dataset("parquet", data_dir=...)` all skip it, so readers only
ever see committed parts.

Workers write parts to the run's staging folder and report them (`write.py`). When the parts
of a unit cover all its rows, the driver commits it: the marker, listing the parts, is written
atomically (the commit point), then each part is moved to its final name (replacing the part of
the same name an earlier run committed, when a task was added), then any older part of that
unit the marker does not list is deleted. A crash after the marker is rolled forward by the
next run; before it, the unit is simply redone.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nlp_tasks.lease import Lease
from nlp_tasks.storage import TornFile, dump, parse_json, read_json, write_atomic

MANIFEST = "__manifest"
UNITS = f"{MANIFEST}/units"
HEADS = f"{MANIFEST}/heads"
STAGING = "__staging"
REPORTS = "__reports"
PART_NAME = re.compile(r"^part-([0-9a-f]{16})-(\d{12})\.parquet$")
OWN_ENTRIES = (MANIFEST, STAGING, REPORTS)


class OutputConflict(Exception):
    """The output location holds something this run must not mix with or delete; the message says what."""


def part_name(unit: str, first: int) -> str:
    return f"part-{unit}-{first:012d}.parquet"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class PartRecord:
    """One staged part, as the write stage reported it."""

    unit: str
    first: int
    rows: int
    staged: str
    writer: str
    counts: str
    """JSON: the run report's counts for the part's rows (write.part_counts)."""
    calls: str
    """JSON: the actor calls recorded on the part's rows (stats.py)."""

    @property
    def end(self) -> int:
        return self.first + self.rows


def exact_cover(parts: Iterable[PartRecord], rows: int) -> list[PartRecord] | None:
    """Parts that hold rows 0..rows-1 each exactly once, in order, if the reported parts allow it.

    Retried write tasks may report the same rows twice, even cut differently: any chain of parts
    from row 0 to the end will do.
    """
    starting: dict[int, list[PartRecord]] = {}
    for part in parts:
        starting.setdefault(part.first, []).append(part)
    chain: list[PartRecord] = []
    seen: set[int] = set()

    def walk(position: int) -> bool:
        if position == rows:
            return True
        if position in seen:
            return False
        seen.add(position)
        for part in starting.get(position, []):
            chain.append(part)
            if walk(part.end):
                return True
            chain.pop()
        return False

    return chain if walk(0) else None


class OutputStore:
    """The output folder: its job manifest, committed units, lease and commits."""

    def __init__(self, filesystem: Any, root: str, name: str | None = None):
        self.filesystem = filesystem
        self.root = root.rstrip("/")
        self.name = name or self.root
        """How the output is named in messages and reports (without credentials)."""
        self.lease = Lease(filesystem, self.path(MANIFEST))
        self.markers: dict[str, dict] = {}
        """Committed units by id, as of the start of this run plus what it committed."""
        self.repaired: list[str] = []
        """What `open` found broken and mended (torn markers, missing parts), for the run report."""
        self.previous_job: dict | None = None
        """The job manifest the output had before `open` (None for a new output)."""

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    @property
    def run(self) -> str:
        return self.lease.owner["run"]

    @property
    def staging(self) -> str:
        return self.path(STAGING, self.run)

    def _entries(self) -> list[str]:
        if not self.filesystem.exists(self.root):
            return []
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.filesystem.ls(self.root, detail=False)]

    def job(self) -> dict | None:
        path = self.path(MANIFEST, "job.json")
        if not self.filesystem.exists(path):
            return None
        try:
            return read_json(self.filesystem, path)
        except TornFile as error:
            raise OutputConflict(f"output manifest {error}; restore it or write to a new output.path") from None

    def open(self, job: dict, if_exists: str, change_message: Any) -> None:
        """Take the lease and make the output ready for a run of `job` (see OutputConfig.if_exists).

        `change_message(previous_job, job)` says why an existing output's job differs, or None if it does not.
        """
        entries = self._entries()
        if entries:
            previous = self.previous_job = self.job()
            if previous is None:
                older = " (it has a _manifest/ folder: an output of an older nlp-tasks layout)" \
                    if "_manifest" in entries else ""
                raise OutputConflict(f"output.path {self.name!r} has files but no {MANIFEST}/job.json{older}: "
                                     "it is not an output of this job; choose another path")
            if if_exists == "error":
                raise OutputConflict(f"output.path {self.name!r} already exists (output.if_exists: error)")
            if if_exists == "resume" and (changed := change_message(previous, job)):
                raise OutputConflict(f"output.path {self.name!r} {changed}; write to a new output.path "
                                     "or set output.if_exists: overwrite")
        self.filesystem.makedirs(self.path(MANIFEST), exist_ok=True)
        self.lease.acquire()
        try:
            if entries and if_exists == "overwrite":
                self._delete_own_output(entries)
            if self.job() != job:  # new, or the tasks changed: each unit's marker says which tasks it holds
                write_atomic(self.filesystem, self.path(MANIFEST, "job.json"), dump(job))
            self._reconcile()
        except BaseException:
            self.lease.release()
            raise

    def _delete_own_output(self, entries: list[str]) -> None:
        """`overwrite`: delete this job's parts, markers, staging and reports, and nothing else."""
        foreign = [e for e in entries if e not in OWN_ENTRIES and not PART_NAME.match(e)]
        if foreign:
            raise OutputConflict(f"output.path {self.name!r} holds {foreign[0]!r}, which this job did not write; "
                                 "overwrite only deletes an output of this job: move it away or use another path")
        for entry in entries:
            if entry != MANIFEST:
                self.filesystem.rm(self.path(entry), recursive=True)
        for path in self.filesystem.ls(self.path(MANIFEST), detail=False):
            if not path.rstrip("/").rsplit("/", 1)[-1].startswith("lease-"):
                self.filesystem.rm(path, recursive=True)

    def _read_markers(self) -> dict[str, dict]:
        folder = self.path(UNITS)
        if not self.filesystem.exists(folder):
            return {}
        paths = [p for p in self.filesystem.ls(folder, detail=False) if p.endswith(".json")]
        markers = {}
        for path, raw in self.filesystem.cat(paths, on_error="return").items() if paths else []:
            unit = path.rsplit("/", 1)[-1].removesuffix(".json")
            try:
                if isinstance(raw, Exception):
                    raise raw
                markers[unit] = parse_json(path, raw)
                if "parts" not in markers[unit]:
                    raise TornFile(f"{path} is not a unit marker")
            except (TornFile, OSError) as error:
                self.repaired.append(f"unit marker unreadable: {error}; its input file is annotated again")
                self.filesystem.rm(path)
        return markers

    def _reconcile(self) -> None:
        """Roll interrupted commits forward, drop units whose parts are gone, and delete what no marker lists."""
        self.markers = self._read_markers()
        present = set(self._entries())
        staged = set(self.filesystem.find(self.path(STAGING))) if self.filesystem.exists(self.path(STAGING)) else set()
        for unit, marker in list(self.markers.items()):
            for part in marker["parts"]:
                if part.get("staged") in staged:  # committed, not yet moved (a present file is the older part)
                    self.filesystem.mv(part["staged"], self.path(part["file"]))
                    present.add(part["file"])
                elif part["file"] not in present:
                    self.repaired.append(f"input file {marker['source']!r}: committed part {part['file']} is "
                                         "missing; the file is annotated again")
                    self.remove(unit)
                    break
        listed = {part["file"] for marker in self.markers.values() for part in marker["parts"]}
        for entry in present - listed:
            if PART_NAME.match(entry):
                self.filesystem.rm(self.path(entry))
        if self.filesystem.exists(self.path(STAGING)):
            self.filesystem.rm(self.path(STAGING), recursive=True)
        self.filesystem.makedirs(self.staging, exist_ok=True)

    def commit(self, marker: dict, parts: list[PartRecord]) -> None:
        """Make a unit's staged parts its committed output, replacing whatever it had before."""
        self.lease.check()
        unit = marker["unit"]
        marker = {**marker, "committed_at": now(), "run": self.run, "parts": [
            {"file": part_name(unit, p.first), "first": p.first, "rows": p.rows, "staged": p.staged} for p in parts]}
        write_atomic(self.filesystem, self.path(UNITS, f"{unit}.json"), dump(marker))
        for part in marker["parts"]:
            self.filesystem.mv(part["staged"], self.path(part["file"]))
        previous = self.markers.get(unit)
        if previous:
            kept = {part["file"] for part in marker["parts"]}
            for part in previous["parts"]:
                if part["file"] not in kept:
                    self.filesystem.rm(self.path(part["file"]))
        self.markers[unit] = marker

    def retag(self, unit: str, tasks: dict[str, str]) -> None:
        """Rewrite a committed unit's task fingerprints, its parts unchanged."""
        self.lease.check()
        marker = {**self.markers[unit], "tasks": tasks}
        write_atomic(self.filesystem, self.path(UNITS, f"{unit}.json"), dump(marker))
        self.markers[unit] = marker

    def head(self, task: str, fingerprint: str) -> dict | None:
        """The head fitted for `task` with this task fingerprint, if this output holds it."""
        path = self.path(HEADS, f"{task}-{fingerprint}.json")
        return read_json(self.filesystem, path) if self.filesystem.exists(path) else None

    def save_head(self, task: str, fingerprint: str, head: dict) -> None:
        self.filesystem.makedirs(self.path(HEADS), exist_ok=True)
        write_atomic(self.filesystem, self.path(HEADS, f"{task}-{fingerprint}.json"), dump(head))

    def remove(self, unit: str) -> None:
        """Uncommit a unit and delete its parts (marker first: a crash in between leaves only strays)."""
        self.lease.check()
        marker = self.markers.pop(unit)
        self.filesystem.rm(self.path(UNITS, f"{unit}.json"))
        for part in marker["parts"]:
            if self.filesystem.exists(self.path(part["file"])):
                self.filesystem.rm(self.path(part["file"]))

    def close(self) -> None:
        """Discard this run's leftover staged files (retried attempts) and give the lease back."""
        try:
            if self.lease.number is not None and not self.lease.lost and self.filesystem.exists(self.staging):
                self.filesystem.rm(self.staging, recursive=True)
        finally:
            self.lease.release()

