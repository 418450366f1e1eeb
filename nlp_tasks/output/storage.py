"""The few filesystem operations the output's control files need to be safe: atomic writes and exclusive creates.

On a local disk an atomic write is a temporary file renamed into place, and an exclusive
create a temporary file hard-linked into place; on object storage a single PUT is atomic, and an exclusive create
is a conditional PUT (`If-None-Match: *`, which AWS S3 honours).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class TornFile(Exception):
    """A control file exists but does not hold valid JSON; the message names it."""


def is_local(filesystem: Any) -> bool:
    protocol = filesystem.protocol
    return "file" in (protocol if isinstance(protocol, (tuple, list)) else (protocol,))


def write_atomic(filesystem: Any, path: str, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old content or the new, never a mix."""
    if is_local(filesystem):
        with atomic_file(filesystem, path) as handle:
            handle.write(data)
    else:
        filesystem.pipe_file(path, data)  # one PUT


@contextmanager
def atomic_file(filesystem: Any, path: str) -> Iterator[Any]:
    """A file to write that appears at `path` whole when the block ends, or not at all: locally a temporary file
    renamed; on object storage the upload itself, discarded on an error (a store that keeps a torn object anyway
    leaves one that readers of `path` must pass over)."""
    local = is_local(filesystem)
    target = f"{path}.tmp-{uuid.uuid4().hex[:8]}" if local else path
    if local:
        filesystem.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    handle = filesystem.open(target, "wb")
    try:
        yield handle
    except BaseException:
        if local or not hasattr(handle, "discard"):
            try:
                handle.close()
            finally:
                filesystem.rm(target)
        else:
            handle.discard()
            handle.closed = True  # fsspec's buffered files: nothing flushed when it is collected
        raise
    try:
        handle.close()
    except BaseException:
        if local:
            filesystem.rm(target)
        raise
    if local:
        filesystem.mv(target, path)


def create_exclusive(filesystem: Any, path: str, data: bytes) -> bool:
    """Create `path` holding `data` unless it exists; True if this call created it.

    Readers never see it empty or half written: locally the data goes to a temporary file that is
    then hard-linked to `path` (atomic, and it fails if `path` exists).
    """
    try:
        if is_local(filesystem):
            temporary = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            write_atomic(filesystem, temporary, data)
            try:
                os.link(temporary, path)
            finally:
                os.unlink(temporary)
        else:
            filesystem.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    return True


def dump(data: dict) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True).encode()


def parse_json(path: str, raw: bytes) -> dict:
    """A control file's content; a torn or foreign one raises TornFile naming it."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TornFile(f"{path} is not valid JSON ({error}); it was cut short or written by something else") from None
    if not isinstance(data, dict):
        raise TornFile(f"{path} does not hold a JSON object")
    return data


def read_json(filesystem: Any, path: str) -> dict:
    return parse_json(path, filesystem.cat_file(path))
