"""The output folder and its commits: exactly-once, resumable, one writer at a time. Runs on the driver.

Layout (local or object storage), meant to be read by people too:

    part-<unit>-<first row>.parquet   annotated rows of one input file, from that row on
    __manifest/job.json               what produced this output: tasks, models, fingerprints
    __manifest/units/<unit>.json      one marker per committed input file: source, identity, rows, parts (each
                                      with its size and footer checksum), and the fingerprint of each task
                                      whose column its parts hold
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

Each run starts by checking what the markers say against the output as it is: a marker that is
not the shape of one, or a part that is missing, of another size, unreadable or not the part
committed, uncommits its unit, which is then redone whole and reported under `repaired`. The
check costs one listing of the output folder; a part's footer is read only where its listing
entry (modification time or ETag) differs from the one recorded when it was last verified, which
is once after its commit.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from nlp_tasks.driver.inputs import FOOTER_READERS, read_footer, redact, version_of
from nlp_tasks.output.lease import Lease, LeaseHeld
from nlp_tasks.output.storage import TornFile, dump, parse_json, read_json, write_atomic

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
    size: int
    footer_sha256: str
    """sha256 of the part's Parquet footer (its last footer-length + 8 bytes), as io.read_footer computes it."""
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def marker_problem(unit: str, marker: dict) -> str | None:
    """What makes parsed JSON not a marker of `unit` (None if it is one): every field the job reads, of its type,
    and parts that name this unit's files and hold its rows 0..rows-1 in order, each once."""
    identity = marker.get("identity")
    if marker.get("unit") != unit:
        return f"its unit is {marker.get('unit')!r}, not {unit!r} as its name says"
    if not isinstance(marker.get("source"), str):
        return "no source"
    if not (isinstance(identity, dict) and _is_int(identity.get("size"))
            and isinstance(identity.get("footer_sha256"), str) and isinstance(identity.get("version"), (str, type(None)))):
        return "no identity of size, version and footer checksum"
    if not _is_int(marker.get("rows")):
        return "no row count"
    tasks = marker.get("tasks", {})
    if not (isinstance(tasks, dict) and all(isinstance(value, str) for value in tasks.values())):
        return "its tasks are not a mapping of column to fingerprint"
    parts = marker.get("parts")
    if not isinstance(parts, list):
        return "no list of parts"
    position = 0
    for part in parts:
        if not (isinstance(part, dict) and _is_int(part.get("first")) and _is_int(part.get("rows"))):
            return "a part without its first row and row count"
        if part["first"] != position or part.get("file") != part_name(unit, position) or not part["rows"]:
            return f"its parts do not hold rows 0 to {marker['rows']} in order (at row {position})"
        if any(part.get(key) is not None and not isinstance(part[key], kind) for key, kind in (
                ("size", int), ("footer_sha256", str), ("version", str), ("staged", str))):
            return f"part {part['file']} has a field of the wrong type"
        position += part["rows"]
    if position != marker["rows"]:
        return f"its parts hold {position} rows, its row count says {marker['rows']}"
    return None


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
        """What else the run found broken and mended (a torn fitted head), for the run report."""
        self.previous_job: dict | None = None
        """The job manifest the output had before `open` (None for a new output)."""
        self.redone: dict[str, str] = {}
        """Units whose committed output `open` dropped as broken (a torn marker, a damaged part), and why, for the
        run report: their input files are annotated again."""

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
            job = read_json(self.filesystem, path)
            if not (isinstance(job.get("tasks"), dict) and isinstance(job.get("columns"), dict)
                    and all(isinstance(entry, dict) for entry in job["tasks"].values())):
                raise TornFile(f"{path} is not a job manifest (no tasks and columns)")
        except TornFile as error:
            raise OutputConflict(f"output manifest {redact(str(error))}; restore it or write to a new output.path") \
                from None
        return job

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
        try:
            self.filesystem.makedirs(self.path(MANIFEST), exist_ok=True)
            self.lease.acquire()
        except LeaseHeld:
            raise
        except Exception as error:  # noqa: BLE001 - OSError, or a client's own (aiohttp, botocore): the first writes
            raise OutputConflict(f"output.path {self.name!r}: cannot create or write it ({type(error).__name__}: "
                                 f"{redact(str(error))})") from None
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
        """The units' markers; one that is torn, or JSON of another shape, is deleted and its unit redone."""
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
                marker = parse_json(path, raw)
                if problem := marker_problem(unit, marker):
                    raise TornFile(f"{path} is not a unit marker ({problem})")
                markers[unit] = marker
            except (TornFile, OSError) as error:
                self.redo(unit, f"unit marker unreadable: {redact(str(error))}")
                self._delete(path)
        return markers

    def redo(self, unit: str, why: str) -> None:
        """Record, once per unit, why its committed output was dropped."""
        self.redone.setdefault(unit, why)

    def _reconcile(self) -> None:
        """Roll interrupted commits forward, uncommit units whose parts are not what their marker says, and
        delete what no marker lists."""
        self.markers = self._read_markers()
        listing = self._listing()
        staged = set(self.filesystem.find(self.path(STAGING))) if STAGING in listing else set()
        for marker in self.markers.values():
            for part in marker["parts"]:
                if part.get("staged") in staged:  # committed, not yet moved (a present file is the older part)
                    self.filesystem.mv(part["staged"], self.path(part["file"]))
                    listing[part["file"]] = self.filesystem.info(self.path(part["file"]))
        problems, upgraded = self._verify(listing)
        for unit, problem in problems.items():
            self.redo(unit, f"input file {self.markers[unit]['source']!r}: committed part {problem}")
            self.remove(unit)
        for unit in upgraded - set(problems):
            write_atomic(self.filesystem, self.path(UNITS, f"{unit}.json"), dump(self.markers[unit]))
        listed = {part["file"] for marker in self.markers.values() for part in marker["parts"]}
        for entry in set(listing) - listed:
            if PART_NAME.match(entry):
                self._delete(self.path(entry))
        if STAGING in listing:
            self.filesystem.rm(self.path(STAGING), recursive=True)
        self.filesystem.makedirs(self.staging, exist_ok=True)

    def _listing(self) -> dict[str, dict]:
        """The output folder's entries by name, with their sizes and versions, as storage has them now (not as a
        client's listing cache remembers them): one listing."""
        self.filesystem.invalidate_cache(self.root)
        entries = self.filesystem.ls(self.root, detail=True)
        return {entry["name"].rstrip("/").rsplit("/", 1)[-1]: entry for entry in entries}

    def _verify(self, listing: dict[str, dict]) -> tuple[dict[str, str], set[str]]:
        """Each committed part against its marker: what is wrong with the first bad part of each unit, and the
        units whose markers now record their parts' versions (verified this run) and must be rewritten.

        A part is missing, or of another size than committed, from the listing alone. Its footer is read (a few
        at a time) only where the listing's version differs from the one recorded at its last verification: the
        footer's checksum and row count must be the committed ones.
        """
        problems: dict[str, str] = {}
        doubtful: list[tuple[str, dict]] = []
        for unit, marker in self.markers.items():
            for part in marker["parts"]:
                entry = listing.get(part["file"])
                if entry is None:
                    problems[unit] = f"{part['file']} is missing"
                elif part.get("size") is not None and int(entry.get("size") or 0) != part["size"]:
                    problems[unit] = (f"{part['file']} is {entry.get('size')} bytes, {part['size']} when committed "
                                      "(truncated or replaced)")
                if unit in problems:
                    break
                if part.get("version") is None or version_of(entry) != part["version"]:
                    doubtful.append((unit, part))

        def check(item: tuple[str, dict]) -> str | None:
            part = item[1]
            entry = listing[part["file"]]
            try:
                metadata, footer_sha256 = read_footer(self.filesystem, self.path(part["file"]), int(entry["size"]))
            except Exception as error:  # noqa: BLE001 - any reader failure means the part is not readable
                return f"{part['file']} is not readable Parquet ({type(error).__name__}: {redact(str(error))})"
            if part.get("footer_sha256", footer_sha256) != footer_sha256:
                return f"{part['file']} is not the part committed (its footer differs)"
            if metadata.num_rows != part["rows"]:
                return f"{part['file']} holds {metadata.num_rows} rows, {part['rows']} when committed"
            part.update(size=int(entry["size"]), footer_sha256=footer_sha256, version=version_of(entry))
            return None

        doubtful = [(unit, part) for unit, part in doubtful if unit not in problems]
        with ThreadPoolExecutor(FOOTER_READERS) as pool:
            for (unit, _), problem in zip(doubtful, pool.map(check, doubtful)):
                if problem is not None:
                    problems.setdefault(unit, problem)
        return problems, {unit for unit, _ in doubtful}

    def _delete(self, path: str) -> None:
        """Delete a file that may already be gone (removed by another step from a listing that is now stale)."""
        try:
            self.filesystem.rm(path)
        except FileNotFoundError:
            pass

    def commit(self, marker: dict, parts: list[PartRecord]) -> None:
        """Make a unit's staged parts its committed output, replacing whatever it had before."""
        self.lease.check()
        unit = marker["unit"]
        marker = {**marker, "committed_at": now(), "run": self.run, "parts": [
            {"file": part_name(unit, p.first), "first": p.first, "rows": p.rows, "staged": p.staged, "size": p.size,
             "footer_sha256": p.footer_sha256} for p in parts]}
        write_atomic(self.filesystem, self.path(UNITS, f"{unit}.json"), dump(marker))
        for part in marker["parts"]:
            self.filesystem.mv(part["staged"], self.path(part["file"]))
        previous = self.markers.get(unit)
        if previous:
            kept = {part["file"] for part in marker["parts"]}
            for part in previous["parts"]:
                if part["file"] not in kept:
                    self._delete(self.path(part["file"]))
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
        if not self.filesystem.exists(path):
            return None
        try:
            return read_json(self.filesystem, path)
        except TornFile as error:
            self.repaired.append(f"fitted head unreadable: {redact(str(error))}; it is fitted again")
            return None

    def save_head(self, task: str, fingerprint: str, head: dict) -> None:
        self.filesystem.makedirs(self.path(HEADS), exist_ok=True)
        write_atomic(self.filesystem, self.path(HEADS, f"{task}-{fingerprint}.json"), dump(head))

    def remove(self, unit: str) -> None:
        """Uncommit a unit and delete its parts (marker first: a crash in between leaves only strays)."""
        self.lease.check()
        marker = self.markers.pop(unit)
        self._delete(self.path(UNITS, f"{unit}.json"))
        for part in marker["parts"]:
            self._delete(self.path(part["file"]))

    def close(self) -> None:
        """Discard the staging folder (this run's leftover retried attempts; `open` removed older runs') and give
        the lease back."""
        try:
            if self.lease.number is not None and not self.lease.lost and self.filesystem.exists(self.path(STAGING)):
                self.filesystem.rm(self.path(STAGING), recursive=True)
        finally:
            self.lease.release()

