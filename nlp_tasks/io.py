"""Input discovery and checks, before any model loads.

Paths are anything fsspec understands: a Parquet file, a directory of them, a glob, or a URI
(s3://, gs://, ...). Every input file's footer is read up front, so that an unreadable file
or a missing text column fails the job in one line that names the file, before inference.
"""

from __future__ import annotations

import glob as globbing
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from nlp_tasks.config import InputConfig


class InputError(Exception):
    """The input cannot be annotated as configured; the message names the file and problem."""


@dataclass(frozen=True)
class InputFiles:
    filesystem: Any
    """An fsspec filesystem."""
    rows: dict[str, int]
    """Row count of each input file, from its footer."""
    schema: pa.Schema
    quarantined: dict[str, str] = field(default_factory=dict)
    """Bad files set aside (with `bad_files: quarantine`), and why."""

    @property
    def num_rows(self) -> int:
        return sum(self.rows.values())


def arrow_filesystem(filesystem: Any) -> Any:
    """The pyarrow view of an fsspec filesystem, for Ray Data's readers and writers."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return PyFileSystem(FSSpecHandler(filesystem))


def _is_data_file(path: str) -> bool:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return not name.startswith(("_", ".")) and name.endswith((".parquet", ".pq"))


def list_input_files(path: str) -> tuple[Any, list[str]]:
    from fsspec.core import url_to_fs

    filesystem, root = url_to_fs(path)
    if globbing.has_magic(root):
        paths = [p for p in filesystem.glob(root) if filesystem.isfile(p)]
    elif filesystem.isdir(root):
        paths = [p for p in filesystem.find(root) if _is_data_file(p)]
    elif filesystem.exists(root):
        paths = [root]
    else:
        raise InputError(f"input.path {path!r}: no such file or directory")
    if not paths:
        raise InputError(f"input.path {path!r}: no Parquet files found")
    return filesystem, sorted(paths)


def file_problem(filesystem: Any, path: str, config: InputConfig, schema: pa.Schema | None) -> tuple[str | None, Any]:
    """Why one input file cannot be annotated (None if it can), and its footer metadata."""
    try:
        with filesystem.open(path, "rb") as handle:
            metadata = pq.ParquetFile(handle).metadata
            file_schema = metadata.schema.to_arrow_schema()
    except Exception as error:  # noqa: BLE001 - any reader failure means the same to the user
        return f"not a readable Parquet file ({error})", None
    for column in (config.text_column, config.id_column):
        if column is not None and column not in file_schema.names:
            return f"no column {column!r} (columns: {', '.join(file_schema.names)})", None
    if schema is not None and not file_schema.equals(schema):
        differing = sorted(set(map(str, file_schema)) ^ set(map(str, schema)))
        return f"schema differs from the first input file's (fields not in both: {'; '.join(differing)})", None
    return None, metadata


def inspect_input(config: InputConfig) -> InputFiles:
    """List the input files and check each one's footer and columns.

    A bad file fails the job (`bad_files: fail`) or is set aside and reported (`quarantine`).
    """
    filesystem, paths = list_input_files(config.path)
    schema, rows, quarantined = None, {}, {}
    for path in paths:
        problem, metadata = file_problem(filesystem, path, config, schema)
        if problem is not None:
            if config.bad_files == "fail":
                raise InputError(f"input file {path!r}: {problem}")
            quarantined[path] = problem
            continue
        schema = schema or metadata.schema.to_arrow_schema()
        rows[path] = metadata.num_rows
    if not rows:
        raise InputError(f"input.path {config.path!r}: no usable input file ({len(quarantined)} quarantined)")
    return InputFiles(filesystem, rows, schema, quarantined)
