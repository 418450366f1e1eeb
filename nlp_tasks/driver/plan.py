"""The Ray Data plan: read the pending files -> look up reusable values -> one actor pool per model -> write staged
parts.

Every stage runs on the workers. The reader tags rows with their input file and position
(`read.py`); tasks on the same checkpoint share one pool, fused or split (`pools.py`, as
`build_processor` annotates), chained so that the input is read once however many tasks there
are, after a stage that takes each row's values from the output where it holds them for the same
text (`reuse.py`); the last stage writes each batch's rows as staged Parquet parts (`write.py`) and returns one
small record per part. The driver only iterates over those records and commits (`job.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray

from nlp_tasks.config import JobConfig, TaskSpec
from nlp_tasks.driver.changes import Refresh
from nlp_tasks.driver.commits import COMMITTERS
from nlp_tasks.driver.compute import READ_CPUS, WRITE_CPUS, PoolSettings
from nlp_tasks.driver.inputs import InputFile, InputFiles
from nlp_tasks.driver.pools import Pool, Stage, annotation_stages, run_stages
from nlp_tasks.output.layout import STAGED_NAME
from nlp_tasks.workers.read import CorpusDatasource, Fragment, split_file
from nlp_tasks.workers.reuse import Cache, look_up
from nlp_tasks.workers.write import write_parts

FRAGMENT_ROWS = 65_536
"""Rows per read task of a big file: it is cut (at row-group boundaries) into fragments of about this many rows,
each read by a task of its own; small files are read together up to a batch's rows (read.CorpusDatasource)."""


def fragments_of(files: list[InputFile], refreshes: list[Refresh], part_path: Callable[[str], str]) -> list[Fragment]:
    """What the read tasks read: input files cut at row groups, and the committed parts of refreshed files."""
    fragments = [fragment for file in files for fragment in split_file(
        file.unit, file.path, file.name, file.row_group_rows, FRAGMENT_ROWS, file.partition, file.format)]
    fragments += [Fragment(refresh.file.unit, part_path(part["file"]), refresh.file.name, None, part["first"],
                           part["rows"], committed=refresh.recompute + refresh.drop)
                  for refresh in refreshes for part in refresh.parts]
    return fragments


def annotated_dataset(config: JobConfig, pools: list[tuple[dict[str, TaskSpec], PoolSettings]], source: InputFiles,
                      fragments: list[Fragment], output_filesystem: Any, staging: str, columns: list[str],
                      fitted: dict[str, dict], part_names: str = STAGED_NAME,
                      calibration: dict[int, Any] | None = None, cache: Cache | None = None):
    """The lazy plan over `fragments`; iterating it yields write_parts' records (write.PART_RECORD).

    `columns`: the output's columns in order (write.output_columns); `fitted`: heads fitted for tasks
    (heads.fit_heads), by column; `part_names`: how the workers name parts in `staging` (write.STAGED_NAME);
    `calibration`: the Ray objects of the texts static int8 pools calibrate on, by pool index
    (engines/calibration.pool_samples); `cache`: the values the output holds by content key, looked up before the
    pools and added to by the write stage (workers/reuse.py).
    """
    generated_id = None if config.input.id_column else config.output.generated_id_column
    block_rows = min((settings.batch_size for _, settings in pools), default=config.output.rows_per_file)
    reader = CorpusDatasource(source.filesystem, output_filesystem, fragments, source.schema, block_rows,
                              generated_id, config.output.errors_column)
    # Blocks of about batch_size rows: one block goes to one actor, and every actor of the pool needs work.
    dataset = ray.data.read_datasource(reader, override_num_blocks=reader.num_blocks(block_rows), num_cpus=READ_CPUS)
    annotating = [Pool(specs, settings, {column: fitted[column] for column in specs if column in fitted},
                       (calibration or {}).get(index)) for index, (specs, settings) in enumerate(pools)]
    write = Stage(write_parts, dict(filesystem=output_filesystem, staging=staging,
                                    tasks=[t for specs, _ in pools for t in specs], columns=columns,
                                    errors_column=config.output.errors_column,
                                    id_column=config.input.id_column or generated_id, part_names=part_names,
                                    cache=cache),
                  rows_per_write(config.output.rows_per_file, fragments, pools), WRITE_CPUS)
    reuse = [Stage(look_up, dict(filesystem=output_filesystem, cache=cache, text_column=config.input.text_column),
                   block_rows, READ_CPUS)] if cache is not None else []
    return run_stages(dataset, [*reuse, *annotation_stages(annotating, config.input.text_column,
                                                           config.output.errors_column, record_calls=True), write])


def rows_per_write(rows_per_file: int, fragments: list[Fragment], pools: list[tuple[dict, PoolSettings]]) -> int:
    """Rows the write stage gathers per call: `output.rows_per_file`, or less, so that parts are written (and files
    committed) while the actors work rather than all at the end: a run's rows are spread over at least two writes
    per actor of its widest pool, and a write holds the rows of as many input files as the driver commits at once
    (commits.COMMITTERS, on average) at most, so that a run of many small files hands them to the commits as it
    goes, not hundreds at once."""
    actors = max((settings.max_actors for _, settings in pools), default=1)
    batch = max((settings.batch_size for _, settings in pools), default=1)
    rows = sum(fragment.rows for fragment in fragments)
    files = max(1, len({fragment.unit for fragment in fragments}))
    return max(batch, min(rows_per_file, -(-rows // (2 * actors)), COMMITTERS * -(-rows // files)))
