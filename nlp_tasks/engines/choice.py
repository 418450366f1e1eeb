"""Which engine runs a task: `engine: auto | transformers | ctranslate2`, decided on the driver before anything runs.

`auto` takes CTranslate2 for a generation task whose checkpoint it converts (its model type) and whose decoding
settings it honours (decoding.py), transformers otherwise, and says why. Naming `ctranslate2` where it cannot
run is a one-line config error; so is an int8 dtype on an engine without int8 kernels. Reads the checkpoint's two
JSON files only: no torch, no conversion.
"""

from __future__ import annotations

import importlib.util

from nlp_tasks.config import ConfigError, TaskSpec
from nlp_tasks.tasks import get_task

CTRANSLATE2_ONLY_DTYPES = {"int8", "int8_float16"}


def ctranslate2_problem(spec: TaskSpec) -> str | None:
    """Why CTranslate2 cannot run this task as configured, or None."""
    from nlp_tasks.engines.ctranslate2_models import DECODER_TYPES, SEQ2SEQ_TYPES
    from nlp_tasks.engines.decoding import Unsupported, ctranslate2_decoding, generation_settings
    from nlp_tasks.models.loading import checkpoint_json

    if importlib.util.find_spec("ctranslate2") is None:
        return "the ctranslate2 package is not installed"
    seq2seq = get_task(spec.task).auto_class == "AutoModelForSeq2SeqLM"
    supported = SEQ2SEQ_TYPES if seq2seq else DECODER_TYPES
    model_type = checkpoint_json(spec.model, "config.json", spec.revision).get("model_type")
    if model_type not in supported:
        return f"its converter does not take model type {model_type!r} for {spec.task}"
    try:
        ctranslate2_decoding(generation_settings(checkpoint_json(spec.model, "generation_config.json", spec.revision),
                                                 spec.options.engine_settings()), seq2seq)
    except Unsupported as error:
        return str(error)
    return None


def choose_engine(column: str, spec: TaskSpec, dtype: str) -> tuple[str, str | None]:
    """The engine task `column` runs on, and why `auto` did not take CTranslate2 (None where it did, or where the
    task runs on transformers only)."""
    engines = get_task(spec.task).engines
    if spec.engine == "transformers" or "ctranslate2" not in engines:
        if dtype in CTRANSLATE2_ONLY_DTYPES:
            raise ConfigError(f"tasks.{column}: dtype {dtype} runs on engine ctranslate2 only (generation tasks, "
                              "engine auto or ctranslate2)")
        return "transformers", None
    problem = ctranslate2_problem(spec)
    if problem is None:
        return "ctranslate2", None
    if spec.engine == "ctranslate2" or dtype in CTRANSLATE2_ONLY_DTYPES:
        raise ConfigError(f"tasks.{column}: engine ctranslate2 cannot run it: {problem}")
    return "transformers", f"ctranslate2 cannot run it: {problem}"
