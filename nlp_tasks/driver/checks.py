"""The driver's checks before anything runs: credentials, the input's files and columns, the models, the output.

Every problem found here is the user's (`errors.UserError`): one line naming the file, column or key, exit 2, before
any model loads or the output is touched.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

from nlp_tasks.config import JobConfig, TaskSpec
from nlp_tasks.driver.examples import LabelledTexts, read_examples
from nlp_tasks.driver.inputs import InputFiles, inspect_input
from nlp_tasks.driver.manifest import job_change, job_manifest
from nlp_tasks.driver.phases import timed
from nlp_tasks.driver.progress import RunEvents
from nlp_tasks.engines.choice import choose_engine
from nlp_tasks.errors import InputError
from nlp_tasks.models.loading import ModelUnavailable, check_available, checkpoint_json
from nlp_tasks.output.delta import DeltaStore
from nlp_tasks.output.delta_layout import require_deltalake
from nlp_tasks.output.index import read_index
from nlp_tasks.output.layout import INDEX
from nlp_tasks.output.store import OutputStore
from nlp_tasks.secrets import check_credentials, redact, register_secrets
from nlp_tasks.workers.columns import is_internal

log = logging.getLogger(__name__)


@dataclass
class CheckedJob:
    """What the checks found: the input files, the tasks that can run (engines resolved), the labelled examples
    and the job manifest."""

    source: InputFiles
    tasks: dict[str, TaskSpec]
    skipped: dict[str, str]
    """Tasks whose model is not available here, and why (input.skip_unavailable_models)."""
    examples: dict[str, LabelledTexts]
    job: dict

    @property
    def fingerprints(self) -> dict[str, str]:
        return {column: entry["fingerprint"] for column, entry in self.job["tasks"].items()}


def check_job(config: JobConfig, timings: dict[str, float], events: RunEvents) -> CheckedJob:
    """Check the config's URLs, the input and the models; nothing is written."""
    register_secrets(config.model_dump_json())
    examples = {column: spec.options.examples for column, spec in config.tasks.items()
                if getattr(spec.options, "examples", None) is not None}
    for key, url in [("input.path", config.input.path), ("output.path", config.output.path),
                     *((f"tasks.{column}.model", spec.model) for column, spec in config.tasks.items()),
                     *((f"tasks.{column}.examples", found.path) for column, found in examples.items())]:
        check_credentials(key, url)
    check_output_path(config.output.path)
    with timed(timings, "inspect_input", events):
        source = inspect_input(config.input, recorded_inputs(config.output.path))
    for column in [*config.tasks, config.output.errors_column,
                   None if config.input.id_column else config.output.generated_id_column]:
        if column in source.schema.names:
            raise InputError(f"input column {column!r} clashes with an output column of the same name")
    for column in source.schema.names:
        if is_internal(column):
            raise InputError(f"input column {column!r} has the name of a column the job's stages add to rows "
                             "(workers/columns.py); rename it in the input")
    for path, problem in source.quarantined.items():
        log.warning("quarantined input file %r: %s", path, problem)
    for path, why in source.skipped.items():
        log.info("input: not reading %r: %s", path, why)
    with timed(timings, "check_models", events):
        tasks, skipped = runnable_tasks(config)
        labelled = {column: read_examples(column, examples[column]) for column in tasks if column in examples}
        job = job_manifest(config, tasks, labelled)
    for column, reason in skipped.items():
        log.warning("skipping task %r: %s", column, reason)
    return CheckedJob(source, tasks, skipped, labelled, job)


OUTPUT_PATH_SYNTAX = re.compile(r"[?#%\[\]*{}\\\x00-\x1f\x7f]")
"""Characters fsspec, S3 and the readers of a folder take for syntax (a query, a fragment, an escape, a wildcard, a
brace pattern), or that no line can show: an output path holding one would not keep its files where their names say."""


def check_output_path(path: str) -> None:
    """output.path must name its files literally: one holding URL or glob syntax is refused before anything is
    written (its parts would land under other keys, or be found twice, or not at all, by the next run and readers)."""
    if found := OUTPUT_PATH_SYNTAX.search(path):
        raise InputError(f"output.path {redact(path)!r}: {found.group()!r} is URL or glob syntax to fsspec, S3 and "
                         "Parquet readers, so the output's files would not stay where their names say; choose a path "
                         "without ? # % [ ] * { } \\ or control characters")


def runnable_tasks(config: JobConfig) -> tuple[dict[str, TaskSpec], dict[str, str]]:
    """Tasks whose models are here (or downloadable), each with the engine that runs it (`engine: auto` resolved),
    and the reasons for those that are not."""
    ready, skipped = {}, {}
    for column, spec in config.tasks.items():
        try:
            check_available(spec.model, spec.revision)
        except ModelUnavailable as error:
            if not config.skip_unavailable_models:
                raise InputError(f"tasks.{column}: {error}") from None
            skipped[column] = str(error)
            continue
        check_stride(column, spec)
        ready[column] = engine_for(config, column, spec)
    if not ready:
        raise InputError("no task has a model available here: " + "; ".join(f"{c}: {r}" for c, r in skipped.items()))
    return ready, skipped


def check_stride(column: str, spec: TaskSpec) -> None:
    """A `stride` set by hand must leave the model's own window room to move (with `max_length` set, the config
    already checked it): refused here, before an actor would fail on it."""
    options = spec.options
    if options.long_text != "chunk" or options.stride is None or options.max_length is not None:
        return
    limits = [checkpoint_json(spec.model, "tokenizer_config.json", spec.revision).get("model_max_length"),
              checkpoint_json(spec.model, "config.json", spec.revision).get("max_position_embeddings")]
    window = min((limit for limit in limits if isinstance(limit, int) and 0 < limit < 1_000_000), default=None)
    if window is not None and options.stride >= window:
        raise InputError(f"tasks.{column}.stride: {options.stride} must be smaller than the model's window "
                         f"({window} tokens)")


def engine_for(config: JobConfig, column: str, spec: TaskSpec) -> TaskSpec:
    """The task with the engine that runs it (`engine: auto` resolved, and why it left a faster one logged)."""
    compute = config.pool_compute({column: spec})
    engine, why_not = choose_engine(column, spec, compute.dtype, compute.device)
    if why_not:
        log.info("task %r runs on %s: %s", column, engine, why_not)
    return spec.model_copy(update={"engine": engine})


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def check_separate(source: InputFiles, store: OutputStore) -> None:
    """Input and output must not overlap: the output would be read as input, or overwrite it."""
    if type(source.filesystem) is not type(store.filesystem):
        return
    real = os.path.realpath if "file" in str(store.filesystem.protocol) else (lambda p: p.rstrip("/"))
    output, root = real(store.root), real(source.root)
    inside_output = next((f for f in source.files if _inside(real(f.path), output)), None)
    if inside_output or _inside(output, root):
        where = f"input file {inside_output.name!r} is inside it" if inside_output else "it is inside input.path"
        raise InputError(f"output.path {store.name!r} overlaps the input ({where}); choose an output outside it")


def recorded_inputs(path: str) -> dict[str, dict]:
    """The input files the output's markers' index records, by name (their identity and layout, which spare
    reading their footers again: inputs.recorded_file); empty where the output has no index or cannot be read
    yet (opening it says why). Read without the lease: a record only says what a file was at a size and version."""
    from fsspec.core import url_to_fs

    try:
        filesystem, root = url_to_fs(path)
        indexed = read_index(filesystem, f"{root.rstrip('/')}/{INDEX}")
    except Exception:  # noqa: BLE001 - an unreadable output (a client's own error too) is for open_output to name
        return {}
    return {entry["marker"]["source"]: entry["marker"] for entry in indexed.values()
            if isinstance(entry["marker"].get("source"), str)}


def delta_store(path: str, name: str, if_compacted: str) -> OutputStore:
    from fsspec.core import url_to_fs

    require_deltalake("output.format: delta")
    return DeltaStore(*url_to_fs(path), name=name, uri=path, if_compacted=if_compacted)


def open_output(config: JobConfig, checked: CheckedJob, timings: dict[str, float], events: RunEvents) -> OutputStore:
    """The output, its lease taken and its committed files checked (output.if_exists decides what may be there)."""
    from fsspec.core import url_to_fs

    name = redact(config.output.path)
    try:
        store = OutputStore(*url_to_fs(config.output.path), name=name) if config.output.format == "parquet" \
            else delta_store(config.output.path, name, config.output.if_compacted)
        check_separate(checked.source, store)
        with timed(timings, "open_output", events):
            store.open(checked.job, config.output.if_exists, job_change)
        if config.output.format == "delta":
            try:
                store.expect({file.unit for file in checked.source.files})
            except BaseException:
                store.close()  # its lease, taken by open
                raise
    except (OSError, ValueError, ImportError) as error:
        raise InputError(f"output.path {name!r}: cannot create or write it ({type(error).__name__}: "
                         f"{redact(str(error))})") from None
    return store
