"""The input files against what the output holds: new, changed, unchanged, renamed and vanished files, and the
task columns committed files lack (a task added or changed since) or hold of a task no longer configured."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from nlp_tasks.driver.inputs import InputFile, InputFiles
from nlp_tasks.output.store import OutputStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refresh:
    """A committed input file of an incremental run: its parts are read back, `recompute` columns are computed
    again (with the tasks added or changed since) and `drop` columns removed; every other column is carried."""

    file: InputFile
    parts: list[dict]
    """The unit marker's parts: file (name in the output), first row, rows."""
    recompute: tuple[str, ...]
    drop: tuple[str, ...] = ()



@dataclass
class InputChanges:
    """The input files against the output's markers."""

    todo: list[InputFile]
    """New and changed files: annotated this run."""
    unchanged: int
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    """Committed files no longer in the input (renamed ones excluded)."""
    renamed: dict[str, str] = field(default_factory=dict)
    """New name -> old name, for new files with the content of a vanished one."""
    vanished_units: list[str] = field(default_factory=list)
    renamed_units: list[str] = field(default_factory=list)
    refreshes: list[Refresh] = field(default_factory=list)
    """Committed, unchanged files that lack a task's column (added or changed since), or hold a dropped one."""
    removed_kept: list[str] = field(default_factory=list)
    """Columns of tasks no longer configured that committed files keep (output.removed_tasks: keep)."""

    def as_report(self, kept_vanished: bool, tasks: list[str]) -> dict:
        """The changes, and which columns this run computed (or dropped) for which files."""
        computed: dict[str, list[str]] = {column: [file.name for file in self.todo] for column in tasks}
        dropped: dict[str, list[str]] = {}
        for refresh in self.refreshes:
            for column in refresh.recompute:
                computed[column].append(refresh.file.name)
            for column in refresh.drop:
                dropped.setdefault(column, []).append(refresh.file.name)
        return {"new": self.new, "changed": self.changed, "renamed": self.renamed,
                "vanished": self.vanished, "vanished_rows": "kept" if kept_vanished else "removed",
                "columns_computed": {column: files for column, files in computed.items() if files},
                "columns_dropped": dropped, "removed_tasks_kept": self.removed_kept}


def compare(source: InputFiles, markers: dict[str, dict], fingerprints: dict[str, str], drop_removed: bool,
            skipped: set[str], redone: set[str] = frozenset()) -> InputChanges:
    """Which input files need annotating: new ones and ones whose identity (or row count) changed since their
    commit, in full; committed ones whose task fingerprints differ from `fingerprints`, for the differing columns
    only. Files whose committed output was dropped as broken (`redone`, reported as repaired) are not called new.

    A skipped task (its model unavailable here) keeps whatever column committed files hold.
    """
    files = {file.unit: file for file in source.files}
    quarantined = set(source.quarantined)
    gone = {unit: marker for unit, marker in markers.items()
            if unit not in files and marker["source"] not in quarantined}
    gone_by_content = {(m["identity"]["size"], m["identity"]["footer_sha256"]): unit for unit, m in gone.items()}
    changes = InputChanges(todo=[], unchanged=0)
    for unit, file in files.items():
        marker = markers.get(unit)
        if marker is not None and marker["identity"] == file.identity and marker["rows"] == file.rows:
            done = marker.get("tasks", {})
            recompute = tuple(column for column, value in fingerprints.items() if done.get(column) != value)
            removed = [column for column in done if column not in fingerprints and column not in skipped]
            drop = tuple(removed) if drop_removed else ()
            changes.removed_kept += [column for column in removed if not drop_removed]
            if recompute or drop:
                changes.refreshes.append(Refresh(file, marker["parts"], recompute, drop))
            else:
                changes.unchanged += 1
            continue
        changes.todo.append(file)
        if marker is not None:
            changes.changed.append(file.name)
        elif unit in redone:
            continue
        elif (old := gone_by_content.pop(file.content_key, None)) is not None:
            changes.renamed[file.name] = gone[old]["source"]
            changes.renamed_units.append(old)
        else:
            changes.new.append(file.name)
    changes.vanished_units = [unit for unit in gone if unit not in changes.renamed_units]
    changes.vanished = [gone[unit]["source"] for unit in changes.vanished_units]
    changes.removed_kept = sorted(set(changes.removed_kept))
    return changes


def apply_changes(store: OutputStore, changes: InputChanges, source: InputFiles, keep_vanished: bool) -> list[str]:
    """Uncommit the output of renamed input files, and of vanished ones unless they are kept; log what changed.
    Returns the repairs to report: committed output that opening the output found broken, and what follows."""
    current = {file.unit for file in source.files}
    repaired = [f"{why}; " + ("its input file is annotated again" if unit in current else
                              "its input file is gone: its rows are no longer in the output")
                for unit, why in store.redone.items()]
    for note in repaired:
        log.warning("repaired: %s", note)
    for unit in changes.renamed_units + ([] if keep_vanished else changes.vanished_units):
        store.remove(unit)
    for name in changes.vanished:
        log.warning("input file %r was committed but is gone; its rows are %s", name,
                    "kept" if keep_vanished else "removed")
    for column in changes.removed_kept:
        log.warning("task %r is no longer configured; committed files keep its column (output.removed_tasks: keep)",
                    column)
    return repaired
