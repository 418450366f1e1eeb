"""The output store on the driver: opening an output (`if_exists`), committing input files, uncommitting them,
the fitted heads it keeps, one writer at a time (the lease).

Workers write parts to the run's staging folder and report them (`write.py`). When the parts
of a unit cover all its rows, the driver commits it: the marker, listing the parts, is written
atomically (the commit point), then each part is moved to its final name (replacing the part of
the same name an earlier run committed, when a task was added), then any older part of that
unit the marker does not list is deleted. A crash after the marker is rolled forward by the
next run; before it, the unit is simply redone.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from nlp_tasks.files import FOOTER_READERS, read_footer, version_of
from nlp_tasks.output.index import read_index, write_index
from nlp_tasks.output.layout import (
    HEADS,
    INDEX,
    MANIFEST,
    OWN_ENTRIES,
    PART_NAME,
    STAGED_NAME,
    STAGING,
    UNITS,
    OutputConflict,
    PartRecord,
    marker_problem,
    now,
    part_name,
)
from nlp_tasks.output.lease import Lease, LeaseHeld
from nlp_tasks.output.recovery import (
    ProblemOf,
    check_footer,
    check_listing,
    markers_from_index,
    parse_markers,
    staged_commits,
    strays,
    unit_of,
)
from nlp_tasks.output.storage import TornFile, dump, read_json, write_atomic
from nlp_tasks.secrets import redact


class OutputStore:
    """The output folder: its job manifest, committed units, lease and commits."""

    part_names = STAGED_NAME
    """How the workers name the parts they write in `staging`."""
    own_entries = OWN_ENTRIES
    """The output folder's entries this job writes, besides its parts (`overwrite` deletes only those)."""
    own_part = PART_NAME
    """What the name of a part this job wrote matches."""

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
        self.created = False
        """Whether `open` found no folder at the output's path: this run made it."""
        self.index_stale = True
        """Whether the markers' index (index.py) lacks what this run knows: set at open, and by each commit."""
        self.failed: BaseException | None = None
        """A commit that failed: what its marker file holds is for the next run to tell, so the index is left."""
        self.redone: dict[str, str] = {}
        """Units whose committed output `open` dropped as broken (a torn marker, a damaged part), and why, for the
        run report: their input files are annotated again."""

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def relative(self, path: str) -> str:
        """A path below the output as its markers record it: from the output's root, which may not be named in a
        file (the output may move, and its name is the user's)."""
        return path.removeprefix(self.root + "/")

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
        self.created = not self.filesystem.exists(self.root)
        if entries:
            previous = self.previous_job = self.job()
            if previous is None:
                older = " (it has a _manifest/ folder: an output of an older nlp-tasks layout)" \
                    if "_manifest" in entries else ""
                raise OutputConflict(f"output.path {self.name!r} has files but no {MANIFEST}/job.json{older}: "
                                     "it is not an output of this job; choose another path")
            if problem := self.format_problem(entries):
                raise OutputConflict(f"output.path {self.name!r} {problem}; set output.format to match, or write to "
                                     "a new output.path")
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
            self.reconcile()
        except BaseException:
            self.lease.release()
            raise

    def format_problem(self, entries: list[str]) -> str | None:
        """Why the output's entries are not of this store's format (None if they are)."""
        return "is a Delta table (output.format: delta)" if "_delta_log" in entries else None

    def reconcile(self) -> None:
        """Roll interrupted commits forward, uncommit units whose parts are not what their marker says, and delete
        what no marker lists (the decisions are recovery.py's, from the listings and the footers read)."""
        self.markers = self.read_markers()
        listing = self.list_output()
        if STAGING in listing:
            staged = {self.relative(path) for path in self.filesystem.find(self.path(STAGING))}
            for part in staged_commits(self.markers, staged):
                self.filesystem.mv(self.path(part["staged"]), self.path(part["file"]))
                listing[part["file"]] = self.filesystem.info(self.path(part["file"]))
        problems, doubtful = check_listing(self.markers, listing)
        with ThreadPoolExecutor(FOOTER_READERS) as pool:
            footers = pool.map(lambda item: self._footer(item[1]["file"], listing[item[1]["file"]]), doubtful)
            for (unit, part), footer in zip(doubtful, footers):
                problem, verified = check_footer(part, listing[part["file"]], footer)
                if problem is not None:
                    problems.setdefault(unit, problem)
                part.update(verified)
        for unit, problem in problems.items():
            self.redo(unit, f"input file {self.markers[unit]['source']!r}: committed part {problem}")
            self.remove(unit)
        if {unit for unit, _ in doubtful} - set(problems):
            self.index_stale = True  # the parts' versions, verified now, are kept in the index
        for name in strays(self.markers, listing):
            self.delete(self.path(name))
        if STAGING in listing:
            self.filesystem.rm(self.path(STAGING), recursive=True)
        self.filesystem.makedirs(self.staging, exist_ok=True)

    def _footer(self, name: str, entry: dict) -> tuple[Any, str] | Exception:
        """A part's footer and its checksum, or what stopped it being read (any reader failure: not readable)."""
        try:
            return read_footer(self.filesystem, self.path(name), int(entry["size"]))
        except Exception as error:  # noqa: BLE001 - handed to check_footer, which names it
            return error

    def list_output(self) -> dict[str, dict]:
        """The output folder's entries by name, with their sizes and versions, as storage has them now (not as a
        client's listing cache remembers them): one listing."""
        self.filesystem.invalidate_cache(self.root)
        return {entry["name"].rstrip("/").rsplit("/", 1)[-1]: entry
                for entry in self.filesystem.ls(self.root, detail=True)}

    def list_markers(self) -> dict[str, dict]:
        """The markers' files by unit, with their listing entries (size, version): one listing."""
        folder = self.path(UNITS)
        self.filesystem.invalidate_cache(folder)
        if not self.filesystem.exists(folder):
            return {}
        return {unit_of(entry["name"]): entry for entry in self.filesystem.ls(folder, detail=True)
                if entry["name"].endswith(".json")}

    def read_markers(self, problem_of: ProblemOf = marker_problem) -> dict[str, dict]:
        """The units' markers: from the index where a marker file's listing entry is the one it recorded, else from
        the file (index.py). A marker file that holds no marker of its unit is deleted and its unit redone."""
        markers, to_read, self.index_stale = markers_from_index(
            self.list_markers(), read_index(self.filesystem, self.path(INDEX)), problem_of)
        read, torn = parse_markers(self.filesystem.cat(to_read, on_error="return") if to_read else {}, problem_of)
        for path, why in torn.items():
            self.redo(unit_of(path), why)
            self.delete(path)
        return {**markers, **read}

    def _delete_own_output(self, entries: list[str]) -> None:
        """`overwrite`: delete this job's parts, markers, staging and reports, and nothing else."""
        foreign = [e for e in entries if e not in self.own_entries and not self.own_part.match(e)]
        if foreign:
            raise OutputConflict(f"output.path {self.name!r} holds {foreign[0]!r}, which this job did not write; "
                                 "overwrite only deletes an output of this job: move it away or use another path")
        for entry in entries:
            if entry != MANIFEST:
                self.filesystem.rm(self.path(entry), recursive=True)
        for path in self.filesystem.ls(self.path(MANIFEST), detail=False):
            if not path.rstrip("/").rsplit("/", 1)[-1].startswith("lease-"):
                self.filesystem.rm(path, recursive=True)

    def redo(self, unit: str, why: str) -> None:
        """Record, once per unit, why its committed output was dropped."""
        self.redone.setdefault(unit, why)

    def delete(self, path: str) -> None:
        """Delete a file that may already be gone (removed by another step from a listing that is now stale)."""
        try:
            self.filesystem.rm(path)
        except FileNotFoundError:
            pass

    def commit(self, marker: dict, parts: list[PartRecord]) -> None:
        """Make a unit's staged parts its committed output, replacing whatever it had before."""
        self.lease.check()
        self.index_stale = True
        try:
            self._commit(marker, parts)
        except BaseException as error:
            self.failed = error
            raise

    def _commit(self, marker: dict, parts: list[PartRecord]) -> None:
        unit = marker["unit"]
        marker = {**marker, "committed_at": now(), "run": self.run, "parts": [
            {"file": part_name(unit, p.first), "first": p.first, "rows": p.rows, "staged": self.relative(p.staged), "size": p.size,
             "footer_sha256": p.footer_sha256} for p in parts]}
        write_atomic(self.filesystem, self.path(UNITS, f"{unit}.json"), dump(marker))
        for part in marker["parts"]:
            self.filesystem.mv(self.path(part["staged"]), self.path(part["file"]))
        previous = self.markers.get(unit)
        if previous:
            kept = {part["file"] for part in marker["parts"]}
            for part in previous["parts"]:
                if part["file"] not in kept:
                    self.delete(self.path(part["file"]))
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
        self.index_stale = True
        marker = self.markers.pop(unit)
        self.delete(self.path(UNITS, f"{unit}.json"))
        for part in marker["parts"]:
            self.delete(self.path(part["file"]))

    def finish(self) -> None:
        """At a run's end, with the lease held: record what it committed in the markers' index (index.py), so that
        the next run reads one object, not a marker per file. Nothing to record, nothing written."""
        if self.failed is not None or not self.index_stale or self.lease.number is None or self.lease.lost:
            return
        self.record_versions()
        write_index(self.filesystem, self.path(INDEX), self.markers, self.list_markers())
        self.index_stale = False

    def record_versions(self) -> None:
        """Give the parts committed this run the version the listing has for them (one listing), so that the next
        run verifies them from the listing without reading their footers."""
        unversioned = [part for marker in self.markers.values() for part in marker["parts"] if "version" not in part]
        if not unversioned:
            return
        listing = self.list_output()
        for part in unversioned:
            entry = listing.get(part["file"])
            if entry is not None and int(entry.get("size") or 0) == part.get("size"):
                part["version"] = version_of(entry)

    def close(self) -> None:
        """Discard the staging folder (this run's leftover retried attempts; `open` removed older runs') and give
        the lease back."""
        try:
            if self.lease.number is not None and not self.lease.lost and self.filesystem.exists(self.path(STAGING)):
                self.filesystem.rm(self.path(STAGING), recursive=True)
        finally:
            self.lease.release()

    def discard_if_new(self) -> None:
        """After `close`, on an output no earlier run wrote and this one committed nothing to: remove the entries it made, and the output's folder if it
        made that too and nothing else is in it, so that a run refused on the user's mistake (exit 2) leaves nothing
        behind. Nothing it did not write is touched (an entry of the user's, a folder that was there)."""
        if self.markers or self.previous_job is not None or not self.filesystem.exists(self.root):
            return  # an earlier run's output (its reports, its manifest) stays as it was
        for entry in set(self._entries()) & set(self.own_entries):
            self.filesystem.rm(self.path(entry), recursive=True)
        if self.created and not self._entries():
            self.filesystem.rm(self.root, recursive=True)
