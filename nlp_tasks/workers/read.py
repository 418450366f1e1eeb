"""Reading the corpus on the workers: a Ray Data datasource that tags every row with its place in its file.

Each row leaves the reader with two internal columns: the unit (input file) it belongs to and
its position in that file. Everything downstream is keyed by them: row ids for inputs without
an id column are made here ("<input file>:<position>"), part files are named after them, and
the driver commits a file once parts cover all its positions. No order has to be kept between
blocks, and no row passes through the driver.

Files are split at row-group boundaries into read tasks, and read tasks yield blocks of at
most `block_rows` rows, none spanning two files: one big file still feeds a whole actor pool.
Paths never become column values, unless hive partitioning was asked for.

An incremental run (tasks added or changed) reads committed output parts instead of their input
file: their rows already hold ids, partition values and the columns that stay; the columns to
compute again (or to drop) are dropped on reading, with their entries in the errors column.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from nlp_tasks.files import open_arrow
from nlp_tasks.secrets import redact, register_secrets
from nlp_tasks.workers.columns import ROW_COLUMN, UNIT_COLUMN

"""Columns of the job's own, dropped by the write stage."""


@dataclass(frozen=True)
class Fragment:
    """Consecutive row groups of one file to read, and where they start in the unit they belong to."""

    unit: str
    path: str
    name: str
    """The unit's recorded name: generated row ids are "<name>:<position>"."""
    row_groups: tuple[int, ...] | None
    """None: the whole file."""
    first_row: int
    rows: int
    partition: tuple[tuple[str, str], ...] = ()
    format: str = "parquet"
    """parquet, or arrow: then `row_groups` are record batches."""
    committed: tuple[str, ...] | None = None
    """None: rows of an input file. Else a committed output part, read with these columns dropped."""


def split_file(unit: str, path: str, name: str, row_group_rows: tuple[int, ...], target_rows: int,
               partition: tuple[tuple[str, str], ...] = (), file_format: str = "parquet") -> list[Fragment]:
    """Cut a file into fragments of whole row groups (record batches) of about `target_rows` rows each."""
    fragments: list[Fragment] = []
    groups: list[int] = []
    start = rows = 0
    for index, count in enumerate(row_group_rows):
        groups.append(index)
        rows += count
        if rows >= target_rows or index == len(row_group_rows) - 1:
            fragments.append(Fragment(unit, path, name, tuple(groups), start, rows, partition, file_format))
            start, rows, groups = start + rows, 0, []
    return fragments or [Fragment(unit, path, name, None, 0, 0, partition, file_format)]


class CorpusDatasource(Datasource):
    """Reads fragments of Parquet files into blocks tagged with unit and row position.

    Fragments are packed into read tasks of at least `block_rows` rows (small files together, a big
    file's fragment alone). Ray merges what a read task yields into blocks of up to 128 MiB, and
    hands them on only when the task ends: a task of a thousand small files from object storage would
    hold back every row, and so every write and commit, until its last file. One block goes to one
    actor: `num_blocks(rows)` is the block count to ask Ray for so that it cuts each read task's
    output into blocks of about `rows` rows, inside the read task (a separate repartition stage would
    cost the driver as much again).
    """

    def __init__(self, filesystem: Any, output_filesystem: Any, fragments: list[Fragment], schema: pa.Schema,
                 block_rows: int, generated_id_column: str | None, errors_column: str):
        super().__init__()
        self.filesystems = (filesystem, output_filesystem)
        self.schema = schema
        self.block_rows = block_rows
        self.generated_id_column = generated_id_column
        self.errors_column = errors_column
        self.groups: list[list[Fragment]] = [[]]
        rows = 0  # in the last group
        for fragment in fragments:
            if rows >= block_rows:
                self.groups.append([])
                rows = 0
            self.groups[-1].append(fragment)
            rows += fragment.rows

    def num_blocks(self, rows: int) -> int:
        largest = max(sum(f.rows for f in group) for group in self.groups)
        return len(self.groups) * max(1, -(-largest // rows))

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        return [self._task(group) for group in self.groups]

    def _task(self, fragments: list[Fragment]) -> ReadTask:
        filesystems, schema, block_rows, id_column, errors_column = (
            self.filesystems, self.schema, self.block_rows, self.generated_id_column, self.errors_column)
        metadata = BlockMetadata(num_rows=sum(f.rows for f in fragments), size_bytes=None, exec_stats=None,
                                 input_files=list(dict.fromkeys(f.name for f in fragments)))
        return ReadTask(lambda: read_fragments(filesystems, fragments, schema, block_rows, id_column, errors_column),
                        metadata)


def read_fragments(filesystems: tuple[Any, Any], fragments: list[Fragment], schema: pa.Schema, block_rows: int,
                   generated_id_column: str | None, errors_column: str) -> Iterator[pa.Table]:
    """Blocks of the fragments' rows; `filesystems`: the input's and the output's (for committed parts)."""
    for fragment in fragments:
        position = fragment.first_row
        for batch in redacted_errors(fragment, record_batches(filesystems[fragment.committed is not None], fragment,
                                                              block_rows)):
            table = pa.Table.from_batches([batch])
            if fragment.committed is None:
                table = tagged(table, fragment, position, schema, generated_id_column)
            else:
                table = without_tasks(table, fragment.committed, errors_column)
            yield with_place(table, fragment.unit, position)
            position += batch.num_rows


class ReadFailed(Exception):
    """A file could not be read on a worker; the message names it, without the credentials its URL carries."""


def redacted_errors(fragment: Fragment, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The batches, or one ReadFailed without the URL's credentials in place of the reader's error: what a worker
    raises reaches Ray Data's log, the worker's log file and the driver, and a client's error (aiohttp's, fsspec's)
    names the URL whole."""
    try:
        yield from batches
        return
    except Exception as error:  # noqa: BLE001 - any reader failure: its type and message kept, its secrets not
        register_secrets(fragment.path)
        message = f"input file {fragment.name!r}: {type(error).__name__}: {redact(str(error))}"
    raise ReadFailed(message)  # outside the handler: the reader's error is not even its context


def record_batches(filesystem: Any, fragment: Fragment, block_rows: int) -> Iterator[pa.RecordBatch]:
    """The fragment's rows in batches of at most `block_rows`."""
    if fragment.format == "parquet":
        import pyarrow.parquet as pq

        with filesystem.open(fragment.path, "rb") as handle:
            yield from pq.ParquetFile(handle).iter_batches(batch_size=block_rows, row_groups=fragment.row_groups)
        return

    source, _, batches = open_arrow(filesystem, fragment.path)
    with source:
        wanted = set(fragment.row_groups) if fragment.row_groups is not None else None
        for index, batch in enumerate(batches):
            if wanted is None or index in wanted:
                for start in range(0, batch.num_rows, block_rows):
                    yield batch.slice(start, block_rows)


def tagged(table: pa.Table, fragment: Fragment, first_row: int, schema: pa.Schema,
           generated_id_column: str | None) -> pa.Table:
    """An input file's rows cast to the input's schema, with partition values and (for inputs without ids)
    generated ids."""
    for key, value in fragment.partition:
        table = table.append_column(key, pa.array([value] * table.num_rows, pa.string()))
    if not table.schema.equals(schema):
        table = table.cast(schema)
    if generated_id_column:
        positions = pa.array(range(first_row, first_row + table.num_rows), pa.int64())
        ids = pc.binary_join_element_wise(fragment.name, pc.cast(positions, pa.string()), ":")
        table = table.add_column(0, generated_id_column, ids)
    return table


def without_tasks(table: pa.Table, tasks: tuple[str, ...], errors_column: str) -> pa.Table:
    """Committed rows without the columns of `tasks`, nor their entries in the errors column (in Arrow: a part
    holds up to `rows_per_file` rows, and an incremental run reads every committed file)."""
    import numpy as np

    errors = table.column(errors_column).combine_chunks()
    entries = pc.list_flatten(errors)
    keep = pc.invert(pc.is_in(entries.field("task"), value_set=pa.array(tasks, pa.string())))
    owners = pc.list_parent_indices(errors).filter(keep).to_numpy()
    offsets = np.concatenate([[0], np.cumsum(np.bincount(owners, minlength=len(errors)))]).astype(np.int32)
    kept = pa.ListArray.from_arrays(pa.array(offsets), entries.filter(keep), type=errors.type)
    table = table.drop_columns([column for column in tasks if column in table.column_names])
    return table.set_column(table.schema.get_field_index(errors_column), errors_column, kept)


def with_place(table: pa.Table, unit: str, first_row: int) -> pa.Table:
    """The rows with their unit and their positions in it."""
    table = table.append_column(UNIT_COLUMN, pa.array([unit] * table.num_rows, pa.string()))
    return table.append_column(ROW_COLUMN, pa.array(range(first_row, first_row + table.num_rows), pa.int64()))
