"""Input discovery and checks, on the driver, before any model loads.

Paths are anything fsspec understands: a Parquet file, a directory of them, a glob, or a URI
(s3://, gs://, hf://datasets/... for the Hugging Face Hub). Arrow IPC files (`.arrow`) are read
too: a Hugging Face dataset saved with `save_to_disk` is a folder of them (one folder per split
for a DatasetDict). Every input file's footer is read up front (a few files at a time), so that
an unreadable file or a missing text column fails the job in one line that names the file,
before inference, and so that each file's identity (size, version, checksum of its last bytes)
is known: a committed file that changed since is annotated again. Only metadata is read here
(an Arrow stream has no footer: its record batches are counted, memory-mapped where local);
the rows are read by the workers (`read.py`).
"""

from __future__ import annotations

import glob as globbing
import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from nlp_tasks.config import InputConfig
from nlp_tasks.driver.delta_input import is_delta_table, snapshot_files
from nlp_tasks.errors import InputError
from nlp_tasks.files import FOOTER_READERS, read_arrow_layout, read_footer, version_of
from nlp_tasks.secrets import redact

PARQUET_SUFFIXES = (".parquet", ".pq")
ARROW_SUFFIX = ".arrow"
TEXT_TYPES = (pa.string(), pa.large_string(), pa.binary(), pa.large_binary())
"""Text column types, after view types are replaced (`without_views`)."""


@dataclass(frozen=True)
class InputFile:
    """One input file: where to read it, how to name it, and what identifies its content."""

    path: str
    """The path the filesystem opens."""
    name: str
    """The name recorded in row ids and the manifest: the path, or URL, without credentials."""
    rows: int
    row_group_rows: tuple[int, ...]
    """Rows of each Parquet row group, or of each Arrow record batch: the units the readers split files at."""
    size: int
    version: str | None
    """The file's modification time or ETag, as the filesystem reports it."""
    footer_sha256: str
    """sha256 of the Parquet footer; of an Arrow file's last bytes."""
    partition: tuple[tuple[str, str], ...] = ()
    """Hive partition values (`key=value` folders) when `input.partitioning: hive`."""
    format: str = "parquet"
    """parquet, or arrow (Arrow IPC, stream or file format)."""
    schema_key: str = ""
    """sha256 of the file's columns (names, widened types, nullability): `schema_key`."""

    @property
    def unit(self) -> str:
        """The file's id in the output: its parts and marker are named after it."""
        return hashlib.sha256(self.name.encode()).hexdigest()[:16]

    @property
    def identity(self) -> dict[str, Any]:
        """What the manifest records to tell, on a later run, whether the file changed."""
        return {"size": self.size, "version": self.version, "footer_sha256": self.footer_sha256}

    @property
    def layout(self) -> dict[str, Any]:
        """What the output records so that a later run need not read the file's footer while its listing entry
        stays the same (`recorded_file`)."""
        return {"row_groups": list(self.row_group_rows), "schema": self.schema_key}

    @property
    def content_key(self) -> tuple[int, str]:
        """What a renamed file keeps: its size and footer (modification times and ETags may change on a copy)."""
        return self.size, self.footer_sha256


@dataclass(frozen=True)
class InputFiles:
    filesystem: Any
    """An fsspec filesystem."""
    root: str
    """The file or folder input.path names (for a glob, the folder above its first wildcard)."""
    files: list[InputFile]
    schema: pa.Schema
    """The input columns as the workers read them (partition columns last), the same for every file."""
    quarantined: dict[str, str] = field(default_factory=dict)
    """Bad files set aside (with `bad_files: quarantine`), by name, and why."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Folders and files below input.path that readers pass over (`hidden_part`), and how many files they hold."""
    delta_version: int | None = None
    """The version read when input.path is a Delta table (its snapshot's files are the input: delta_input.py)."""

    @property
    def num_rows(self) -> int:
        return sum(f.rows for f in self.files)


def without_views(kind: pa.DataType) -> pa.DataType:
    """The type with Arrow's view and run-end encodings replaced by plain large types.

    Parquet readers may return string_view, binary_view or list_view columns; Ray cannot serialize
    them and pyarrow's take has no kernel for them. The values are the same; only the layout changes.
    """
    if kind == pa.string_view():
        return pa.large_string()
    if kind == pa.binary_view():
        return pa.large_binary()
    if pa.types.is_list_view(kind) or pa.types.is_large_list_view(kind) or pa.types.is_large_list(kind):
        return pa.large_list(without_views(kind.value_type))
    if pa.types.is_list(kind):
        return pa.list_(without_views(kind.value_type))
    if pa.types.is_fixed_size_list(kind):
        return pa.list_(without_views(kind.value_type), kind.list_size)
    if pa.types.is_struct(kind):
        return pa.struct([field.with_type(without_views(field.type)) for field in kind])
    if pa.types.is_run_end_encoded(kind):
        return without_views(kind.value_type)
    return kind


def widened(kind: pa.DataType) -> pa.DataType:
    """The type with 32-bit offsets widened to 64 (string -> large_string, ...): types that hold the same
    values compare equal after this, so that files written by different tools can be read as one input."""
    if kind in (pa.string(), pa.large_string()):
        return pa.large_string()
    if kind in (pa.binary(), pa.large_binary()):
        return pa.large_binary()
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return pa.large_list(widened(kind.value_type))
    if pa.types.is_fixed_size_list(kind):
        return pa.list_(widened(kind.value_type), kind.list_size)
    if pa.types.is_struct(kind):
        return pa.struct([field.with_type(widened(field.type)) for field in kind])
    return kind


def mapped(schema: pa.Schema, change) -> pa.Schema:
    return pa.schema([field.with_type(change(field.type)) for field in schema])


def schema_key(schema: pa.Schema) -> str:
    """What two files' schemas share when `inspect_input` takes them for one input: names, widened types and
    nullability, in order."""
    fields = [(field.name, str(field.type), field.nullable) for field in mapped(schema, widened)]
    return hashlib.sha256(repr(fields).encode()).hexdigest()


def recorded_file(path: str, info: dict, root: str, config: InputConfig, marker: dict) -> InputFile | None:
    """The input file as the output recorded it when it committed the file (its marker), where the listing entry
    is still the one recorded (size and version: a modification time or ETag that a rewrite changes); None where
    it is not, or the marker records no layout (an older output): then the footer is read."""
    try:
        identity, layout, version = marker["identity"], marker["layout"], version_of(info)
        groups = tuple(layout["row_groups"])
        if (version is None or identity["version"] != version or identity["size"] != int(info["size"])
                or not isinstance(layout["schema"], str) or not isinstance(identity["footer_sha256"], str)
                or not all(isinstance(rows, int) and rows >= 0 for rows in groups) or sum(groups) != marker["rows"]):
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return InputFile(path=path, name=redact(path), rows=sum(groups), row_group_rows=groups, size=int(info["size"]),
                     version=version, footer_sha256=identity["footer_sha256"],
                     partition=partition_values(root, path) if config.partitioning == "hive" else (),
                     format="arrow" if path.endswith(ARROW_SUFFIX) else "parquet", schema_key=layout["schema"])


def hidden_part(relative: str) -> str | None:
    """The folder or files of `relative` (a path below input.path) that Parquet readers (pyarrow.dataset, Spark,
    pandas) pass over: the first folder whose name starts with `_` or `.` (`_temporary/`, `.ipynb_checkpoints/`,
    another output's `__staging/`), with a trailing `/`, or for a file so named (`_SUCCESS`, `.part-0.crc`) the
    pattern of its folder's such files (`sub/_*`); None if there is none.

    input.path itself may name such a folder: only what is below it is looked at.
    """
    components = relative.strip("/").split("/")
    for depth, component in enumerate(components):
        if component.startswith(("_", ".")):
            if depth < len(components) - 1:
                return "/".join(components[:depth + 1]) + "/"
            return "/".join([*components[:depth], component[0] + "*"])
    return None


def is_data_file(path: str) -> bool:
    return path.endswith((*PARQUET_SUFFIXES, ARROW_SUFFIX))


def list_input_files(path: str) -> tuple[Any, str, dict[str, dict], dict[str, str], int | None]:
    """The filesystem, what the input path names (a file, a folder, a glob's folder), each input file's listing
    entry (size, version) by path, what was passed over below it (`hidden_part`), by folder or file, and the
    version read where the path names a Delta table (then its snapshot's files are the input files).

    A glob is only a glob where the path names no existing file (file names may hold `?`, `*` or `[`).
    """
    from fsspec.core import url_to_fs

    try:
        filesystem, root = url_to_fs(path)
        if filesystem.isfile(root):
            return filesystem, root, {root: filesystem.info(root)}, {}, None
        if is_delta_table(filesystem, root):
            version, files = snapshot_files(path, root)
            return filesystem, root, files, {}, version
        if filesystem.isdir(root):
            found = filesystem.find(root, detail=True)
        elif globbing.has_magic(root):
            found = {p: info for p, info in filesystem.glob(root, detail=True).items()
                     if info.get("type") != "directory"}
            root = re.split(r"[*?\[]", root)[0].rsplit("/", 1)[0]
        else:
            raise InputError(f"input.path {redact(path)!r}: no such file or directory")
    except (OSError, ValueError, ImportError) as error:
        raise InputError(f"input.path {redact(path)!r}: cannot list it ({type(error).__name__}: "
                         f"{redact(str(error))})") from None
    files, skipped = {}, {}
    for file, info in found.items():
        if (hidden := hidden_part(file[len(root):])) is not None:
            skipped[hidden] = skipped.get(hidden, 0) + 1
        elif is_data_file(file):
            files[file] = info
    return filesystem, root, files, {
        hidden: f"starts with {hidden.rstrip('/').rsplit('/', 1)[-1][0]!r}, as readers skip it: {count} file(s) not "
                "read (name the folder as input.path to read it)" for hidden, count in sorted(skipped.items())}, None


def text_type_problem(schema: pa.Schema, column: str) -> str | None:
    kind = schema.field(column).type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if kind not in TEXT_TYPES:
        return f"column {column!r} holds {kind}, not text"
    return None


def partition_values(root: str, path: str) -> tuple[tuple[str, str], ...]:
    """`key=value` folder names between the input root and the file (hive partitioning)."""
    folders = path[len(root):].strip("/").split("/")[:-1]
    return tuple(tuple(folder.split("=", 1)) for folder in folders if "=" in folder)


def inspect_file(filesystem: Any, path: str, info: dict, root: str,
                 config: InputConfig) -> tuple[InputFile, pa.Schema] | str:
    """One input file (with its footer read) and its schema, or why it cannot be annotated."""
    name = redact(path)
    file_format = "arrow" if path.endswith(ARROW_SUFFIX) else "parquet"
    try:
        if file_format == "arrow":
            schema, row_group_rows, footer_sha256 = read_arrow_layout(filesystem, path, int(info["size"]))
        else:
            metadata, footer_sha256 = read_footer(filesystem, path, int(info["size"]))
            schema = metadata.schema.to_arrow_schema()
            row_group_rows = tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
        schema = mapped(schema, without_views)
    except Exception as error:  # noqa: BLE001 - any reader failure means the same to the user
        return f"not a readable {'Arrow' if file_format == 'arrow' else 'Parquet'} file ({type(error).__name__}: " \
               f"{redact(str(error))})"
    for column in (config.text_column, config.id_column):
        if column is not None and column not in schema.names:
            return f"no column {column!r} (columns: {', '.join(schema.names)})"
    problem = text_type_problem(schema, config.text_column)
    if problem:
        return problem
    partition = partition_values(root, path) if config.partitioning == "hive" else ()
    for key, _ in partition:
        if key in schema.names:
            return f"partition folder {key}=... names a column the file already has"
    return InputFile(
        path=path, name=name, rows=sum(row_group_rows), row_group_rows=row_group_rows, size=int(info["size"]),
        version=version_of(info), footer_sha256=footer_sha256, partition=partition, format=file_format,
        schema_key=schema_key(schema)), schema


def inspect_input(config: InputConfig, recorded: dict[str, dict] | None = None) -> InputFiles:
    """List the input files and check each one's footer and columns, a few files at a time.

    `recorded`: the output's markers by input file name. A file whose listing entry is the one its marker recorded
    is taken as recorded (`recorded_file`), without reading its footer: a night with few new files reads few
    footers, plus the first file's for the input's schema.

    A bad file fails the job (`bad_files: fail`) or is set aside and reported (`quarantine`).
    Every file must have the first good file's schema, up to the width of offsets (string and large_string
    are the same column); the workers cast every file's rows to it.
    """
    filesystem, root, listing, skipped, version = list_input_files(config.path)
    if not listing:
        passed = f" (skipped, as readers do: {', '.join(skipped)})" if skipped else ""
        raise InputError(f"input.path {redact(config.path)!r}: no Parquet or Arrow files found{passed}")
    paths = sorted(listing)
    recorded = recorded or {}
    known = {path: file for path in paths if (marker := recorded.get(redact(path))) is not None
             and (file := recorded_file(path, listing[path], root, config, marker)) is not None}
    read = [path for path in paths if path not in known or path == paths[0]]

    def inspect(path: str) -> tuple[InputFile, pa.Schema] | str:
        return inspect_file(filesystem, path, listing[path], root, config)

    with ThreadPoolExecutor(FOOTER_READERS) as pool:
        inspected = dict(zip(read, pool.map(inspect, read)))
    files, schema, reference, quarantined = [], None, None, {}
    for path in paths:
        result = inspected.get(path)
        if result is None:
            file = known[path]
            result = (file, schema) if file.schema_key == reference else inspect(path)
        if isinstance(result, tuple):
            file, file_schema = result
            if schema is None:
                schema, reference = file_schema, schema_key(file_schema)
            keys = [key for key, _ in file.partition]
            same = mapped(file_schema, widened).equals(mapped(schema, widened))
            if same and (not files or keys == [key for key, _ in files[0].partition]):
                files.append(file)
                continue
            differing = sorted(set(map(str, file_schema)) ^ set(map(str, schema))) or [f"partition keys {keys}"]
            result = f"schema differs from the first input file's (fields not in both: {'; '.join(differing)})"
        if config.bad_files == "fail":
            raise InputError(f"input file {redact(path)!r}: {result}")
        quarantined[redact(path)] = result
    if not files:
        raise InputError(f"input.path {redact(config.path)!r}: no usable input file ({len(quarantined)} quarantined)")
    for key in dict(files[0].partition):
        schema = schema.append(pa.field(key, pa.string()))
    return InputFiles(filesystem, root, files, schema, quarantined, skipped, version)
