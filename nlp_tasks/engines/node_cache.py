"""A folder an engine builds from a checkpoint (a conversion, an export), made once per node however many actors
start together: under a file lock, into a temporary folder renamed into place, a stale partial build removed."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def built(target: Path, build: Callable[[Path], None]) -> Path:
    """`target`, built by `build(staging folder)` on this node once."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not target.is_dir():
            for stale in target.parent.glob(target.name + ".partial-*"):  # a build killed half-way
                shutil.rmtree(stale, ignore_errors=True)
            staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".partial-"))
            build(staging)
            staging.rename(target)
    return target
