"""The actor's model: the tokenizer and the network on the chosen device and dtype, on transformers or beside
another engine that runs it (engines/)."""

from __future__ import annotations

from typing import Any

from nlp_tasks.engines.ctranslate2_models import load_ctranslate2
from nlp_tasks.engines.encoders import load_encoder
from nlp_tasks.models.loading import resolve_model
from nlp_tasks.tasks.base import LoadedModel


def pick_device(device: str) -> Any:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def pick_dtype(dtype: str, device: Any) -> Any:
    import torch

    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


def load_model(auto_class: str, ref: str, revision: str | None, device: str, dtype: str,
               weights: bool = True, engine: str = "transformers", engine_threads: int = 1,
               calibration: list[str] | None = None) -> Any:
    """Load tokenizer and model once, in eval mode on the chosen device and dtype.

    `weights=False`: the tokenizer and the model's skeleton on the meta device (its config and modules, no
    weights, built in milliseconds), for the CPU stages that tokenize and postprocess but never run it; so too
    beside another `engine` (ctranslate2, with `engine_threads` workers; a CPU engine of the encoder tasks,
    with `engine_threads` threads, int8 calibrated on `calibration`: engines/encoders.py), which runs the model.
    On CPU the linear layers are left plain: the actor packs them where that is faster on its node
    (kernel_choice.py). Outside a terminal (an actor, a log) no
    progress bar is drawn: transformers draws one per load.
    """
    import sys

    import transformers
    from huggingface_hub.utils import disable_progress_bars

    if not sys.stderr.isatty():
        transformers.utils.logging.disable_progress_bar()
        disable_progress_bars()

    import torch

    path = resolve_model(ref)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, revision=revision)
    if not weights or engine != "transformers":
        config = transformers.AutoConfig.from_pretrained(path, revision=revision)
        with torch.device("meta"):
            model = getattr(transformers, auto_class).from_config(config)
        skeleton = LoadedModel(tokenizer=tokenizer, model=model.eval(), device=torch.device("meta"))
        if weights and engine != "ctranslate2":  # a CPU engine of the encoder tasks runs the model
            skeleton.device = torch.device("cpu")
            skeleton.engine = load_encoder(engine, ref, revision, path, auto_class, dtype, engine_threads, tokenizer,
                                           calibration)
        elif weights:  # CTranslate2 runs the model
            skeleton.device = pick_device(device)
            skeleton.engine = load_ctranslate2(ref, revision, path, auto_class == "AutoModelForSeq2SeqLM",
                                               skeleton.device.type, dtype, engine_threads, tokenizer)
        return skeleton
    torch_device = pick_device(device)
    model = getattr(transformers, auto_class).from_pretrained(
        path, revision=revision, dtype=pick_dtype(dtype, torch_device)
    )
    model.to(torch_device).eval()
    return LoadedModel(tokenizer=tokenizer, model=model, device=torch_device)
