"""A Delta Lake table as the input: the data files of its current snapshot, read as any Parquet input.

The log says which files make up the table now; each is then an input file like any other (footer read,
identity, row ids "<file>:<position>", resume and change detection), read by the workers' own reader. A new
table version that adds files brings new input files; one that removes files (a DELETE, an OPTIMIZE) makes
their input files vanish, and their rows leave the output (`vanished_inputs` does not apply: a file the
snapshot no longer lists holds no row of the table), while the files it added are annotated. Tables whose
snapshot needs more than its files to read (deletion vectors, column mapping) are refused in one line.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote

from nlp_tasks.errors import InputError
from nlp_tasks.output.delta_layout import require_deltalake, storage_options
from nlp_tasks.secrets import redact

DELTA_LOG = "_delta_log"


def is_delta_table(filesystem: Any, root: str) -> bool:
    return filesystem.isdir(root) and filesystem.exists(f"{root.rstrip('/')}/{DELTA_LOG}")


def table_uri(path: str) -> str:
    return path.rstrip("/") if "://" in path else os.path.abspath(path)


def snapshot_files(path: str, root: str) -> tuple[int, dict[str, dict]]:
    """The table's current version, and its data files as a listing would give them (path -> size, mtime)."""
    import pyarrow as pa

    require_deltalake("input.path")  # one line naming the extra to install, before the import that would fail
    from deltalake import DeltaTable
    uri = table_uri(path)
    try:
        table = DeltaTable(uri, storage_options=storage_options(uri))
        features = set(table.protocol().reader_features or [])
        actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    except Exception as error:  # noqa: BLE001 - delta-rs raises its own types for an unreadable log
        raise InputError(f"input.path {redact(path)!r}: cannot read its Delta log ({type(error).__name__}: "
                         f"{redact(str(error))})") from None
    unsupported = features & {"deletionVectors", "columnMapping"}
    if unsupported or table.metadata().configuration.get("delta.columnMapping.mode", "none") != "none":
        raise InputError(f"input.path {redact(path)!r}: a Delta table with {', '.join(sorted(unsupported)) or 'column mapping'}"
                         " cannot be read file by file; rewrite it without (REORG / a copy)")
    files = {}
    for action in actions:
        if action.get("deletionVector.storageType") is not None:
            raise InputError(f"input.path {redact(path)!r}: file {action['path']!r} has deleted rows recorded in a "
                             "deletion vector, which cannot be read file by file; run OPTIMIZE or REORG PURGE first")
        files[f"{root.rstrip('/')}/{unquote(action['path'])}"] = {
            "size": action["size_bytes"], "mtime": action["modification_time"], "type": "file"}
    return table.version(), files
