"""Recovery when an output opens, decided from what storage shows: functions of the markers, the listings and the
footers read, that return what to do. The store reads and carries it out (`OutputStore.reconcile`).

Each run starts by checking what the markers say against the output as it is: a marker that is
not the shape of one, or a part that is missing, of another size, unreadable or not the part
committed, uncommits its unit, which is then redone whole and reported under `repaired`. The
check costs one listing of the output folder; a part's footer is read only where its listing
entry (modification time or ETag) differs from the one the markers' index recorded (index.py: at
the end of the run that committed it, or when it was last verified).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nlp_tasks.files import version_of
from nlp_tasks.output.delta_layout import delta_marker_problem
from nlp_tasks.output.index import file_key
from nlp_tasks.output.layout import PART_NAME, marker_problem
from nlp_tasks.output.storage import TornFile, parse_json
from nlp_tasks.secrets import redact

ProblemOf = Callable[[str, dict], "str | None"]
"""What makes parsed JSON not a marker of a unit (layout.marker_problem, or the Delta store's)."""


def unit_of(path: str) -> str:
    """The unit a marker file is of, from its name (`__manifest/units/<unit>.json`)."""
    return path.rsplit("/", 1)[-1].removesuffix(".json")


def markers_from_index(listing: dict[str, dict], indexed: dict[str, dict],
                       problem_of: ProblemOf = marker_problem) -> tuple[dict[str, dict], list[str], bool]:
    """The markers the index holds as their files are listed now (`listing`: unit -> listing entry), the marker
    files to read instead (their listing entries differ, or the index lacks them), and whether the index is stale
    (it lacks or holds other markers than the files)."""
    markers, to_read = {}, []
    for unit, entry in listing.items():
        known = indexed.get(unit)
        if known is not None and known["file"] == file_key(entry) and not problem_of(unit, known["marker"]):
            markers[unit] = known["marker"]
        else:
            to_read.append(entry["name"])
    return markers, to_read, bool(to_read) or len(markers) != len(indexed)


def parse_markers(contents: dict[str, bytes | Exception],
                  problem_of: ProblemOf = marker_problem) -> tuple[dict[str, dict], dict[str, str]]:
    """The markers read from their files (path -> bytes, or the error reading them), and the files that hold no
    marker of their unit: path -> why (the unit is redone)."""
    markers, torn = {}, {}
    for path, raw in contents.items():
        unit = unit_of(path)
        try:
            if isinstance(raw, Exception):
                raise raw
            marker = parse_json(path, raw)
            if problem := problem_of(unit, marker):
                raise TornFile(f"{path} is not a unit marker ({problem})")
            markers[unit] = marker
        except (TornFile, OSError) as error:
            torn[path] = f"unit marker unreadable: {redact(str(error))}"
    return markers, torn


def staged_commits(markers: dict[str, dict], staged: set[str]) -> list[dict]:
    """The committed parts still in staging (`staged`: paths relative to the output), a run having stopped between
    a marker and its parts' moves: to move to their final names (the commit rolled forward)."""
    return [part for marker in markers.values() for part in marker["parts"]
            if part.get("staged") and part["staged"] in staged]


def check_listing(markers: dict[str, dict], listing: dict[str, dict]) -> tuple[dict[str, str], list[tuple[str, dict]]]:
    """Each committed part against the output's listing: what is wrong with the first bad part of each unit
    (missing, of another size than committed), and the parts whose footers must be read because their listed
    version is not the one recorded when they were last verified."""
    problems: dict[str, str] = {}
    doubtful: list[tuple[str, dict]] = []
    for unit, marker in markers.items():
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
    return problems, [(unit, part) for unit, part in doubtful if unit not in problems]


def check_footer(part: dict, entry: dict, footer: tuple[Any, str] | Exception) -> tuple[str | None, dict]:
    """A doubtful part against its footer (`footer`: the parsed metadata and the footer's checksum, or the error
    reading it): what is wrong with it, or None and what to record of it as verified (size, checksum, version)."""
    if isinstance(footer, Exception):
        return f"{part['file']} is not readable Parquet ({type(footer).__name__}: {redact(str(footer))})", {}
    metadata, footer_sha256 = footer
    if part.get("footer_sha256", footer_sha256) != footer_sha256:
        return f"{part['file']} is not the part committed (its footer differs)", {}
    if metadata.num_rows != part["rows"]:
        return f"{part['file']} holds {metadata.num_rows} rows, {part['rows']} when committed", {}
    return None, {"size": int(entry["size"]), "footer_sha256": footer_sha256, "version": version_of(entry)}


def strays(markers: dict[str, dict], listing: dict[str, dict]) -> list[str]:
    """The part files of the output that no marker lists (uncommitted attempts, an uncommitted unit's parts)."""
    listed = {part["file"] for marker in markers.values() for part in marker["parts"]}
    return sorted(entry for entry in set(listing) - listed if PART_NAME.match(entry))


@dataclass
class DeltaRecovery:
    """What opening a Delta output must do (`delta_recovery`): the markers that stand, the markers to put back
    (a group killed between its markers and its transaction), the marker files to delete, and the units to
    uncommit (their parts leave the log in one repair version) with why."""

    markers: dict[str, dict] = field(default_factory=dict)
    restore: dict[str, dict] = field(default_factory=dict)
    drop: list[str] = field(default_factory=list)
    uncommit: dict[str, list[str]] = field(default_factory=dict)
    why: dict[str, str] = field(default_factory=dict)


def delta_recovery(markers: dict[str, dict], logged: dict[str, dict[str, int]], logged_version: int,
                   listing: dict[str, dict]) -> DeltaRecovery:
    """Each marker against the log (`logged`: the snapshot's parts by unit, name -> size; `logged_version`: the
    job's last commit the log holds) and the folder's listing: committed as it says, never committed (its
    previous marker is put back where that one was), or not as the log has it (uncommitted and redone). Parts the
    log lists for a unit without a marker are uncommitted too."""
    recovery = DeltaRecovery()
    for unit, marker in markers.items():
        parts = logged.get(unit, {})
        if marker["txn"] > logged_version:  # killed between the marker and its transaction
            previous = marker.get("previous")
            if previous and not delta_marker_problem(unit, previous) and previous["txn"] <= logged_version:
                recovery.restore[unit] = marker = previous
            else:
                recovery.drop.append(unit)
                continue
        if problem := delta_part_problem(marker, parts, listing):
            recovery.restore.pop(unit, None)
            recovery.drop.append(unit)
            recovery.uncommit[unit] = list(parts)
            recovery.why[unit] = f"input file {marker['source']!r}: {problem}"
            continue
        recovery.markers[unit] = marker
    for unit, parts in logged.items():
        if unit not in recovery.markers and unit not in recovery.uncommit:
            recovery.uncommit[unit] = list(parts)
            recovery.why[unit] = f"unit {unit}: parts in the Delta log without a marker ({min(parts)})"
    return recovery


COMPACTIONS = frozenset({"OPTIMIZE", "VACUUM START", "VACUUM END"})
"""Log operations that leave a table's rows as they are: after only these since the job's last version, the table
holds the job's rows, in files another writer wrote."""


def since_last_commit(history: list[dict]) -> tuple[int | None, bool]:
    """The job's last version in a Delta log's history (entries as deltalake gives them, the job's carrying its
    `nlp_tasks` metadata; None where the entries hold none), and whether every version after it is a compaction."""
    last = max((entry["version"] for entry in history if "nlp_tasks" in entry), default=None)
    return last, last is not None and all(entry.get("operation") in COMPACTIONS
                                          for entry in history if entry["version"] > last)


def delta_part_problem(marker: dict, parts: dict[str, int], listing: dict[str, dict]) -> str | None:
    """What is wrong with a committed Delta unit: its marker and the log list other parts, or a part is missing
    from the folder or of another size than committed (None if nothing)."""
    files = {part["file"]: part.get("size") for part in marker["parts"]}
    if set(files) != set(parts):
        return f"its marker lists other parts than the Delta log ({min(set(files) ^ set(parts))})"
    for file, size in files.items():
        entry = listing.get(file)
        if entry is None:
            return f"committed part {file} is missing"
        if size is not None and int(entry.get("size") or 0) != size:
            return f"committed part {file} is {entry.get('size')} bytes, {size} when committed (truncated or " \
                   "replaced)"
    return None
