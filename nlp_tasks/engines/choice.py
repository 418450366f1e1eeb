"""Which engine runs a task: `engine: auto | transformers | ctranslate2 | openvino | onnxruntime`, decided on the
driver before anything runs.

`auto` takes CTranslate2 for a generation task whose checkpoint it converts (its model type) and whose decoding
settings it honours (decoding.py). For an encoder task off the GPU it takes the first CPU engine installed whose
exporter takes the checkpoint (encoders.ENCODER_ENGINES): in int8 the first that qualified; in float32 the first
that qualified on this node and was timed there faster than transformers (qualification.py: equal within 1e-4, so
the output stays that of `pipeline()`), and transformers until one has, saying why once one was tried here.
Transformers otherwise, and it says why. An engine that failed its qualification on the run's rows cannot run the
task, as one that cannot take its checkpoint cannot. Naming an engine where it cannot run, or that is not
installed, is a one-line config error; so is an int8 dtype on an engine without int8 kernels. Reads the
checkpoint's JSON files and the node's qualification verdicts only: no torch, no conversion.
"""

from __future__ import annotations

import importlib.util

from nlp_tasks.config import ConfigError, TaskSpec
from nlp_tasks.engines.ctranslate2_models import DECODER_TYPES, SEQ2SEQ_TYPES, checkpoint_generation
from nlp_tasks.engines.decoding import Unsupported, ctranslate2_decoding, generation_settings
from nlp_tasks.engines.encoders import ENCODER_ENGINES, ENCODER_TYPES, missing_package
from nlp_tasks.engines.qualification import failure, recorded
from nlp_tasks.models.loading import checkpoint_json
from nlp_tasks.tasks import get_task

CTRANSLATE2_ONLY_DTYPES = {"int8", "int8_float16"}
QUALIFY_FLOAT32_ROWS = 1000
"""Input rows from which a job qualifies the CPU engines `auto` may take in float32 (driver/qualification.py): a
smaller run would spend more on the qualification (seconds per engine, once per node) than it could save."""


def ctranslate2_problem(spec: TaskSpec, device: str = "auto", dtype: str = "auto") -> str | None:
    """Why CTranslate2 cannot run this task as configured on `device` in `dtype`, or None."""
    if importlib.util.find_spec("ctranslate2") is None:
        return "the ctranslate2 package is not installed"
    seq2seq = get_task(spec.task).auto_class == "AutoModelForSeq2SeqLM"
    supported = SEQ2SEQ_TYPES if seq2seq else DECODER_TYPES
    model_type = checkpoint_json(spec.model, "config.json", spec.revision).get("model_type")
    if model_type not in supported:
        return f"its converter does not take model type {model_type!r} for {spec.task}"
    try:
        ctranslate2_decoding(generation_settings(checkpoint_generation(spec.model, spec.revision),
                                                 spec.options.engine_settings()), seq2seq, device)
    except Unsupported as error:
        return str(error)
    return disqualified(spec, "ctranslate2", dtype, device)


def disqualified(spec: TaskSpec, engine: str, dtype: str, device: str) -> str | None:
    """Why `engine` failed its qualification for this task on an earlier run's rows, or None."""
    why = failure(spec, engine, dtype, device)
    return None if why is None else f"it did not qualify on the input's rows: {why}"


def encoder_problem(spec: TaskSpec, engine: str, dtype: str) -> str | None:
    """Why CPU engine `engine` cannot run this encoder task as configured, or None."""
    missing = missing_package(engine)
    if missing:
        return f"the {missing} package is not installed (pip install .[cpu-engines])"
    if dtype not in ("auto", "float32", "int8"):
        return f"it runs float32 or int8, not {dtype}"
    model_type = checkpoint_json(spec.model, "config.json", spec.revision).get("model_type")
    if model_type not in ENCODER_TYPES:
        return f"its exporter does not take model type {model_type!r}"
    return disqualified(spec, engine, dtype, "cpu")


def choose_encoder_engine(column: str, spec: TaskSpec, dtype: str, device: str) -> tuple[str, str | None]:
    """The engine encoder task `column` runs on, and why `auto` took transformers (None where it took a CPU
    engine, or was not asked to choose). On a GPU (`device` cuda) auto stays on transformers."""
    if dtype == "int8_float16":
        raise ConfigError(f"tasks.{column}: dtype int8_float16 runs on engine ctranslate2 only (generation tasks)")
    if spec.engine in ENCODER_ENGINES:
        if device == "cuda":
            raise ConfigError(f"tasks.{column}: engine {spec.engine} runs on CPU only, not on device cuda")
        problem = encoder_problem(spec, spec.engine, dtype)
        if problem:
            raise ConfigError(f"tasks.{column}: engine {spec.engine} cannot run it: {problem}")
        return spec.engine, None
    if spec.engine == "transformers" or device == "cuda" or dtype in ("float16", "bfloat16"):
        if dtype in CTRANSLATE2_ONLY_DTYPES:
            raise ConfigError(f"tasks.{column}: dtype {dtype} runs on engine openvino or onnxruntime (on CPU) for "
                              f"{spec.task}, not on {'device cuda' if device == 'cuda' else 'transformers'}")
        return "transformers", None
    problems = {engine: encoder_problem(spec, engine, dtype) or (None if dtype == "int8" else unproven(spec, engine))
                for engine in ENCODER_ENGINES}
    chosen = next((engine for engine, problem in problems.items() if problem is None), None)
    if chosen is not None:
        return chosen, None
    if dtype in CTRANSLATE2_ONLY_DTYPES:
        raise ConfigError(f"tasks.{column}: dtype {dtype} needs engine openvino or onnxruntime, and neither can run "
                          "it: " + "; ".join(f"{engine}: {problem}" for engine, problem in problems.items()))
    tried = {engine: problem for engine, problem in problems.items()
             if recorded(spec, engine, "float32", "cpu") is not None}
    if not tried:  # none qualified on this node yet: transformers is the default, not a fallback
        return "transformers", None
    return "transformers", "no CPU engine is proven equal and faster on this node: " + "; ".join(
        f"{engine}: {problem}" for engine, problem in tried.items())


def unproven(spec: TaskSpec, engine: str) -> str | None:
    """Why `auto` may not yet take CPU engine `engine` for this task in float32: not qualified on this node, or
    timed there no faster than transformers float32 (qualification.Speed); None where it was timed faster."""
    verdict = recorded(spec, engine, "float32", "cpu")
    if verdict is None:
        return "not qualified on this node yet"
    if verdict.pace is None:
        return "not timed against transformers float32"
    if not verdict.pace.faster:
        return f"not timed faster than transformers float32: {verdict.pace.describe(engine, 'float32')}"
    return None


def choose_engine(column: str, spec: TaskSpec, dtype: str, device: str = "auto") -> tuple[str, str | None]:
    """The engine task `column` runs on, and why `auto` did not take CTranslate2 or a CPU engine (None where it
    did, or where the task runs on transformers only)."""
    engines = get_task(spec.task).engines
    if "openvino" in engines:
        return choose_encoder_engine(column, spec, dtype, device)
    if spec.engine == "transformers" or "ctranslate2" not in engines:
        if dtype in CTRANSLATE2_ONLY_DTYPES:
            raise ConfigError(f"tasks.{column}: dtype {dtype} runs on engine ctranslate2 only (generation tasks, "
                              "engine auto or ctranslate2)")
        return "transformers", None
    problem = ctranslate2_problem(spec, device, dtype)
    if problem is None:
        return "ctranslate2", None
    if spec.engine == "ctranslate2" or dtype in CTRANSLATE2_ONLY_DTYPES:
        raise ConfigError(f"tasks.{column}: engine ctranslate2 cannot run it: {problem}")
    return "transformers", f"ctranslate2 cannot run it: {problem}"
