"""The job's configuration: a YAML file validated at load time, errors naming the offending key."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nlp_tasks.errors import UserError
from nlp_tasks.tasks import get_task
from nlp_tasks.tasks.base import STRICT, TaskOptions


class ConfigError(UserError):
    """The configuration is invalid; the message is one line naming the file and key."""


class _Strict(BaseModel):
    model_config = STRICT


class InputConfig(_Strict):
    path: str
    """A Parquet file, directory, glob, or URI that pyarrow/fsspec understands (s3://, gs://, ...)."""
    text_column: str = "text"
    id_column: str | None = None
    """Unique row ids in the input; without one, the output gets `output.generated_id_column`."""
    bad_files: Literal["fail", "quarantine"] = "fail"
    """fail: an unreadable file, or one without the columns or with another schema, stops the job before
    inference; quarantine: such files are listed in the run report and the rest is processed."""
    partitioning: Literal["none", "hive"] = "none"
    """hive: folders named `key=value` between input.path and a file add a string column `key`; none: paths
    never become column values."""


class OutputConfig(_Strict):
    path: str
    format: Literal["parquet", "delta"] = "parquet"
    """parquet: a folder of Parquet parts beside the job's `__manifest/`; delta: a Delta Lake table, each input
    file committed as one transaction of its log (needs `pip install .[delta]`; README "Delta Lake tables")."""
    if_exists: Literal["resume", "overwrite", "error"] = "resume"
    """resume: add what is not yet committed, and the tasks added or changed since (an output of other input or
    output columns is refused); overwrite: delete this job's earlier output and start again; error: refuse any
    existing output."""
    if_compacted: Literal["stop", "redo"] = "stop"
    """Delta outputs another writer compacted (OPTIMIZE, then perhaps VACUUM) since the job's last version: stop,
    naming the ways out; or redo: annotate the compacted rows again and replace the compacted files with them in one
    version, so that readers never see fewer rows."""
    vanished_inputs: Literal["keep", "remove"] = "keep"
    """What happens to the rows of a committed input file that is no longer there: keep them, or remove
    them from the output. Either way the run report lists the file; a renamed file is never kept twice."""
    removed_tasks: Literal["keep", "drop"] = "keep"
    """What happens to the column of a task that was in an earlier run's config and is no longer: committed files
    keep it (files committed from now on do not get it), or drop it (each committed file is rewritten without
    it). Tasks added or changed since are computed for the committed files either way; other columns are carried."""
    rows_per_file: int = Field(10_000, ge=1)
    """Rows the write stage gathers per call (fewer on a small run); an output part holds at most this many rows
    of one input file."""
    reuse: bool = True
    """Take a task's value from the output when it already holds one for the same inputs (the same text, and
    question) instead of running the model again: after a compaction or rewrite of the input, and for repeated
    texts (workers/reuse.py). Tasks that sample are never reused."""
    errors_column: str = "errors"
    generated_id_column: str = "row_id"
    """Added when the input has no id_column: "<input file>:<row position in it>", stable across runs."""

    @model_validator(mode="after")
    def _compaction_is_delta(self):
        if self.if_compacted != "stop" and self.format != "delta":
            raise ValueError(f"if_compacted: {self.if_compacted} is for Delta outputs (another writer's OPTIMIZE); "
                             "this output is a folder of Parquet parts (format: parquet)")
        return self


class ComputeConfig(_Strict):
    """How one actor pool runs. Every key left out is sized from the cluster when the job starts
    (`compute.py`); a key set by hand wins, and `tasks.<name>.compute` wins over the job's `compute`."""

    min_actors: int | None = Field(None, ge=1)
    max_actors: int | None = Field(None, ge=1)
    num_gpus_per_actor: float | None = Field(None, ge=0)
    num_cpus_per_actor: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1)
    """Rows per Ray batch handed to an actor (each is then cut into micro-batches)."""
    token_budget: int | None = Field(None, ge=1)
    """Padded tokens per micro-batch: rows x longest row. Halved automatically on CUDA out-of-memory."""
    torch_threads: int | None = Field(None, ge=1)
    """Torch threads per actor (CPU). Reading and writing need little CPU, so on a small machine an actor
    may use more threads than the CPUs it reserves from Ray."""
    actor_concurrency: int | None = Field(None, ge=1)
    """Batches one actor works on at once (threads): >1 overlaps tokenization and postprocessing with
    the forward pass of another batch, which keeps a GPU busy."""
    inter_threads: int | None = Field(None, ge=1)
    """CTranslate2 pools: batches one actor decodes at once, one thread each (on CPU, CTranslate2's docs advise
    raising these, not the threads per batch)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16", "int8", "int8_float16"] = "auto"
    """int8: CTranslate2 pools (CPU or GPU), or an encoder task on a CPU engine (OpenVINO static int8 calibrated on
    a sample of the run's input, ONNX Runtime dynamic int8); int8_float16 (GPU): CTranslate2 only. Never claimed
    equal to float32: the run report records engine, dtype and calibration."""
    stages: Literal["auto", "fused", "split"] = "auto"
    """split: CPU tasks tokenize and postprocess, the actors only run the model (stages.py); fused: the actors do
    all three. auto: split on GPUs (they are then never kept waiting on Python), fused on CPUs (no hand-off). A
    pool with a task that needs the weights outside the forward pass (embedding-classification with
    candidate_labels) is fused."""

    @model_validator(mode="after")
    def _pool_bounds(self):
        if self.min_actors and self.max_actors and self.max_actors < self.min_actors:
            raise ValueError(f"max_actors ({self.max_actors}) is smaller than min_actors ({self.min_actors})")
        return self

    def overridden_by(self, other: ComputeConfig | None) -> ComputeConfig:
        """These settings with the keys `other` sets by hand replacing them."""
        return self if other is None else self.model_copy(update=other.model_dump(exclude_unset=True))


class TaskSpec(BaseModel):
    """One output column: a task type, a model, and that task's options (any other key)."""

    model_config = ConfigDict(**{**STRICT, "extra": "allow"})

    task: str
    model: str
    revision: str | None = None
    engine: Literal["auto", "transformers", "ctranslate2", "openvino", "onnxruntime"] = "auto"
    """What runs the model: auto takes CTranslate2 for a generation task whose checkpoint and options it supports,
    and for an encoder task on CPU a CPU engine installed (openvino, then onnxruntime: the cpu-engines extra) whose
    exporter takes the checkpoint, once qualified on the input's rows: in int8 the first, in float32 the first
    timed faster than transformers on the node (engines/choice.py); transformers otherwise. Naming an engine that
    cannot run the task, or that is not installed, is an error."""
    compute: ComputeConfig | None = None
    """This task's pool only; tasks that share a model share a pool, and must agree."""
    max_error_share: float = Field(0.1, ge=0, le=1, strict=True)
    """The share of the rows the task takes that it may fail on (the model raised on them): a file over it is not
    committed, and a run clearly over it stops, exit 1 (driver/budget.py). Rows whose text or question is null,
    empty or not text are the user's data and count neither way. 0: no failure is accepted; 1: any share is."""

    @field_validator("task")
    @classmethod
    def _known_task(cls, name: str) -> str:
        get_task(name)
        return name

    @model_validator(mode="after")
    def _engine_runs_task(self):
        engines = get_task(self.task).engines
        if self.engine != "auto" and self.engine not in engines:
            raise ValueError(f"engine: {self.task} runs on {' or '.join(engines)}, not {self.engine}")
        return self

    @property
    def pool_key(self) -> tuple:
        """Tasks that load the same checkpoint the same way share one actor pool and one model copy."""
        return self.model, self.revision, get_task(self.task).auto_class, self.engine

    @cached_property
    def options(self) -> TaskOptions:
        """The task's own options, validated by its adapter's options class."""
        return get_task(self.task).options_class.model_validate(self.model_extra or {})


class JobConfig(_Strict):
    input: InputConfig
    output: OutputConfig
    tasks: dict[str, TaskSpec] = Field(min_length=1)
    compute: ComputeConfig = ComputeConfig()
    skip_unavailable_models: bool = False
    """True: a task whose model cannot be loaded here is reported and skipped; False: the job fails."""

    @model_validator(mode="after")
    def _one_compute_per_pool(self):
        first: dict[tuple, tuple[str, ComputeConfig]] = {}
        for name, spec in self.tasks.items():
            if spec.compute is None:
                continue
            other, compute = first.setdefault(spec.pool_key, (name, spec.compute))
            if compute != spec.compute:
                raise ValueError(f"tasks.{other}.compute and tasks.{name}.compute differ, but both tasks use "
                                 f"{spec.model!r} and so share one actor pool: set it on one of them, or the same")
        return self

    def pool_compute(self, specs: dict[str, TaskSpec]) -> ComputeConfig:
        """The hand-set compute of the pool running `specs`: the job's, with any task's override on top."""
        override = next((spec.compute for spec in specs.values() if spec.compute is not None), None)
        return self.compute.overridden_by(override)

    @model_validator(mode="after")
    def _column_names(self):
        """Every column of the output has a name of its own; "__" names belong to the job."""
        named = [(f"tasks.{column}", column) for column in self.tasks]
        named += [("output.errors_column", self.output.errors_column), ("input.text_column", self.input.text_column)]
        named.append(("input.id_column", self.input.id_column) if self.input.id_column
                     else ("output.generated_id_column", self.output.generated_id_column))
        seen: dict[str, str] = {}
        for key, name in named:
            if not name.strip() or name.startswith("__"):
                raise ValueError(f"{key}: column name {name!r} is empty or starts with '__' (reserved)")
            if name in seen:
                raise ValueError(f"{key}: column name {name!r} is also {seen[name]}")
            seen.setdefault(name, key)
        return self


def _describe(error: ValidationError, prefix: str) -> str:
    """One line per problem, each naming its key path."""
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in (prefix, *item["loc"]) if part != "")
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{key}: {message}" if key else message)
    return "; ".join(problems)


def parse_config(data: Any, source: str = "config") -> JobConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of input, output, tasks, compute")
    try:
        config = JobConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source}: {_describe(error, prefix='')}") from None
    for name, spec in config.tasks.items():
        try:
            _ = spec.options  # validates the task's options
        except ValidationError as error:
            raise ConfigError(f"{source}: {_describe(error, prefix=f'tasks.{name}')}") from None
    return config


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (the plain loader keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping (line {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> JobConfig:
    """Read and validate a YAML config; `overrides` maps dotted keys (e.g. "input.path") to values."""
    try:
        data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a YAML config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected a YAML config)") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read it ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    for dotted, value in (overrides or {}).items() if isinstance(data, dict) else ():
        *parents, leaf = dotted.split(".")
        node = data
        for depth, part in enumerate(parents):
            if not isinstance(node, dict) or not isinstance(node.setdefault(part, {}), dict):
                where = ".".join(parents[:depth + 1])
                raise ConfigError(f"{path}: {where}: expected a mapping (to set {dotted} from the command line)")
            node = node[part]
        node[leaf] = value
    return parse_config(data, source=str(path))
