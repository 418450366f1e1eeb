"""Writing annotated rows on the workers: staged Parquet parts, and a small record of each for the driver.

The last stage of the plan. A batch's rows are sorted by (unit, position) and cut into spans of
consecutive positions of one unit; each span becomes one Parquet part in the run's staging
folder, under a name unique to this attempt (a retried task writes a new file instead of
racing the old one). The stage returns one record per part: which rows it holds, where it was
staged, its size and footer checksum (what the marker records, to tell later whether the committed
part is still this one), who wrote it, and the counts the run report needs (errors by reason, labels
per task).
The driver commits a unit once its parts cover all its rows (`commit.py`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import socket
import struct
import uuid
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nlp_tasks.output.layout import STAGED_NAME
from nlp_tasks.workers.columns import DEFERRED_PREFIX, ROW_COLUMN, UNIT_COLUMN, is_internal
from nlp_tasks.workers.reuse import Cache, settle_deferred, store_computed
from nlp_tasks.workers.stats import calls_in

PART_RECORD = pa.schema([
    ("unit", pa.string()), ("first", pa.int64()), ("rows", pa.int64()), ("staged", pa.string()),
    ("size", pa.int64()), ("footer_sha256", pa.string()),
    ("writer", pa.string()), ("counts", pa.string()), ("calls", pa.string()), ("deferred", pa.int64()),
])
"""What the write stage returns per part: all the driver ever sees of the rows. A part with `deferred` rows (whose
value another batch of the night computes, reuse.settle_deferred) is not written: its `staged` is empty."""


def spans(units: np.ndarray, positions: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) slices of a (unit, position)-sorted batch holding consecutive positions of one unit."""
    breaks = np.flatnonzero((units[1:] != units[:-1]) | (positions[1:] != positions[:-1] + 1)) + 1
    edges = [0, *breaks.tolist(), len(positions)]
    return list(itertools.pairwise(edges))


def label_values(column: pa.ChunkedArray) -> pa.Array | None:
    """The labels a task column holds, for its distribution: each row's best label, or every entity's type."""
    array = column.combine_chunks().drop_null()
    kind = array.type
    if not len(array):
        return None
    if pa.types.is_list(kind) and pa.types.is_struct(kind.value_type):
        if kind.value_type.get_field_index("entity_group") >= 0:
            return pc.list_flatten(array).field("entity_group")
        if kind.value_type.get_field_index("label") >= 0:  # top_k lists: best first
            return pc.list_element(array, 0).field("label")
    if pa.types.is_struct(kind) and kind.get_field_index("label") >= 0:
        return array.field("label")
    if pa.types.is_struct(kind) and kind.get_field_index("labels") >= 0:
        return pc.list_element(array.field("labels"), 0)
    return None


def measured_values(column: pa.ChunkedArray) -> tuple[str, pa.Array] | None:
    """For a task whose output is not a label, the number that describes it best, and its name: an embedding's
    norm, a generated text's length in words, an answer's (or the best mask fill's) score."""
    array = column.combine_chunks().drop_null()
    kind = array.type
    if not len(array):
        return None
    if pa.types.is_list(kind) and pa.types.is_floating(kind.value_type):
        return "embedding norm", pc.sqrt(_squared_sums(array))
    if pa.types.is_struct(kind) and kind.get_field_index("summary") >= 0:
        array, kind = array.field("summary"), pa.string()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "length in words", pc.list_value_length(pc.utf8_split_whitespace(array))
    if pa.types.is_list(kind) and pa.types.is_struct(kind.value_type):
        array, kind = pc.list_element(array.filter(pc.greater(pc.list_value_length(array), 0)), 0), kind.value_type
    if pa.types.is_struct(kind) and kind.get_field_index("score") >= 0 and kind.get_field_index("label") < 0:
        return "score", array.field("score")
    return None


def _squared_sums(array: pa.Array) -> pa.Array:
    """Each list's sum of squares."""
    values = np.asarray(pc.list_flatten(array).to_numpy(zero_copy_only=False), dtype=np.float64)
    offsets = np.asarray(array.offsets.to_numpy(), dtype=np.int64)
    running = np.concatenate([[0.0], np.cumsum(values ** 2)])
    return pa.array(running[offsets[1:] - offsets[0]] - running[offsets[:-1] - offsets[0]])


def value_bins(values: pa.Array) -> dict[str, int]:
    """Counts of the values rounded down to two significant digits (zero for values that are not positive and
    finite): bins that add up across parts and that a page can merge. Counted per distinct bin, not per row."""
    numbers = np.asarray(values.drop_null().to_numpy(zero_copy_only=False), dtype=np.float64)
    shown = (numbers > 0) & np.isfinite(numbers)
    steps = 10.0 ** (np.floor(np.log10(numbers[shown])) - 1)
    binned, counts = np.unique(np.floor(numbers[shown] / steps + 1e-9) * steps, return_counts=True)
    bins = {f"{value:.6g}": int(count) for value, count in zip(binned, counts)}
    if (hidden := int((~shown).sum())):
        bins["0"] = bins.get("0", 0) + hidden
    return bins


ERROR_ROW_IDS = 3
"""Row ids a part reports per error reason: enough for a person to look a few rows up."""


def part_counts(part: pa.Table, tasks: list[str], errors_column: str, id_column: str | None = None) -> dict[str, Any]:
    """The run report's counts for one part: rows with errors, errors by (task, message) with a few row ids each,
    labels per task, and for other outputs a binned number (measured_values)."""
    errors = part.column(errors_column).combine_chunks()
    reasons = Counter((e["task"], e["message"]) for e in pc.list_flatten(errors).to_pylist())
    examples: dict[tuple[str, str], list[str]] = {}
    if reasons and id_column in part.column_names:
        for row_id, row_errors in zip(part.column(id_column).to_pylist(), errors.to_pylist()):
            for error in row_errors or []:
                ids = examples.setdefault((error["task"], error["message"]), [])
                if len(ids) < ERROR_ROW_IDS and str(row_id) not in ids:
                    ids.append(str(row_id))
    labels, values = {}, {}
    for task in (task for task in tasks if task in part.column_names):
        found = label_values(part.column(task))
        if found is not None:
            labels[task] = {item["values"]: item["counts"] for item in pc.value_counts(found.drop_null()).to_pylist()}
        elif (measured := measured_values(part.column(task))) is not None:
            measure, numbers = measured
            values[task] = [measure, value_bins(numbers)]
    return {
        "rows_with_errors": pc.sum(pc.greater(pc.list_value_length(errors), 0)).as_py() or 0,
        "errors": [[task, message, count, examples.get((task, message), [])]
                   for (task, message), count in reasons.items()],
        "labels": labels,
        "values": values,
    }


def footer_sha256(data: pa.Buffer) -> str:
    """sha256 of a Parquet file's footer with its length and magic (the bytes files.read_footer checksums)."""
    view = memoryview(data)
    footer_length = struct.unpack("<I", view[-8:-4])[0]
    return hashlib.sha256(view[-(footer_length + 8):]).hexdigest()


def output_columns(batch: pa.Table, columns: list[str], errors_column: str) -> pa.Table:
    """The batch's output columns in one order for every part, whatever their path here (an input file's rows
    or a committed part's): `columns` first, then any other carried column, then the errors."""
    names = [c for c in columns if c in batch.column_names]
    names += [c for c in batch.column_names if c not in names and not is_internal(c) and c != errors_column]
    return batch.select([*names, errors_column])


def write_parts(batch: pa.Table, *, filesystem: Any, staging: str, tasks: list[str], columns: list[str],
                errors_column: str, id_column: str | None = None, part_names: str = STAGED_NAME,
                cache: Cache | None = None) -> pa.Table:
    """Write a batch's spans of consecutive rows as staged parts, and the values the pools computed to the `cache`
    (reuse.py); return one PART_RECORD per part."""
    import pyarrow.parquet as pq
    import ray

    if cache is not None:
        store_computed(batch, filesystem, cache)
        batch = settle_deferred(batch, filesystem, cache)
    batch = batch.sort_by([(UNIT_COLUMN, "ascending"), (ROW_COLUMN, "ascending")])
    units = batch.column(UNIT_COLUMN).to_numpy(zero_copy_only=False)
    positions = batch.column(ROW_COLUMN).to_numpy()
    deferred = deferred_rows(batch)
    rows = output_columns(batch, columns, errors_column)
    writer = f"{socket.gethostname()}/node {ray.get_runtime_context().get_node_id()[:12]}/pid {os.getpid()}"
    records = []
    filesystem.makedirs(staging, exist_ok=True)  # on a node that has not seen the output folder yet
    for start, end in spans(units, positions):
        unit, first = str(units[start]), int(positions[start])
        part = rows.slice(start, end - start)
        record = {"unit": unit, "first": first, "rows": end - start, "staged": "", "size": 0, "footer_sha256": "",
                  "writer": writer, "counts": json.dumps(part_counts(part, tasks, errors_column, id_column)),
                  "calls": json.dumps(calls_in(batch.slice(start, end - start))),
                  "deferred": int(deferred[start:end].sum())}
        if not record["deferred"]:
            record["staged"] = f"{staging}/" + part_names.format(unit=unit, first=first, nonce=uuid.uuid4().hex[:8])
            sink = pa.BufferOutputStream()
            pq.write_table(part, sink)
            data = sink.getvalue()
            with filesystem.open(record["staged"], "wb") as handle:
                handle.write(data)
            record.update(size=data.size, footer_sha256=footer_sha256(data))
        records.append(record)
    return pa.Table.from_pylist(records, schema=PART_RECORD)


def deferred_rows(batch: pa.Table) -> np.ndarray:
    """Whether each row still waits for a value another batch computes (reuse.settle_deferred)."""
    waiting = np.zeros(batch.num_rows, dtype=bool)
    for name in (name for name in batch.column_names if name.startswith(DEFERRED_PREFIX)):
        waiting |= pc.fill_null(batch.column(name), False).to_numpy()
    return waiting
