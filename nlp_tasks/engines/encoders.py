"""The CPU engines of the encoder tasks (OpenVINO, ONNX Runtime): the whole task model exported once per node.

The task's model, heads included, is traced to ONNX from the checkpoint the job already resolved, loaded with eager
attention (under transformers 5's default SDPA attention ONNX Runtime's optimizer fuses only the layer norms), then
built for its engine and dtype (openvino_models.py, onnxruntime_models.py). The build is cached on the node by
(model fingerprint, task head, engine, dtype, calibration); a file lock makes actors that start together wait for a
single build, written under a temporary name and renamed into place, so a half-written build is never used.

At run time the engine takes the job's padded micro-batches and returns the outputs transformers would name
(`logits`, `last_hidden_state`, ...) as tensors: the adapters' postprocessing stays as it is.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from nlp_tasks.engines.encoder_engine import EncoderEngine
from nlp_tasks.engines.node_cache import built
from nlp_tasks.engines.onnxruntime_models import OnnxRuntimeModel
from nlp_tasks.engines.openvino_models import OpenVINOModel
from nlp_tasks.models.loading import cache_root, model_fingerprint

ENCODER_ENGINES = ("openvino", "onnxruntime")
"""The CPU engines, fastest int8 first (README, CPU engines): what `engine: auto` tries, in order (engines/choice.py)."""
ENCODER_TYPES = {"bert", "distilbert", "roberta", "xlm-roberta", "camembert", "electra", "mpnet", "albert"}
"""Model types (config.json `model_type`) whose export is proven equal to transformers here (the tests run BERT and
the packaged MiniLM); others run on transformers."""
OUTPUT_NAMES = {"AutoModel": ("last_hidden_state",), "AutoModelForSequenceClassification": ("logits",),
                "AutoModelForTokenClassification": ("logits",), "AutoModelForMaskedLM": ("logits",),
                "AutoModelForQuestionAnswering": ("start_logits", "end_logits")}
"""What each encoder task's model returns, by its auto class: the exported graph's outputs."""
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PACKAGES = {"openvino": ("openvino", "nncf"), "onnxruntime": ("onnxruntime", "onnx")}
"""The packages each engine needs (the cpu-engines extra): nncf quantizes for OpenVINO, onnx saves ONNX Runtime's."""


class ExportUnsupported(Exception):
    """A checkpoint the exporter cannot take; the message says why."""


def missing_package(engine: str) -> str | None:
    """The first package `engine` needs that is not installed, or None."""
    import importlib.util

    return next((name for name in PACKAGES[engine] if importlib.util.find_spec(name) is None), None)


def engine_dtype(dtype: str) -> str:
    """The precision a CPU engine runs for a pool's dtype: float32 (auto), or int8."""
    return "int8" if dtype == "int8" else "float32"


def calibration_key(texts: list[str] | None) -> str:
    """What names a calibration sample in the cache: its size and a digest of its texts ("none" without one)."""
    if not texts:
        return "none"
    return f"{len(texts)}-" + hashlib.sha256("\0".join(texts).encode()).hexdigest()[:12]


def build_dir(fingerprint: str, auto_class: str, engine: str, dtype: str, calibration: str) -> Path:
    name = f"{fingerprint.replace(':', '-')}-{auto_class}-{engine}-{dtype}-{calibration}"
    return cache_root() / "encoders" / name


def export_onnx(path: str, auto_class: str, input_names: list[str], target: Path) -> None:
    """Trace the task model at `path` (heads included, eager attention) to ONNX at `target`, batch and sequence
    dynamic. Raises ExportUnsupported for a model type outside ENCODER_TYPES or one the tracer fails on."""
    import warnings

    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    if config.model_type not in ENCODER_TYPES:
        raise ExportUnsupported(f"the exporter does not take model type {config.model_type!r}")
    model = getattr(transformers, auto_class).from_pretrained(path, attn_implementation="eager",
                                                              dtype=torch.float32).eval()
    outputs = OUTPUT_NAMES[auto_class]

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            result = self.model(**dict(zip(input_names, inputs)))
            return tuple(getattr(result, name) for name in outputs)

    example = [torch.tensor([[1, 2, 3, 4], [1, 2, 3, 0]]) if name == "input_ids" else
               torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]) if name == "attention_mask" else
               torch.zeros(2, 4, dtype=torch.long) for name in input_names]
    axes = {name: {0: "batch", 1: "sequence"} for name in (*input_names, *outputs)}
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.onnx.export(Graph(), tuple(example), str(target), input_names=input_names,
                              output_names=list(outputs), dynamic_axes=axes, opset_version=17, dynamo=False)
    except Exception as error:  # noqa: BLE001 - whatever the tracer refuses, the model stays on transformers
        raise ExportUnsupported(f"the ONNX export failed ({type(error).__name__}: {str(error)[:160]})") from None


def encoder_input_names(tokenizer: Any) -> list[str]:
    """The model inputs the job's tokenizer gives (and the micro-batches carry), in a fixed order."""
    return [name for name in MODEL_INPUTS if name in tokenizer.model_input_names]


def calibration_batches(tokenizer: Any, texts: list[str], max_length: int, rows: int = 8) -> list[dict[str, Any]]:
    """The calibration texts as the job feeds them: truncated, sorted by length, padded micro-batches of `rows`."""
    import numpy as np

    names = encoder_input_names(tokenizer)
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    order = sorted(range(len(texts)), key=lambda i: -len(encoded["input_ids"][i]))
    batches = []
    for start in range(0, len(order), rows):
        group = order[start:start + rows]
        width = len(encoded["input_ids"][group[0]])
        batch = {}
        for name in names:
            pad = (tokenizer.pad_token_id or 0) if name == "input_ids" else 0
            padded = np.full((len(group), width), pad, np.int64)
            for row, index in enumerate(group):
                padded[row, :len(encoded[name][index])] = encoded[name][index]
            batch[name] = padded
        batches.append(batch)
    return batches


def engine_class(engine: str) -> type[EncoderEngine]:
    if engine == "openvino":
        return OpenVINOModel
    return OnnxRuntimeModel


def load_encoder(engine: str, ref: str, revision: str | None, path: str, auto_class: str, dtype: str, threads: int,
                 tokenizer: Any, calibration: list[str] | None) -> EncoderEngine:
    """The task model of checkpoint `ref` (here at `path`) on `engine`, built for `dtype` once per node; static int8
    (OpenVINO) is calibrated on `calibration`, texts the job read (a sample of its input, or the task's examples)."""
    folder = build_for(engine, ref, revision, path, auto_class, dtype, tokenizer, calibration)
    return engine_class(engine)(folder, engine_dtype(dtype), threads, encoder_input_names(tokenizer),
                                OUTPUT_NAMES[auto_class])


def build_for(engine: str, ref: str, revision: str | None, path: str, auto_class: str, dtype: str, tokenizer: Any,
              calibration: list[str] | None) -> Path:
    """The folder of the task model's build for `engine` and `dtype` in the node cache, built if not there yet."""
    precision = engine_dtype(dtype)
    runner = engine_class(engine)
    if not runner.calibrated(precision):
        calibration = None
    elif not calibration:
        raise ValueError(f"engine {engine} in {precision} needs calibration texts (a sample of the run's input)")
    key = calibration_key(calibration)
    target = build_dir(model_fingerprint(ref, revision), auto_class, engine, precision, key)
    input_names = encoder_input_names(tokenizer)

    def build(staging: Path) -> None:
        import transformers

        export_onnx(path, auto_class, input_names, staging / "exported.onnx")
        batches = calibration_batches(tokenizer, calibration, min(tokenizer.model_max_length, 512)) \
            if calibration else None
        runner.build(staging, precision, batches, transformers.AutoConfig.from_pretrained(path))
        (staging / "exported.onnx").unlink()

    return built(target, build)
