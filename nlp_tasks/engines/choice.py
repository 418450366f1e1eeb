"""Which engine runs a task: `engine: auto | transformers | ctranslate2 | openvino | onnxruntime`, decided on the
driver before anything runs.

`auto` takes CTranslate2 for a generation task whose checkpoint it converts (its model type) and whose decoding
settings it honours (decoding.py); for an encoder task off the GPU, the fastest CPU engine installed whose exporter
takes the checkpoint, in int8 (encoders.ENCODER_ENGINES) and in float32 where one is measured faster than
transformers (encoders.AUTO_FLOAT32_ENGINES: none yet; every one is proven equal by the tests); transformers
otherwise, and says why. An engine that failed its qualification on the run's rows (qualification.py) cannot run
the task, as one that cannot take its checkpoint cannot. Naming an engine where it cannot run, or that is not
installed, is a one-line config error; so is an int8 dtype on an engine without int8 kernels. Reads the
checkpoint's JSON files and the node's qualification verdicts only: no torch, no conversion.
"""

from __future__ import annotations

import importlib.util

from nlp_tasks.config import ConfigError, TaskSpec
from nlp_tasks.engines.ctranslate2_models import DECODER_TYPES, SEQ2SEQ_TYPES, checkpoint_generation
from nlp_tasks.engines.decoding import Unsupported, ctranslate2_decoding, generation_settings
from nlp_tasks.engines.encoders import AUTO_FLOAT32_ENGINES, ENCODER_ENGINES, ENCODER_TYPES, missing_package
from nlp_tasks.engines.qualification import failure
from nlp_tasks.models.loading import checkpoint_json
from nlp_tasks.tasks import get_task

CTRANSLATE2_ONLY_DTYPES = {"int8", "int8_float16"}


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
    candidates = ENCODER_ENGINES if dtype == "int8" else AUTO_FLOAT32_ENGINES
    if not candidates:
        return "transformers", None
    problems = {engine: encoder_problem(spec, engine, dtype) for engine in candidates}
    chosen = next((engine for engine, problem in problems.items() if problem is None), None)
    if chosen is not None:
        return chosen, None
    if dtype in CTRANSLATE2_ONLY_DTYPES:
        raise ConfigError(f"tasks.{column}: dtype {dtype} needs engine openvino or onnxruntime, and neither can run "
                          "it: " + "; ".join(f"{engine}: {problem}" for engine, problem in problems.items()))
    return "transformers", "no CPU engine can run it: " + "; ".join(
        f"{engine}: {problem}" for engine, problem in problems.items())


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
