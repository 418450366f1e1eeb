"""Annotations follow the text: a task's value for a row is keyed by the row's content, and a value the output
already holds for that key is taken instead of computed again.

    key      blake2b-128 of the task's fingerprint (with a sample of its weights' bytes), the row's text and its second
             input (a question column)
    cache    `__manifest/reuse/<column>-<fingerprint>/<shard>/<name>.keys`: Parquet files of (key, value) sorted by
             key, one shard per first hex digit of the key; not named `.parquet`, so that readers of the output
             skip them (layout.py)
    look_up  a CPU stage before the pools: each row's key per task, and the value the cache holds for it
    reuse    the pools take a row whose values are all held, or (fused actors) that repeats an earlier row of its
             batch, without running the model (annotator.Rows.settled)
    store    the write stage adds the values the pools computed (`store_computed`); after a run, `merge_plan` names
             the files of a shard to merge so that a shard keeps a few files however many nights wrote to it

A cache entry is a fact about a text, true whether or not the part that holds the row was committed: the cache
lives outside the commit protocol, and a killed run's computed values serve its resume.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nlp_tasks.output.layout import REUSE
from nlp_tasks.output.storage import write_atomic
from nlp_tasks.text_checks import as_text, text_problem
from nlp_tasks.workers.columns import HELD_PREFIX, KEY_PREFIX

log = logging.getLogger(__name__)

KEY = pa.binary(16)
SUFFIX = ".keys"
SHARDS = "0123456789abcdef"
MERGE_AT = 8
"""A shard holding more files than this has its smallest merged after a run (merge_plan)."""


@dataclass(frozen=True)
class Reusable:
    """A task whose values are a function of its row's inputs: its column, fingerprint and second input's column."""

    column: str
    fingerprint: str
    second_column: str | None = None

    @property
    def folder(self) -> str:
        return f"{REUSE}/{self.column}-{self.fingerprint}"


@dataclass(frozen=True)
class Cache:
    """What the look-up and write stages need of a run's cache: the output's root, the tasks reused and the cache's
    files by task and shard, as listed before the run (list_cache)."""

    root: str
    tasks: list[Reusable]
    listing: dict[str, dict[str, list[tuple[str, int]]]]


def content_keys(task: Reusable, texts: list[Any], second_inputs: list[Any] | None) -> pa.Array:
    """Each row's key for `task`: of its fingerprint, its text and its second input; null where the text is not
    usable (the row gets its RowError, whatever the cache holds)."""
    keys: list[bytes | None] = []
    for row, value in enumerate(texts):
        if text_problem(value) is not None:
            keys.append(None)
            continue
        digest = hashlib.blake2b(digest_size=16, person=b"nlp-tasks-key")
        digest.update(task.fingerprint.encode())
        digest.update(b"\0" + as_text(value).encode("utf-8", "surrogatepass"))
        if second_inputs is not None:
            digest.update(b"\0" + second_input(second_inputs[row]).encode("utf-8", "surrogatepass"))
        keys.append(digest.digest())
    return pa.array(keys, type=KEY)


def second_input(value: Any) -> str:
    """A second input as its key reads it: text (from bytes too, as the task reads it) apart from anything else."""
    if isinstance(value, bytes) and text_problem(value) is None:
        value = as_text(value)
    if isinstance(value, str):
        return json.dumps(["text", value])
    return json.dumps([type(value).__name__, repr(value)])


def shard_of(keys: pa.Array) -> np.ndarray:
    """Each (non-null) key's shard: its first hex digit, as an index into SHARDS."""
    raw = np.frombuffer(keys.buffers()[1], dtype=np.uint8, count=(keys.offset + len(keys)) * 16)
    return raw[keys.offset * 16::16] >> 4


def list_cache(filesystem: Any, root: str, tasks: list[Reusable]) -> dict[str, dict[str, list[tuple[str, int]]]]:
    """The cache files of each task, by shard, with their sizes: what the driver hands the look-up stage and the
    merges (a shard keeps about MERGE_AT files)."""
    listing: dict[str, dict[str, list[tuple[str, int]]]] = {}
    for task in tasks:
        folder = f"{root}/{task.folder}"
        shards: dict[str, list[tuple[str, int]]] = {}
        if filesystem.exists(folder):
            for entry in filesystem.find(folder, detail=True).values():
                path = entry["name"]
                if path.endswith(SUFFIX):
                    shards.setdefault(path.rsplit("/", 2)[-2], []).append((path, int(entry.get("size") or 0)))
        listing[task.column] = {shard: sorted(files) for shard, files in shards.items()}
    return listing


ROW_GROUP_ROWS = 4096
"""Keys per row group of a cache file: a look-up reads the key column (64 KiB) of the row groups whose key range
holds a key it looks for, and the values of those that hold one."""


@functools.lru_cache(maxsize=4096)
def _footer(filesystem: Any, path: str) -> Any:
    """A cache file's Parquet footer, read once per process: a cache file is never rewritten (each name is new)."""
    import pyarrow.parquet as pq

    with filesystem.open(path, "rb") as handle:
        return pq.ParquetFile(handle).metadata


def _check_schema(schema: pa.Schema) -> None:
    """A cache file holds a `key` of 16 bytes and a `value`, nothing else (write_cache)."""
    if schema.names != ["key", "value"] or schema.field("key").type != KEY:
        raise ValueError(f"not a cache file: its columns are {schema}")


def _held_in_file(filesystem: Any, path: str, wanted: pa.Array, ordered: list[bytes]) -> list[pa.Table]:
    """The (key, value) rows of one cache file whose key is in `wanted` (`ordered`: the same keys, sorted)."""
    import pyarrow.parquet as pq

    metadata = _footer(filesystem, path)
    _check_schema(metadata.schema.to_arrow_schema())
    groups = []
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(0).statistics
        if stats is None or not stats.has_min_max or \
                bisect.bisect_right(ordered, stats.max) > bisect.bisect_left(ordered, stats.min):
            groups.append(group)
    held = []
    if groups:
        with filesystem.open(path, "rb") as handle:
            file = pq.ParquetFile(handle, metadata=metadata)
            for group in groups:
                keys = file.read_row_group(group, columns=["key"]).column("key")
                found = pc.is_in(keys, value_set=wanted)
                if pc.any(found).as_py():
                    values = file.read_row_group(group, columns=["value"]).column("value")
                    held.append(pa.table({"key": keys.filter(found), "value": values.filter(found)}))
    return held


def read_cache(filesystem: Any, paths: list[str], keys: pa.Array | None = None) -> pa.Table | None:
    """The (key, value) rows of cache files, those of `keys` only where given. A file that cannot be read, or is not
    a cache file, is passed over (its values are computed again), never trusted in part; where files disagree on
    the value's type, only those of the type most rows have are read (the pools check it against their task's)."""
    import pyarrow.parquet as pq

    wanted = None if keys is None else pc.unique(keys.drop_null())
    ordered = None if wanted is None else sorted(wanted.to_pylist())
    tables = []
    for path in paths:
        try:
            if wanted is None:
                with filesystem.open(path, "rb") as handle:
                    tables.append(pq.read_table(handle))
                _check_schema(tables[-1].schema)
            else:
                tables += _held_in_file(filesystem, path, wanted, ordered)
        except Exception as error:  # noqa: BLE001 - a torn or foreign file: its rows are computed again
            log.warning("reuse: cache file %s not read (%s: %s)", path, type(error).__name__, error)
    by_type: dict[pa.DataType, list[pa.Table]] = {}
    for table in tables:
        if table.num_rows:
            by_type.setdefault(table.schema.field("value").type, []).append(table)
    if len(by_type) > 1:
        log.warning("reuse: cache files of one task hold values of %d types (%s); reading the most common",
                    len(by_type), ", ".join(map(str, by_type)))
    return pa.concat_tables(max(by_type.values(), key=lambda same: sum(t.num_rows for t in same))) if by_type else None


def look_up(batch: pa.Table, *, filesystem: Any, cache: Cache, text_column: str) -> pa.Table:
    """The stage before the pools: each reusable task's keys, and the values the cache holds for them; a task whose
    column the batch holds (a refresh's carried column) is left alone."""
    texts = batch.column(text_column).to_pylist()
    for task in (task for task in cache.tasks if task.column not in batch.column_names):
        keys = content_keys(task, texts,
                            batch.column(task.second_column).to_pylist() if task.second_column else None)
        batch = batch.append_column(KEY_PREFIX + task.column, keys)
        shards = {SHARDS[shard] for shard in np.unique(shard_of(keys.drop_null()))}
        files = [path for shard in sorted(shards) for path, _ in cache.listing.get(task.column, {}).get(shard, [])]
        found = read_cache(filesystem, files, keys) if files else None
        if found is not None:
            at = pc.index_in(keys, value_set=found.column("key").combine_chunks())
            batch = batch.append_column(HELD_PREFIX + task.column, found.column("value").combine_chunks().take(at))
    return batch


def store_computed(batch: pa.Table, filesystem: Any, cache: Cache) -> None:
    """Add to the cache the values the pools computed in this batch (not those taken from it), once per key."""
    for task in cache.tasks:
        if KEY_PREFIX + task.column not in batch.column_names or task.column not in batch.column_names:
            continue
        keys, values = batch.column(KEY_PREFIX + task.column), batch.column(task.column)
        new = pc.and_(pc.is_valid(keys), pc.is_valid(values))
        if HELD_PREFIX + task.column in batch.column_names:
            new = pc.and_(new, pc.is_null(batch.column(HELD_PREFIX + task.column)))
        rows = pa.table({"key": keys, "value": values}).filter(new)
        if not rows.num_rows:
            continue
        rows = once_per_key(rows)
        shards = shard_of(rows.column("key").combine_chunks())
        for shard in np.unique(shards):
            write_cache(filesystem, f"{cache.root}/{task.folder}/{SHARDS[shard]}", rows.filter(pa.array(shards == shard)))


def once_per_key(rows: pa.Table) -> pa.Table:
    """The (key, value) rows with each key once: its first row."""
    keys = rows.column("key").combine_chunks()
    return rows.take(pc.index_in(pc.unique(keys), value_set=keys))


def write_cache(filesystem: Any, folder: str, rows: pa.Table) -> str:
    """One cache file of `rows`, sorted by key, written whole or not at all; returns its path."""
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    # no dictionary: keys are unique, and values rarely repeat (a dictionary tried on embeddings adds 40%)
    pq.write_table(rows.sort_by("key"), sink, row_group_size=ROW_GROUP_ROWS, use_dictionary=False,
                   compression="zstd")
    path = f"{folder}/{uuid.uuid4().hex}{SUFFIX}"
    write_atomic(filesystem, path, sink.getvalue().to_pybytes())
    return path


def merge_plan(files: list[tuple[str, int]]) -> list[str]:
    """Which files of a shard to merge: none while it holds MERGE_AT or fewer; else its smallest, enough to bring it
    to MERGE_AT, and more while the next is no bigger than those together (so a row is merged again only once its
    file has grown past the sum of the smaller ones: a logarithmic number of times)."""
    if len(files) <= MERGE_AT:
        return []
    ordered = sorted(files, key=lambda file: file[1])
    take = len(ordered) - MERGE_AT + 1
    total = sum(size for _, size in ordered[:take])
    while take < len(ordered) and ordered[take][1] <= total:
        total += ordered[take][1]
        take += 1
    return [path for path, _ in ordered[:take]]


def merge_files(filesystem: Any, folder: str, paths: list[str]) -> None:
    """Merge cache files into one (each key once), then delete them, those read_cache passed over too; a kill between
    the two leaves keys twice, with the same values, which look_up reads as once."""
    rows = read_cache(filesystem, paths)
    if rows is not None:
        write_cache(filesystem, folder, once_per_key(rows))
    for path in paths:
        filesystem.rm(path)
