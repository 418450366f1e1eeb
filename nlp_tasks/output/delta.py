"""The output as a Delta Lake table (`output.format: delta`): input files committed in transactions of the
table's log, each file exactly once.

Workers write parts straight into the table's folder under their final names
(`part-<unit>-<first row>-<attempt>.parquet`): a file the log does not list is invisible to every Delta
reader, so nothing is staged or moved. The driver's commit threads hand their files over as they become ready;
the files that are ready while a transaction is in flight are committed together, in the next one (group
commit: up to GROUP files a version, so that commits keep pace with annotation however long a version takes
to land). A group is committed in two steps:

    1. each file's marker, `__manifest/units/<unit>.json`: source, identity, rows, task fingerprints, parts, the
       commit's number n (the same for every marker of the group), and the marker it replaces (`previous`);
    2. one Delta transaction: `add` actions for the group's parts (with their row counts), `remove` actions for
       the parts they replace, and the job's application transaction (`txn`, app id `nlp-tasks`) at version n.

The log decides: the log's `nlp-tasks` version N says that every commit numbered up to N landed, and none
after. A run killed between the two steps left its group's markers at N + 1: the next run puts each one's
previous marker back, and the parts they listed, which no version of the log lists, are deleted as strays.
Nothing is added twice: numbers only grow, a commit's parts are new files, and after a failed transaction the
run commits nothing more. An empty input file with nothing to remove is committed by its marker alone (n = 0).
Removed parts stay on disk for time travel until the table is vacuumed. Schema changes (a task column added)
are their own log entries, before the first commit that needs them. The lease keeps other runs of this job out;
Delta's conflict check refuses a commit that conflicts with another writer's (one line, exit 2), and a table that
holds files this job did not write (another writer's OPTIMIZE, UPDATE or append) is refused at open: their rows
would be annotated twice. Where every version since the job's last is a compaction (OPTIMIZE, VACUUM) and
`output.if_compacted` is `redo`, the compacted units are annotated again and the compacted files leave the log in
the version that adds them back, as retired units do.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from nlp_tasks.files import read_footer
from nlp_tasks.output.delta_layout import (
    APP_ID,
    DELTA_LOG,
    DELTA_PART,
    PART_NAMES,
    delta_marker_problem,
    storage_options,
)
from nlp_tasks.output.layout import (
    MANIFEST,
    PART_NAME,
    REPORTS,
    STAGING,
    UNITS,
    OutputConflict,
    PartRecord,
    now,
)
from nlp_tasks.output.recovery import DeltaRecovery, delta_recovery, since_last_commit
from nlp_tasks.output.storage import dump, write_atomic
from nlp_tasks.output.store import OutputStore

HISTORY_SEARCHED = 1000
"""Log versions searched, newest first, for the job's last one, to name it when another writer's files stop a run."""
GROUP = 1000
"""Input files committed in one version at most: one transaction's log entry (an `add` per part, the files'
units and sources in its metadata) stays a few hundred kB."""
MARKER_WRITERS = 16
"""Markers of a group written at once: on object storage each is a PUT."""


class Pending:
    """An input file handed to `commit`, until a group takes it and commits it (`done`; or holds it, see
    `DeltaStore.held`) or fails (`error`)."""

    __slots__ = ("done", "error", "marker", "parts")

    def __init__(self, marker: dict, parts: list[PartRecord]):
        self.marker, self.parts = marker, parts
        self.done = False
        self.error: BaseException | None = None


class DeltaStore(OutputStore):
    """A Delta table as the job's output: the OutputStore's protocol (open, commit, remove, close, markers), with
    the table's log as the commit point."""

    part_names = PART_NAMES
    own_entries = (MANIFEST, STAGING, REPORTS, DELTA_LOG)
    own_part = DELTA_PART

    def __init__(self, filesystem: Any, root: str, name: str, uri: str, if_compacted: str = "stop"):
        super().__init__(filesystem, root, name)
        self.if_compacted = if_compacted
        """output.if_compacted: what a table compacted by another writer since the job's last version gets."""
        self.uri = uri.rstrip("/") if "://" in uri else os.path.abspath(uri)
        self.options = storage_options(self.uri)
        self.table = None
        self.fields: dict[str, str] = {}
        """The table's columns and their Delta types (JSON), as this run last committed or read them."""
        self.columns_seen: set[tuple[str, str]] = set()
        """(column, task fingerprint) pairs the table's schema is known to hold the type of."""
        self.logged = 0
        """The number of this job's last commit the log holds (its `nlp-tasks` transaction version)."""
        self.failed: Exception | None = None
        """A transaction that failed: whether it landed is for the next run to tell, so nothing more is committed."""
        self.committed_this_run = False
        """Whether this run added a version to the log: then `close` cleans the log's expired entries, once."""
        self.commit_lock = threading.Lock()
        """Held by the thread committing a group: one transaction of the log at a time."""
        self.pending: deque[Pending] = deque()
        """Files handed to `commit` that no group has taken yet (under `handover`)."""
        self.handover = threading.Condition()
        """Guards `pending` and `committing`; notified when a group's commit is over."""
        self.committing = False
        """Whether a thread is committing a group: the others wait for it, then return if it took their file."""
        self.incoming: set[str] = set()
        """Units of the input the output has not committed: this run's new units (`expect`)."""
        self.retiring: dict[str, dict] = {}
        """Markers of units this run uncommits, whose parts leave the log with the new units (`commit`)."""
        self.held: dict[str, tuple[dict, list[PartRecord]]] = {}
        """New units whose parts arrived while units are retiring: committed together once all have."""
        self.compacted: list[str] = []
        """Files another writer's compaction wrote (if_compacted: redo): they leave the log with the new units."""

    @property
    def staging(self) -> str:
        return self.root

    # -- opening ------------------------------------------------------------------------------------------------

    def _load(self) -> None:
        from deltalake import DeltaTable

        self.table = DeltaTable(self.uri, storage_options=self.options) \
            if DeltaTable.is_deltatable(self.uri, storage_options=self.options) else None
        self.fields = {name: self._type(field) for name, field in self._schema_fields()}

    def _schema_fields(self) -> list[tuple[str, Any]]:
        return [(field.name, field) for field in self.table.schema().fields] if self.table is not None else []

    @staticmethod
    def _type(field: Any) -> str:
        return str(field.type)

    def _snapshot_files(self, table: Any = None) -> list[dict]:
        """The files of the current snapshot (or of `table`, another version): path and size_bytes."""
        import pyarrow as pa

        table = self.table if table is None else table
        return pa.table(table.get_add_actions(flatten=True)).select(["path", "size_bytes"]).to_pylist()

    def _logged_parts(self) -> dict[str, dict[str, int]]:
        """The parts the table's current snapshot lists, by unit: name -> size."""
        if self.table is None:
            return {}
        by_unit: dict[str, dict[str, int]] = {}
        for action in self._snapshot_files():
            if match := DELTA_PART.match(action["path"]):
                by_unit.setdefault(match.group(1), {})[action["path"]] = action["size_bytes"]
        return by_unit

    def _other_writers(self) -> None:
        """A file of the snapshot this job did not write (another writer's OPTIMIZE, DELETE, UPDATE or append)
        stops the run: the job cannot tell which rows such a file holds, and would annotate them twice. Where every
        version since the job's last is a compaction, the files hold the job's rows as they were: with
        `if_compacted: redo` the run goes on (`compacted`), else the message names that and the other ways out."""
        foreign = [action["path"] for action in self._snapshot_files() if not DELTA_PART.match(action["path"])]
        if not foreign:
            return
        last, compacted = since_last_commit(self.table.history(HISTORY_SEARCHED))
        if compacted and self.if_compacted == "redo":
            self.compacted = sorted(foreign)
            return
        redo = ("set output.if_compacted: redo to annotate the compacted rows again and replace those files with "
                "them in one version (readers never see fewer rows), or " if compacted else "")
        raise OutputConflict(
            f"output.path {self.name!r}: the Delta table holds {len(foreign)} file(s) this job did not write "
            f"(e.g. {min(foreign)!r}), from another writer (an OPTIMIZE, DELETE, UPDATE or append), and the job "
            f"cannot tell which rows they hold; {self._way_back(last, redo)}")

    def _way_back(self, last: int | None, redo: str) -> str:
        """How to make the table the job's again: restore its last version, unless a VACUUM deleted files that
        version needs (restore would fail on them); after a compaction, `redo`; else a new output.path, the table
        left to its readers."""
        from deltalake import DeltaTable

        fresh = (f"{redo}write to a new output.path (every input row is annotated there; this table, which readers "
                 "still read whole, is left as it is)")
        if last is None:
            return f"DeltaTable(...).restore to the job's last version makes it the job's again, or {fresh}"
        present = set(self.list_output())
        gone = [action["path"] for action in self._snapshot_files(
            DeltaTable(self.uri, version=last, storage_options=self.options)) if action["path"] not in present]
        if gone:
            return (f"its last version, {last}, cannot be restored: a VACUUM deleted {len(gone)} of its files "
                    f"(e.g. {min(gone)!r}); {fresh}")
        return f"DeltaTable(...).restore({last}), the job's last version, makes it the job's again, or {fresh}"

    def reconcile(self) -> None:
        """Each marker against the log (recovery.delta_recovery decides), carried out: markers put back or
        deleted, one repair version removing the parts of the units uncommitted, then strays deleted."""
        self._load()
        if self.table is not None:
            self._other_writers()
        markers = self.read_markers(delta_marker_problem)
        self.logged = (self.table.transaction_version(APP_ID) if self.table is not None else None) or 0
        listing = self.list_output()
        recovery = delta_recovery(markers, self._logged_parts(), self.logged, listing)
        if self.compacted:
            self._retire_compacted(recovery, markers)
        for unit, marker in recovery.restore.items():
            write_atomic(self.filesystem, self.path(UNITS, f"{unit}.json"), dump(marker))
        for unit in recovery.drop:
            self.delete(self.path(UNITS, f"{unit}.json"))
        for unit, why in recovery.why.items():
            self.redo(unit, why)
        if recovery.restore or recovery.drop:
            self.index_stale = True
        if recovery.uncommit:
            self._transact([], [file for parts in recovery.uncommit.values() for file in parts],
                           {"nlp_tasks": {"repair": True}})
        self.markers = recovery.markers
        self.columns_seen = {(column, value) for marker in recovery.markers.values()
                             for column, value in marker.get("tasks", {}).items()}
        self.delete_strays(listing)
        if self.filesystem.exists(self.path(STAGING)):
            self.filesystem.rm(self.path(STAGING), recursive=True)
        self.filesystem.makedirs(self.root, exist_ok=True)

    def _retire_compacted(self, recovery: DeltaRecovery, markers: dict[str, dict]) -> None:
        """With compacted files in the table (if_compacted: redo): the units recovery would uncommit now retire
        instead, their parts still in the log and the compacted files leaving it with the new units (`commit`), so
        that no version holds fewer rows. Their markers stay until then: a run killed before finds the same."""
        for unit, parts in recovery.uncommit.items():
            marker = markers.get(unit) or {"unit": unit, "source": f"unit {unit}", "parts": []}
            self.retiring[unit] = {**marker, "parts": [{"file": file} for file in parts]}
            self.redo(unit, f"{recovery.why[unit]}: annotated again, another writer's compacted files replaced")
        recovery.drop = [unit for unit in recovery.drop if unit not in recovery.uncommit]
        recovery.uncommit, recovery.why = {}, {}

    def delete_strays(self, listing: dict[str, dict] | None = None) -> None:
        """Delete this job's part files that no version of the log lists (uncommitted attempts): not the current
        snapshot's files, nor those it removed (time travel reads them until the table is vacuumed)."""
        listing = self.list_output() if listing is None else listing
        ours = {name for name in listing if DELTA_PART.match(name)}
        if self.table is not None:
            ours -= {path for parts in self._logged_parts().values() for path in parts}
            ours -= set(self.table.vacuum(retention_hours=0, dry_run=True, enforce_retention_duration=False))
        for name in ours:
            self.delete(self.path(name))

    def _delete_own_output(self, entries: list[str]) -> None:
        """`overwrite`: delete this job's parts, log, markers and reports, and nothing else."""
        super()._delete_own_output(entries)
        self.table = None

    def format_problem(self, entries: list[str]) -> str | None:
        if DELTA_LOG not in entries and any(PART_NAME.match(entry) for entry in entries):
            return "is a Parquet output of this job (output.format: parquet)"
        return None

    # -- committing ---------------------------------------------------------------------------------------------

    def commit(self, marker: dict, parts: list[PartRecord]) -> None:
        """Make a unit's parts its committed output, with those of the other units handed over meanwhile (group
        commit, see the module): returns once the unit's group is committed, or raises what stopped it. While
        units are retiring (`remove`), a unit new to the output is held until every new unit of the run is: then
        they are committed together with the retirements, in one version."""
        item = Pending(marker, parts)
        with self.handover:
            self.pending.append(item)
            while not (item.done or item.error):
                if self.committing:  # another thread's group: it may take this file too
                    self.handover.wait()
                    continue
                self.committing = True
                self.handover.release()
                try:
                    with self.commit_lock:
                        self._commit_pending()
                finally:
                    self.handover.acquire()
                    self.committing = False
                    self.handover.notify_all()
        if item.error is not None:
            raise item.error

    def _commit_pending(self) -> None:
        """Take the files handed over (up to GROUP, each unit once) and commit them in one version; each is marked
        done, or given the error that stopped its group. Called with `commit_lock` held."""
        group, units = [], set()
        with self.handover:
            while self.pending and len(group) < GROUP and self.pending[0].marker["unit"] not in units:
                item = self.pending.popleft()
                group.append(item)
                units.add(item.marker["unit"])
        try:
            self._check()
        except BaseException as error:  # noqa: BLE001 - handed to each file's thread, which raises it
            for item in group:
                item.error = error
            return
        self.index_stale = True
        try:
            self._commit_group(group)
        except BaseException as error:  # noqa: BLE001 - the markers may say number n: no other commit may take it
            if self.failed is None:
                self.failed = error
            for item in group:
                if not item.done:
                    item.error = error

    def _commit_group(self, group: list[Pending]) -> None:
        """A group's markers, all numbered `logged + 1`, then one transaction adding their parts and removing those
        they replace. A unit held while units retire completes the run's new units, or waits for those that have
        not arrived; a unit with neither parts nor parts to replace is committed by its marker alone (number 0)."""
        number = self.logged + 1
        entries: list[tuple[Pending | None, dict, list[str]]] = []
        held: dict[str, Pending] = {}
        for item in group:
            unit = item.marker["unit"]
            if self.replacing and unit in self.incoming:
                self.held[unit] = (item.marker, item.parts)
                held[unit] = item
                continue
            marker, replaced = self._marker(item.marker, item.parts, number)
            if not (item.parts or replaced):
                marker["txn"] = 0
            entries.append((item, marker, replaced))
        retiring: dict[str, dict] = {}
        compacted: list[str] = []
        if self.replacing and self.held and set(self.held) == self.incoming:
            # the run's new units and its retired ones in one version: readers of the table never see the retired
            # rows gone before the rows that replace them are there (as Delta's OPTIMIZE replaces files)
            retiring, compacted = self.retiring, self.compacted
            for unit, (marker, parts) in self.held.items():
                entries.append((held.get(unit), *self._marker(marker, parts, number)))
        else:
            for item in held.values():  # committed with the run's last new unit
                item.done = True
        self._write_markers([marker for _, marker, _ in entries])
        for item, marker, _ in entries:
            if not marker["txn"]:
                self.markers[marker["unit"]] = marker
                item.done = True
        entries = [entry for entry in entries if entry[1]["txn"]]
        if not entries:
            return
        markers = [marker for _, marker, _ in entries]
        for marker in markers:
            self._evolve_for(marker)
        removes = [file for _, _, replaced in entries for file in replaced]
        removes += [part["file"] for marker in retiring.values() for part in marker["parts"]] + compacted
        metadata = {"units": [marker["unit"] for marker in markers],
                    "sources": [marker["source"] for marker in markers], "commit": number, "run": self.run}
        if retiring:
            metadata["replaced"] = [marker["source"] for marker in retiring.values()]
        if compacted:
            metadata["compacted_files_replaced"] = len(compacted)
        self._transact([part for marker in markers for part in marker["parts"]], removes, {"nlp_tasks": metadata})
        for unit in set(retiring) - {marker["unit"] for marker in markers}:  # a unit redone keeps its new marker
            self.delete(self.path(UNITS, f"{unit}.json"))
        self.markers.update({marker["unit"]: marker for marker in markers})
        for item, _, _ in entries:
            if item is not None:
                item.done = True
        if retiring or compacted:
            self.retiring, self.held, self.compacted = {}, {}, []

    def _marker(self, marker: dict, parts: list[PartRecord], number: int) -> tuple[dict, list[str]]:
        """A unit's marker for commit `number`, and the parts of its previous commit that its parts replace."""
        previous = self.markers.get(marker["unit"])
        kept = {p.staged.rsplit("/", 1)[-1] for p in parts}
        replaced = [part["file"] for part in (previous or {}).get("parts", []) if part["file"] not in kept]
        return {**marker, "committed_at": now(), "run": self.run, "txn": number, "parts": [
            {"file": p.staged.rsplit("/", 1)[-1], "first": p.first, "rows": p.rows, "size": p.size,
             "footer_sha256": p.footer_sha256} for p in parts],
            "previous": {key: value for key, value in previous.items() if key != "previous"} if previous else None}, \
            replaced

    def _write_markers(self, markers: list[dict]) -> None:
        """A group's markers, at once (on object storage each is a PUT): the commit's first step."""
        def write(marker: dict) -> None:
            write_atomic(self.filesystem, self.path(UNITS, f"{marker['unit']}.json"), dump(marker))

        if len(markers) == 1:
            write(markers[0])
        elif markers:
            with ThreadPoolExecutor(min(len(markers), MARKER_WRITERS), thread_name_prefix="marker") as pool:
                list(pool.map(write, markers))

    def _evolve_for(self, marker: dict) -> None:
        """The table's schema made to hold a written marker's columns (`_evolve`), before its transaction."""
        try:
            self._evolve(marker)
        except Exception as error:  # the marker says its number: no other commit may take it
            self.failed = self._conflict(error, [marker["source"]])
            if self.failed is error:
                raise
            raise self.failed from None

    def remove(self, unit: str) -> None:
        """Uncommit a unit. Its parts leave the log with the run's new units (`commit`), or, where the run has
        none, in a transaction of their own, then its marker goes (a crash in between: the next run finds a marker
        whose parts the log no longer lists, and drops it)."""
        with self.commit_lock:
            self._check()
            self.index_stale = True
            marker = self.markers.pop(unit)
            if self.incoming:
                self.retiring[unit] = marker
                return
            if marker["parts"]:
                self._transact([], [part["file"] for part in marker["parts"]], {"nlp_tasks": {
                    "unit": unit, "source": marker["source"], "commit": self.logged + 1, "removed": True}})
            self.delete(self.path(UNITS, f"{unit}.json"))

    @property
    def replacing(self) -> bool:
        """Whether units retire, or compacted files wait, to leave the log with the run's new units."""
        return bool(self.retiring or self.compacted)

    def expect(self, units: set[str]) -> None:
        """The input's units: those the output has not committed are this run's new units (`commit`). With
        compacted files to replace, each unit redone must still be in the input: its rows are in those files."""
        self.incoming = units - set(self.markers)
        if self.compacted and (gone := sorted(set(self.redone) - units)):
            source = self.retiring[gone[0]]["source"] if gone[0] in self.retiring else gone[0]
            raise OutputConflict(
                f"output.path {self.name!r}: the rows of {len(gone)} committed input file(s) (e.g. {source!r}) are "
                "only in files another writer compacted, and the file is no longer in the input: replacing those "
                "files would drop its rows; put the file back, or write to a new output.path")

    def _check(self) -> None:
        if self.failed is not None:
            raise self.failed
        self.lease.check()

    def _evolve(self, marker: dict) -> None:
        """Add to the table's schema the columns of a commit's parts it lacks (a task added): a schema change of
        its own in the log. Read from the first part's footer, only when the commit holds a task column of a
        fingerprint the table has not seen; a column whose type changed is the user's to resolve."""
        from deltalake import Field, Schema

        tasks = set(marker.get("tasks", {}).items())
        if not marker["parts"] or (self.table is not None and tasks <= self.columns_seen):
            return
        first = marker["parts"][0]
        metadata, _ = read_footer(self.filesystem, self.path(first["file"]), first["size"])
        schema = Schema.from_arrow(metadata.schema.to_arrow_schema())
        if self.table is None:
            self._create(schema, marker)
            return
        added = []
        for field in schema.fields:
            if field.name not in self.fields:
                added.append(Field(field.name, field.type, nullable=True))
            elif self.fields[field.name] != self._type(field):
                raise OutputConflict(
                    f"output.path {self.name!r}: column {field.name!r} would change type from "
                    f"{self.fields[field.name]} to {self._type(field)}, which a Delta table does not allow; "
                    "write to a new output.path or set output.if_exists: overwrite")
        if added:
            self.table.alter.add_columns(added)
            self.table.update_incremental()
            self.fields.update({field.name: self._type(field) for field in added})
        self.columns_seen |= tasks

    def _create(self, schema: Any, marker: dict) -> None:
        """The table, created by the first commit with parts (the others are then ordinary transactions)."""
        from deltalake import DeltaTable
        from deltalake.transaction import CommitProperties, create_table_with_add_actions

        create_table_with_add_actions(self.uri, schema, [], mode="error", storage_options=self.options,
                                      commit_properties=CommitProperties(
                                          custom_metadata={"nlp_tasks": {"created": True}}))
        self.table = DeltaTable(self.uri, storage_options=self.options)
        self.fields = {name: self._type(field) for name, field in self._schema_fields()}
        self.columns_seen |= set(marker.get("tasks", {}).items())

    def _transact(self, adds: list[dict], removes: list[str], metadata: dict) -> None:
        """One transaction of the log, numbered `logged + 1`: the parts added (with their row counts) and those
        removed. If it fails, whether it landed is unknown until the next run reads the log: nothing more is
        committed by this one."""
        from deltalake.transaction import (
            AddAction,
            CommitProperties,
            PostCommitHookProperties,
            RemoveAction,
            Transaction,
        )

        stamp = int(time.time() * 1000)
        actions = [AddAction(part["file"], part["size"], {}, stamp, True, json.dumps({"numRecords": part["rows"]}))
                   for part in adds]
        actions += [RemoveAction(file, True, stamp) for file in removes]
        try:
            self.table.create_write_transaction(
                actions, "append", self.table.schema(), commit_properties=CommitProperties(
                    custom_metadata=metadata, app_transactions=[Transaction(APP_ID, self.logged + 1)]),
                post_commithook_properties=PostCommitHookProperties(cleanup_expired_logs=False))  # once a run: close
        except Exception as error:
            about = metadata["nlp_tasks"]
            sources = about.get("sources") or ([about["source"]] if "source" in about else [])
            self.failed = self._conflict(error, sources)
            if self.failed is error:
                raise
            raise self.failed from None
        self.logged += 1
        self.committed_this_run = True
        self.table.update_incremental()

    def _conflict(self, error: Exception, sources: list[str]) -> Exception:
        """A commit another writer's got in the way of, as one line (Delta's conflict check refused it, or another
        writer created the table first); any other error as it is."""
        from deltalake.exceptions import CommitFailedError, DeltaError

        if not isinstance(error, CommitFailedError) and not (
                isinstance(error, DeltaError) and "already exists" in str(error)):
            return error
        what = "a repair of the table" if not sources else f"the commit of input file {sources[0]!r}" \
            if len(sources) == 1 else f"the commit of {len(sources)} input files (e.g. {sources[0]!r})"
        return OutputConflict(
            f"output.path {self.name!r}: another writer changed the Delta table during this run and Delta refused "
            f"{what} ({str(error).splitlines()[0]}); the files committed before it stand, nothing after it was "
            "committed: run the job again once the other writer is done")

    def finish(self) -> None:
        """Record the run's commits in the markers' index, delete its uncommitted attempts (retried writes), and
        clean the log's expired entries once (as Delta's writers do after a commit, which lists the whole log: per
        commit, each would cost more than the last)."""
        if self.lease.number is None or self.lease.lost:
            return
        super().finish()
        if self.table is not None and self.committed_this_run:  # a night that committed nothing wrote no strays
            self.delete_strays()
            self.table.cleanup_metadata()

    def record_versions(self) -> None:
        """Nothing: a Delta unit's parts are checked against the log and their sizes (`reconcile`)."""
