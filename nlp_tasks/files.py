"""Reading Parquet and Arrow files' metadata without their rows: footers, layouts, versions. Driver and workers."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

FOOTER_READERS = 16
"""Input files whose footers are read at once (object stores answer each request in tens of ms)."""
TAIL_BYTES = 64 * 1024
"""Bytes read from the end of a file to get its footer in one request (more when the footer is bigger)."""
def version_of(info: dict) -> str | None:
    """A file's modification time or ETag, from its listing entry."""
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "updated", "modified"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return None


def read_footer(filesystem: Any, path: str, size: int) -> tuple[pq.FileMetaData, str]:
    """A Parquet file's metadata and the sha256 of its footer bytes, in one read (two if the footer is big)."""
    with filesystem.open(path, "rb") as handle:
        handle.seek(max(0, size - TAIL_BYTES))
        tail = handle.read()
        if len(tail) < 12 or tail[-4:] != b"PAR1":
            raise ValueError("no Parquet magic bytes at the end of the file")
        footer_length = struct.unpack("<I", tail[-8:-4])[0]
        if footer_length + 8 > len(tail):
            if footer_length + 12 > size:
                raise ValueError(f"footer length {footer_length} exceeds the file size {size}")
            handle.seek(size - footer_length - 8)
            tail = handle.read()
    footer = tail[-(footer_length + 8):]
    return pq.read_metadata(pa.py_buffer(b"PAR1" + footer)), hashlib.sha256(footer).hexdigest()


def open_arrow(filesystem: Any, path: str) -> tuple[Any, pa.Schema, Iterator[pa.RecordBatch]]:
    """The opened file (memory-mapped where local), its schema and its record batches, in the Arrow IPC stream
    format (`datasets`) or file format (Feather v2)."""
    source = pa.memory_map(path) if "file" in filesystem.protocol else filesystem.open(path, "rb")
    if source.read(6) == b"ARROW1":
        reader = pa.ipc.open_file(source)
        return source, reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))
    source.seek(0)
    reader = pa.ipc.open_stream(source)
    return source, reader.schema, iter(reader)


def read_arrow_layout(filesystem: Any, path: str, size: int) -> tuple[pa.Schema, tuple[int, ...], str]:
    """An Arrow IPC file's schema, rows per record batch, and the sha256 of its last bytes."""
    source, schema, batches = open_arrow(filesystem, path)
    with source:
        rows = tuple(batch.num_rows for batch in batches)
        source.seek(max(0, size - TAIL_BYTES))
        return schema, rows, hashlib.sha256(source.read()).hexdigest()
