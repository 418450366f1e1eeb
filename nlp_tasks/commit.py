"""Exactly-once, resumable output: one Parquet file per input file, published whole, then marked.

Layout of an output directory (local or object storage), meant to be read by people too:

    part-<unit>.parquet       the annotated rows of one input file
    _manifest/job.json        what produced this output: tasks, models and their fingerprints
    _manifest/<unit>.json     one marker per committed input file: source path, rows, output file
    _staging/                 files being written; discarded by the next run

A unit's rows stream into a staging file; when its row count reaches the input file's count,
the file is moved to its final name (atomic on a local disk, a single object on S3) and only
then is the marker written. A crash before the marker leaves the unit uncommitted: the next
run redoes it and overwrites the same final name, so no row is lost or duplicated.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

MANIFEST = "_manifest"
STAGING = "_staging"
SOURCE_COLUMN = "path"
"""The column Ray Data's `include_paths=True` adds: the input file each row came from."""


class OutputConflict(Exception):
    """The output location holds something this run must not mix with; the message says what."""


def unit_id(source_path: str) -> str:
    return hashlib.sha256(source_path.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Unit:
    source: str
    rows: int

    @property
    def id(self) -> str:
        return unit_id(self.source)


class OutputStore:
    """The output directory: its job manifest, committed units, and publishing."""

    def __init__(self, filesystem: Any, root: str):
        self.filesystem = filesystem
        self.root = root.rstrip("/")

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _read_json(self, path: str) -> dict:
        with self.filesystem.open(path, "rb") as handle:
            return json.load(handle)

    def _write_json(self, path: str, data: dict) -> None:
        self.filesystem.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self.filesystem.open(path, "wb") as handle:
            handle.write(json.dumps(data, indent=2, sort_keys=True).encode())

    def exists(self) -> bool:
        return self.filesystem.exists(self.root) and bool(self.filesystem.ls(self.root))

    def job(self) -> dict | None:
        path = self.path(MANIFEST, "job.json")
        return self._read_json(path) if self.filesystem.exists(path) else None

    def start(self, job: dict, if_exists: str) -> None:
        """Make the output ready for a run of `job` (see OutputConfig.if_exists)."""
        if self.exists():
            previous = self.job()
            if if_exists == "overwrite":
                self.filesystem.rm(self.root, recursive=True)
            elif if_exists == "error":
                raise OutputConflict(f"output.path {self.root!r} already exists (output.if_exists: error)")
            elif previous is None:
                raise OutputConflict(f"output.path {self.root!r} has files but no {MANIFEST}/job.json: "
                                     "it is not an output of this job; choose another path")
            elif previous["fingerprint"] != job["fingerprint"]:
                changed = sorted(
                    column for column in set(previous["tasks"]) | set(job["tasks"])
                    if previous["tasks"].get(column) != job["tasks"].get(column)
                ) or ["input columns"]
                raise OutputConflict(
                    f"output.path {self.root!r} was produced by a different config or model "
                    f"(changed: {', '.join(changed)}); write to a new output.path or set output.if_exists: overwrite"
                )
        if self.filesystem.exists(self.path(STAGING)):
            self.filesystem.rm(self.path(STAGING), recursive=True)
        if self.job() is None:
            self._write_json(self.path(MANIFEST, "job.json"), job)

    def committed(self) -> dict[str, dict]:
        """Markers of committed units, by unit id."""
        folder = self.path(MANIFEST)
        if not self.filesystem.exists(folder):
            return {}
        markers = [p for p in self.filesystem.ls(folder, detail=False) if not p.endswith("/job.json")]
        return {p.rsplit("/", 1)[-1].removesuffix(".json"): self._read_json(p) for p in markers}

    def publish(self, unit: Unit, staged: str) -> None:
        """Move a complete staging file to its final name, then mark the unit committed."""
        final = self.path(f"part-{unit.id}.parquet")
        self.filesystem.mv(staged, final)
        self._mark(unit, final.rsplit("/", 1)[-1])

    def publish_empty(self, unit: Unit) -> None:
        """An input file without rows is committed with no output file."""
        self._mark(unit, None)

    def _mark(self, unit: Unit, output: str | None) -> None:
        self._write_json(self.path(MANIFEST, f"{unit.id}.json"), {
            "source": unit.source, "rows": unit.rows, "output": output,
            "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })


class UnitWriter:
    """Routes annotated batches to per-input-file staging files and publishes each when complete."""

    def __init__(self, store: OutputStore, units: list[Unit], generated_id_column: str | None = None):
        """`generated_id_column`: for inputs without an id column, add one holding "<input file>:<row position>",
        stable across runs because rows arrive in file order."""
        self.store = store
        self.generated_id_column = generated_id_column
        self.units = {unit.source: unit for unit in units}
        self.written: dict[str, int] = {}
        self.writers: dict[str, tuple[pq.ParquetWriter, Any, str]] = {}
        self.run_id = uuid.uuid4().hex[:8]
        store.filesystem.makedirs(store.path(STAGING), exist_ok=True)

    def write(self, batch: pa.Table) -> None:
        sources = batch.column(SOURCE_COLUMN)
        rows = batch.drop_columns([SOURCE_COLUMN])
        for source in pc.unique(sources).to_pylist():
            part = rows.filter(pc.equal(sources, source))
            unit = self.units[source]
            if self.generated_id_column:
                first = self.written.get(unit.source, 0)
                ids = [f"{unit.source}:{position}" for position in range(first, first + part.num_rows)]
                part = part.add_column(0, self.generated_id_column, pa.array(ids, pa.string()))
            if unit.source not in self.writers:
                staged = self.store.path(STAGING, f"{unit.id}-{self.run_id}.parquet")
                handle = self.store.filesystem.open(staged, "wb")
                self.writers[unit.source] = (pq.ParquetWriter(handle, part.schema), handle, staged)
            writer, handle, staged = self.writers[unit.source]
            writer.write_table(part)
            self.written[unit.source] = self.written.get(unit.source, 0) + part.num_rows
            if self.written[unit.source] > unit.rows:
                raise RuntimeError(f"input file {unit.source!r}: more output rows than its {unit.rows} input rows")
            if self.written[unit.source] == unit.rows:
                writer.close()
                handle.close()
                self.store.publish(unit, staged)
                del self.writers[unit.source]

    def finish(self) -> None:
        """Every unit must have been published whole; anything else means rows went missing."""
        missing = {s: u.rows - self.written.get(s, 0) for s, u in self.units.items() if self.written.get(s, 0) != u.rows}
        if missing:
            source, count = next(iter(missing.items()))
            raise RuntimeError(f"{len(missing)} input file(s) incomplete, e.g. {source!r} is missing {count} rows")
