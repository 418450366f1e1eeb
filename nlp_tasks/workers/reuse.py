"""Annotations follow the text: a task's value for a row is keyed by the row's content, and a value the output
already holds for that key is taken instead of computed again.

    key      blake2b-128 of the task's fingerprint (with a sample of its weights' bytes), the row's text and its second
             input (a question column)
    cache    `__manifest/reuse/<column>-<fingerprint>/<shard>/<name>.keys`: Parquet files of (key, value) sorted by
             key, one shard per first hex digit of the key; not named `.parquet`, so that readers of the output
             skip them (layout.py)
    look_up  a CPU stage before the pools: each row's key per task, and the value the cache holds for it
    claims   the night's keys, in one actor (`Claims`): the first batch to miss a key computes it; a later batch
             takes the value where the first's write stage stored it already, else defers the row to it
    reuse    the pools take a row whose values are all held, that is deferred, or (fused actors) that repeats an
             earlier row of its batch, without running the model (annotator.Rows.settled)
    settle   the write stage gives a deferred row the value its key's first batch stored (`settle_deferred`); a part
             with a row still deferred is not written, and the driver annotates its input file again once the run
             is over, from the cache (driver/execute.py)
    store    the write stage adds the values the pools computed (`store_computed`); after a run, `merge_plan` names
             the files of a shard to merge so that a shard keeps a few files however many nights wrote to it

A cache entry is a fact about a text, true whether or not the part that holds the row was committed: the cache
lives outside the commit protocol, and a killed run's computed values serve its resume.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nlp_tasks.output.layout import REUSE
from nlp_tasks.output.storage import atomic_file
from nlp_tasks.text_checks import as_text, text_problem
from nlp_tasks.workers.columns import DEFERRED_PREFIX, HELD_PREFIX, KEY_PREFIX

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
    """What the look-up and write stages need of a run's cache: the output's root, the tasks reused, the cache's
    files by task and shard, as listed before the run (list_cache), and the night's `Claims` actor (None: every
    batch computes what the cache lacks)."""

    root: str
    tasks: list[Reusable]
    listing: dict[str, dict[str, list[tuple[str, int]]]]
    claims: Any = None


CLAIMS_HELD = 10_000_000
"""Keys the night's Claims holds at most (about 1 GB): past that, a batch computes a key the cache lacks, repeated
or not, as before claims. A night that recomputes a whole corpus (a task's model changed) misses every key."""


class Claims:
    """The keys the night's batches missed in the cache (a Ray actor, one per run): the first batch to miss a key
    claims it and computes it; a later one is told where the first stored its value, or that it is not stored yet.
    It holds each missed key once (about 100 bytes), up to CLAIMS_HELD."""

    def __init__(self):
        self.stored_in: dict[bytes, int] = {}
        """By key: the index in `paths` of the cache file that holds its value, or -1 while none does."""
        self.paths: list[str] = []

    def claim(self, keys: list[bytes]) -> list[bool | str]:
        """For each key: True where this call claims it first (or claims are full), else the cache file its value
        is in, or False."""
        answers: list[bool | str] = []
        for key in keys:
            where = self.stored_in.get(key)
            if where is None and len(self.stored_in) < CLAIMS_HELD:
                self.stored_in[key] = -1
            answers.append(True if where is None else False if where == -1 else self.paths[where])
        return answers

    def stored(self, files: list[tuple[list[bytes], str]]) -> None:
        """The write stage wrote the values of these claimed keys to these cache files."""
        for keys, path in files:
            self.paths.append(path)
            for key in keys:
                if key in self.stored_in:
                    self.stored_in[key] = len(self.paths) - 1

    def where(self, keys: list[bytes]) -> list[str | None]:
        """The cache file holding each key's value, where one does."""
        return [self.paths[at] if (at := self.stored_in.get(key, -1)) >= 0 else None for key in keys]


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
CACHE_FILE = dict(use_dictionary=False, compression="zstd")
"""How cache files are written. No dictionary: keys are unique, and values rarely repeat (a dictionary tried on
embeddings adds 40%)."""


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


def readable_files(filesystem: Any, paths: list[str]) -> list[tuple[str, Any]]:
    """The (path, footer) of the cache files whose footer reads and that are a cache file's shape; where they
    disagree on the value's type, those of the type most rows have (the pools check it against their task's). The
    others are passed over: their rows are computed again, never trusted in part."""
    by_type: dict[pa.DataType, list[tuple[str, Any]]] = {}
    for path in paths:
        try:
            metadata = _footer(filesystem, path)
            schema = metadata.schema.to_arrow_schema()
            _check_schema(schema)
        except Exception as error:  # noqa: BLE001 - a torn or foreign file: its rows are computed again
            log.warning("reuse: cache file %s not read (%s: %s)", path, type(error).__name__, error)
            continue
        by_type.setdefault(schema.field("value").type, []).append((path, metadata))
    if len(by_type) > 1:
        log.warning("reuse: cache files of one task hold values of %d types (%s); reading the most common",
                    len(by_type), ", ".join(map(str, by_type)))
    return max(by_type.values(), key=lambda files: sum(meta.num_rows for _, meta in files)) if by_type else []


def _rows_of(filesystem: Any, path: str, metadata: Any, may_hold: Any, keep: Any) -> pa.Table | None:
    """The (key, value) rows of one cache file that `keep` selects (a function of the key column), read from the
    row groups whose key range `may_hold` accepts (a function of their min and max key)."""
    import pyarrow.parquet as pq

    groups = []
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(0).statistics
        if stats is None or not stats.has_min_max or may_hold(stats.min, stats.max):
            groups.append(group)
    held = []
    if groups:
        with filesystem.open(path, "rb") as handle:
            file = pq.ParquetFile(handle, metadata=metadata)
            for group in groups:
                keys = file.read_row_group(group, columns=["key"]).column("key")
                found = keep(keys)
                if pc.any(found).as_py():
                    values = file.read_row_group(group, columns=["value"]).column("value")
                    held.append(pa.table({"key": keys.filter(found), "value": values.filter(found)}))
    return pa.concat_tables(held) if held else None


def read_cache(filesystem: Any, paths: list[str], keys: pa.Array | None = None) -> pa.Table | None:
    """The (key, value) rows of cache files (readable_files), those of `keys` only where given."""
    may_hold, keep = overlapping(bytes(16), None), within(bytes(16), None)
    if keys is not None:
        wanted = pc.unique(keys.drop_null())
        may_hold, keep = any_of(sorted(wanted.to_pylist())), functools.partial(pc.is_in, value_set=wanted)
    tables = []
    for path, metadata in readable_files(filesystem, paths):
        try:
            found = _rows_of(filesystem, path, metadata, may_hold, keep)
        except Exception as error:  # noqa: BLE001 - torn past its footer: its rows are computed again
            log.warning("reuse: cache file %s not read (%s: %s)", path, type(error).__name__, error)
            continue
        if found is not None:
            tables.append(found)
    return pa.concat_tables(tables) if tables else None


def look_up(batch: pa.Table, *, filesystem: Any, cache: Cache, text_column: str) -> pa.Table:
    """The stage before the pools: each reusable task's keys, the values the cache holds for them, and (with
    claims) which rows another batch of the night computes; a task whose column the batch holds (a refresh's
    carried column) is left alone."""
    texts = batch.column(text_column).to_pylist()
    for task in (task for task in cache.tasks if task.column not in batch.column_names):
        keys = content_keys(task, texts,
                            batch.column(task.second_column).to_pylist() if task.second_column else None)
        batch = batch.append_column(KEY_PREFIX + task.column, keys)
        shards = {SHARDS[shard] for shard in np.unique(shard_of(keys.drop_null()))}
        files = [path for shard in sorted(shards) for path, _ in cache.listing.get(task.column, {}).get(shard, [])]
        held = values_for(keys, read_cache(filesystem, files, keys) if files else None)
        if cache.claims is not None:
            held, deferred = claimed(filesystem, cache.claims, keys, held)
            batch = batch.append_column(DEFERRED_PREFIX + task.column, deferred)
        if held is not None:
            batch = batch.append_column(HELD_PREFIX + task.column, held)
    return batch


def values_for(keys: pa.Array, found: pa.Table | None) -> pa.Array | None:
    """Each key's value in `found` (key, value) rows, null where it has none."""
    if found is None:
        return None
    return found.column("value").combine_chunks().take(pc.index_in(keys, value_set=found.column("key").combine_chunks()))


def ask(claims: Any, method: str, *args: Any) -> Any:
    """A call to the night's Claims actor; None where it cannot answer (the rows are computed here, or again)."""
    import ray

    try:
        return ray.get(getattr(claims, method).remote(*args))
    except Exception as error:  # noqa: BLE001 - claims only save work: a lost actor costs computing again
        log.warning("reuse: the run's claims did not answer (%s: %s)", type(error).__name__, error)
        return None


def claimed(filesystem: Any, claims: Any, keys: pa.Array, held: pa.Array | None) -> tuple[pa.Array | None, pa.Array]:
    """Claim the keys the cache lacks: `held` with the values other batches of the night stored already, and
    whether each row waits for another row's value (its `DEFERRED_PREFIX` column): a row of a key another batch
    claimed, or a later row of a key this batch claimed (fused pools take it from the first, `same_as`; split
    stages, whose batches Ray Data may cut anew, from the cache)."""
    missing = pc.is_valid(keys) if held is None else pc.and_(pc.is_valid(keys), pc.is_null(held))
    wanted = pc.unique(keys.filter(missing))
    answers = ask(claims, "claim", wanted.to_pylist()) if len(wanted) else None
    if answers is None:
        return held, pa.nulls(len(keys), pa.bool_())
    stored = [path for path in answers if isinstance(path, str)]
    if stored:
        found = values_for(keys, read_cache(filesystem, sorted(set(stored)), keys))
        if found is not None and (held is None or found.type == held.type):
            held = found if held is None else pc.coalesce(held, found)
    won = wanted.filter(pa.array([answer is True for answer in answers]))
    claimers = np.zeros(len(keys), dtype=bool)
    claimers[pc.index_in(won, value_set=keys).to_numpy(zero_copy_only=False).astype(np.int64)] = True
    deferred = pc.and_(missing, pa.array(~claimers))
    if held is not None:
        deferred = pc.and_(deferred, pc.is_null(held))
    return held, deferred


def store_computed(batch: pa.Table, filesystem: Any, cache: Cache) -> None:
    """Add to the cache the values the pools computed in this batch (not those taken from it), once per key, and
    tell the night's claims where they are."""
    written: list[tuple[list[bytes], str]] = []
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
            part = rows.filter(pa.array(shards == shard))
            path = write_cache(filesystem, f"{cache.root}/{task.folder}/{SHARDS[shard]}", part)
            written.append((part.column("key").to_pylist(), path))
    if written and cache.claims is not None:
        ask(cache.claims, "stored", written)


def settle_deferred(batch: pa.Table, filesystem: Any, cache: Cache) -> pa.Table:
    """The batch with each deferred row's value taken from the cache file its key's first batch stored it in; its
    DEFERRED_PREFIX columns then say which rows still wait (a row the pools gave a value, from an earlier row of
    its batch, waits no more)."""
    for task in cache.tasks:
        flag = DEFERRED_PREFIX + task.column
        if flag not in batch.column_names or task.column not in batch.column_names:
            continue
        values = batch.column(task.column).combine_chunks()
        waiting = pc.and_(pc.fill_null(batch.column(flag), False), pc.is_null(values)).combine_chunks()
        if pc.any(waiting).as_py():
            keys = batch.column(KEY_PREFIX + task.column).combine_chunks()
            wanted = pc.unique(keys.filter(waiting))
            told = ask(cache.claims, "where", wanted.to_pylist()) if cache.claims is not None else None
            paths = [path for path in told or [] if path]
            found = values_for(keys, read_cache(filesystem, sorted(set(paths)), wanted)) if paths else None
            if found is not None and found.type == values.type:
                taken = pc.and_(waiting, pc.is_valid(found))
                at = batch.schema.get_field_index(task.column)
                batch = batch.set_column(at, batch.schema.field(at), pc.if_else(taken, found, values))
                waiting = pc.and_(waiting, pc.invert(taken))
        batch = batch.set_column(batch.schema.get_field_index(flag), flag, waiting)
    return batch


def once_per_key(rows: pa.Table) -> pa.Table:
    """The (key, value) rows with each key once: its first row."""
    keys = rows.column("key").combine_chunks()
    return rows.take(pc.index_in(pc.unique(keys), value_set=keys))


def write_cache(filesystem: Any, folder: str, rows: pa.Table) -> str:
    """One cache file of `rows`, sorted by key, written whole or not at all; returns its path."""
    import pyarrow.parquet as pq

    path = f"{folder}/{uuid.uuid4().hex}{SUFFIX}"
    with atomic_file(filesystem, path) as sink:
        pq.write_table(rows.sort_by("key"), sink, row_group_size=ROW_GROUP_ROWS, **CACHE_FILE)
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


MERGE_BYTES = 256 << 20
"""Bytes of values (as Parquet counts them, uncompressed) a merge holds at once: it merges a shard's files one key
range at a time, so that its memory stays about this however big the shard grows."""


def merge_files(filesystem: Any, folder: str, paths: list[str]) -> None:
    """Merge cache files into one (each key once), a key range at a time, then delete them (those readable_files
    passed over too); a kill between the two leaves keys twice, with the same values, which look_up reads as once."""
    import pyarrow.parquet as pq

    files = readable_files(filesystem, paths)
    if files:
        schema = pa.schema([("key", KEY), ("value", files[0][1].schema.to_arrow_schema().field("value").type)])
        with atomic_file(filesystem, f"{folder}/{uuid.uuid4().hex}{SUFFIX}") as sink, \
                pq.ParquetWriter(sink, schema, **CACHE_FILE) as writer:
            for low, high in key_ranges([metadata for _, metadata in files]):
                parts = []
                for path, metadata in list(files):
                    try:
                        found = _rows_of(filesystem, path, metadata, overlapping(low, high), within(low, high))
                    except Exception as error:  # noqa: BLE001 - torn past its footer: passed over from here on
                        log.warning("reuse: cache file %s not merged (%s: %s)", path, type(error).__name__, error)
                        files.remove((path, metadata))
                        continue
                    if found is not None:
                        parts.append(found.cast(schema))
                if parts:
                    writer.write_table(once_per_key(pa.concat_tables(parts)).sort_by("key"),
                                       row_group_size=ROW_GROUP_ROWS)
    for path in paths:
        filesystem.rm(path)


def key_ranges(footers: list[Any]) -> list[tuple[bytes, bytes | None]]:
    """[low, high) ranges of keys (high None: no bound) that cut the files' rows into parts of about MERGE_BYTES:
    keys are 128-bit hashes, so equal spans of the files' keys hold about equal rows."""
    groups = [footer.row_group(group) for footer in footers for group in range(footer.num_row_groups)]
    count = max(1, -(-sum(group.total_byte_size for group in groups) // MERGE_BYTES))
    stats = [group.column(0).statistics for group in groups]
    first, last = 0, (1 << 128) - 1
    if stats and all(stat is not None and stat.has_min_max for stat in stats):
        first = min(int.from_bytes(stat.min, "big") for stat in stats)
        last = max(int.from_bytes(stat.max, "big") for stat in stats)
    cuts = [(first + (last + 1 - first) * step // count).to_bytes(16, "big") for step in range(1, count)]
    return list(itertools.pairwise([bytes(16), *cuts, None]))


def overlapping(low: bytes, high: bytes | None):
    """Whether a row group of keys min..max may hold keys of [low, high)."""
    return lambda first, last: last >= low and (high is None or first < high)


def any_of(ordered: list[bytes]):
    """Whether a row group of keys min..max may hold one of the `ordered` keys."""
    return lambda first, last: bisect.bisect_right(ordered, last) > bisect.bisect_left(ordered, first)


def within(low: bytes, high: bytes | None):
    """Which keys of a column lie in [low, high)."""
    def select(keys):
        inside = pc.greater_equal(keys, pa.scalar(low, KEY))
        return inside if high is None else pc.and_(inside, pc.less(keys, pa.scalar(high, KEY)))
    return select
