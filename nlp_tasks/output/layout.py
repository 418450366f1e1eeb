"""The output folder's layout, the part records workers report and the markers the driver commits.

Layout (local or object storage), meant to be read by people too:

    part-<unit>-<first row>.parquet   annotated rows of one input file, from that row on
    __manifest/job.json               what produced this output: tasks, models, fingerprints
    __manifest/units/<unit>.json      one marker per committed input file: source, identity, rows, parts (each
                                      with its size and footer checksum), and the fingerprint of each task
                                      whose column its parts hold
    __manifest/units.json.gz          the markers as of a run's end, each with its file's size and version in
                                      the listing (gzip'd JSON, written atomically): a later run reads one
                                      object and the markers whose listing entry differs, not one per file
    __manifest/heads/<task>-<fp>.json heads fitted on a task's labelled examples, by task fingerprint
    __manifest/reuse/<task>-<fp>/     each value computed, by the content key of its row (workers/reuse.py)
    __manifest/lease-<n>.json         the running job's lease (see lease.py)
    __staging/<run>/                  parts written by the workers, not yet committed (`*.parquet.staged`)
    __reports/run-*.json, .html       one report per run

Every name that is not a part starts with "__": pandas, pyarrow.dataset, Spark, Ray and
`datasets.load_dataset("parquet", data_dir=...)` all skip it, and no file below it ends in `.parquet`, so that
DuckDB and Polars (`out/*.parquet`, or `out/**/*.parquet`) skip it too: readers only ever see committed parts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nlp_tasks.errors import UserError

MANIFEST = "__manifest"
UNITS = f"{MANIFEST}/units"
INDEX = f"{MANIFEST}/units.json.gz"
HEADS = f"{MANIFEST}/heads"
REUSE = f"{MANIFEST}/reuse"
STAGING = "__staging"
REPORTS = "__reports"
PART_NAME = re.compile(r"^part-([0-9a-f]{16})-(\d{12})\.parquet$")
OWN_ENTRIES = (MANIFEST, STAGING, REPORTS)
STAGED_NAME = "{unit}-{first:012d}-{nonce}.parquet.staged"
"""A part's name where a worker writes it (`staging`): unique to the attempt, and not ending in `.parquet`, so that
a recursive glob (DuckDB's or Polars' `out/**/*.parquet`) never reads rows not committed. A Delta table's parts
are written under their final names (delta.py)."""


class OutputConflict(UserError):
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
    """sha256 of the part's Parquet footer (its last footer-length + 8 bytes), as files.read_footer computes it."""
    writer: str
    counts: str
    """JSON: the run report's counts for the part's rows (write.part_counts)."""
    calls: str
    """JSON: the actor calls recorded on the part's rows (stats.py)."""
    deferred: int = 0
    """Rows whose value another batch of the night computes: such a part is not written (workers/reuse.py)."""

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
