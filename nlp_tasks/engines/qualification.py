"""Qualification: proof, on the run's own rows, that an engine other than transformers may run a task.

Before a pool runs on CTranslate2, OpenVINO or ONNX Runtime (int8 and float16 included), a Ray task
(workers/qualify.py) loads the engine with the task's settings and transformers beside it, runs both on the
longest of a sample of the input (the sample int8 calibrates on, engines/calibration.py), and judges them here:

- generation in float32, greedy: every row token for token;
- generation in float32 with beams: at most a quarter of the rows differ, each a near tie (its tokens score at
  most 0.15 nats per token below transformers' own, under the transformers model), the rule of
  tests/engines/test_ctranslate2.py; in int8 or float16 each differing row a near tie; sampling is not compared;
- encoders in float32: every value equal (labels and words equal, numbers within 1e-4, as `pipeline()`);
  in int8 the labels of nine rows in ten equal and every row's numbers at cosine 0.99 or more to transformers'
  (measured: 0.992 and above, docs/performance.md).

For an encoder task the verdict also keeps the engine's pace against transformers in float32 on the same rows
(`Speed`), timed on the CPU that ran both: the plan line says whether the engine, int8 above all on a CPU without
VNNI, is faster there than what `dtype: auto` runs.

The verdict is kept in the node cache under the checkpoint's fingerprint, the task and its settings, the engine,
its precision, the device and the packages' versions: a later run with the same (a nightly one) reads it and
runs nothing. `auto` reads a failed verdict as a reason not to take the engine; a named engine is refused with it
(engines/choice.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from nlp_tasks.config import TaskSpec
from nlp_tasks.models.loading import cache_root, model_fingerprint
from nlp_tasks.output.storage import dump, write_atomic

RULES = 2
"""What the judges below accept, in the cache key: raised whenever they change, so no verdict outlives its rule."""
ROWS = 24
"""Rows the engine is compared on: the longest of the sample (long inputs reach the lengths and truncation where
engines part, and cost the most to generate)."""
NEAR_TIE = 0.15
"""Most a row's output may score below transformers' own, in mean log-probability per text token under the
transformers model (tests/engines/test_ctranslate2.py)."""
MOST_DIFFERING = 0.25
"""Share of the rows a float32 beam search may differ on, each a near tie."""
CLOSE = 1e-4
"""Largest difference of a float32 engine's number from transformers' (scores within 1e-4 of `pipeline()`)."""
INT8_COSINE = 0.99
"""Least cosine of an int8 row's numbers to transformers'."""
INT8_LABELS = 0.9
"""Least share of int8 rows whose labels equal transformers'."""
PACKAGES = {"ctranslate2": "ctranslate2", "openvino": "openvino", "onnxruntime": "onnxruntime"}


@dataclass(frozen=True)
class Verdict:
    """What qualification found for one task on one engine: whether it may run, and what was proven or why not."""

    passed: bool
    reason: str
    rows: int
    """Rows compared."""
    seconds: float
    """What qualifying the task's pool cost, loads included."""
    speed: dict | None = None
    """An encoder pool's Speed (as a dict, as the verdict is kept in JSON); None for generation."""

    @property
    def pace(self) -> Speed | None:
        """The engine against transformers float32, as timed (`speed` read back), or None."""
        return Speed(**self.speed) if self.speed else None


@dataclass(frozen=True)
class Speed:
    """Rows per second of an engine and of transformers in float32 on the same rows, tokenizing and postprocessing
    included, on one CPU with the same threads."""

    cpu: str
    """node_cpu.describe() of the node that timed both."""
    threads: int
    rows: int
    engine: float
    transformers: float

    @property
    def faster(self) -> bool:
        return self.engine > self.transformers

    def describe(self, engine: str, precision: str) -> str:
        return (f"{engine} {precision} {self.engine:.1f} rows/s against transformers float32 {self.transformers:.1f}"
                f" ({self.engine / self.transformers:.2f}x) on {self.cpu} with {self.threads} thread(s): "
                f"{'faster' if self.faster else 'slower'} than float32 on this CPU")


def precision(engine: str, dtype: str, device: str) -> str:
    """What `engine` runs for a pool's `dtype` on `device`."""
    if engine == "ctranslate2":
        return dtype if dtype != "auto" else ("float16" if device == "cuda" else "float32")
    return "int8" if dtype == "int8" else "float32"


def verdict_key(spec: TaskSpec, engine: str, dtype: str, device: str) -> str:
    """What a verdict holds for: checkpoint, task and settings, engine, precision, device, versions and rules."""
    device = "cuda" if device == "cuda" else "cpu"
    versions = {}
    for name in ("transformers", "torch", PACKAGES[engine]):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return json.dumps([RULES, model_fingerprint(spec.model, spec.revision), spec.task,
                       spec.options.model_dump(mode="json"), engine, precision(engine, dtype, device), device,
                       versions], sort_keys=True)


def verdict_path(key: str) -> Path:
    return cache_root() / "qualification" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")


def recorded(spec: TaskSpec, engine: str, dtype: str, device: str) -> Verdict | None:
    """The verdict this node keeps for the task on `engine`, or None (none yet, or unreadable: qualified again)."""
    try:
        return Verdict(**json.loads(verdict_path(verdict_key(spec, engine, dtype, device)).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def record(spec: TaskSpec, engine: str, dtype: str, device: str, verdict: Verdict) -> None:
    """Keep `verdict` in the node cache, written atomically (readers see none or all of it)."""
    from fsspec.implementations.local import LocalFileSystem

    write_atomic(LocalFileSystem(), str(verdict_path(verdict_key(spec, engine, dtype, device))), dump(asdict(verdict)))


def failure(spec: TaskSpec, engine: str, dtype: str, device: str) -> str | None:
    """Why `engine` did not qualify for the task, where it was qualified and failed; else None."""
    verdict = recorded(spec, engine, dtype, device)
    return None if verdict is None or verdict.passed else verdict.reason


def text_tokens(ids: list[int], specials: set[int]) -> list[int]:
    return [token for token in ids if token not in specials]


def judge_generation(pairs: list[tuple[list[int], list[int]]], gaps: list[float | None], exact: bool,
                     beams: bool) -> str | None:
    """Why an engine's generated tokens disagree with transformers', or None. `pairs`: each row's text tokens
    (engine's, transformers'); `gaps`: for each row, how far the engine's output scores below transformers' own
    (nats per token under the transformers model; None where it cannot be scored, or the row is equal);
    `exact`: float32, where greedy must match token for token."""
    differing = [row for row, (ours, theirs) in enumerate(pairs) if ours != theirs]
    if not differing:
        return None
    if exact and not beams:
        return f"greedy output differs from transformers' on {len(differing)} of {len(pairs)} rows"
    if exact and len(differing) > len(pairs) * MOST_DIFFERING:
        return (f"beam search differs from transformers' on {len(differing)} of {len(pairs)} rows (at most "
                f"{int(len(pairs) * MOST_DIFFERING)} may, each a near tie)")
    worst = max(differing, key=lambda row: float("inf") if gaps[row] is None else gaps[row])
    if gaps[worst] is None or gaps[worst] > NEAR_TIE:
        gap = "cannot be scored" if gaps[worst] is None else f"scores {gaps[worst]:.3f} nats per token below"
        return (f"output differs from transformers' on {len(differing)} of {len(pairs)} rows, and row "
                f"{worst} is no near tie: it {gap} transformers' (at most {NEAR_TIE})")
    return None


def leaves(value: Any) -> tuple[list[str], list[float]]:
    """The labels (strings, ints, bools, nulls) and numbers (floats) of a row's value, in order."""
    labels: list[str] = []
    numbers: list[float] = []

    def walk(item: Any) -> None:
        if isinstance(item, dict):
            for key in sorted(item):
                labels.append(key)
                walk(item[key])
        elif isinstance(item, (list, tuple)):
            labels.append(f"[{len(item)}]")
            for element in item:
                walk(element)
        elif isinstance(item, float):
            numbers.append(item)
        else:
            labels.append(repr(item))

    walk(value)
    return labels, numbers


def judge_values(pairs: list[tuple[Any, Any]], int8: bool) -> str | None:
    """Why an encoder engine's row values disagree with transformers', or None (see the module docstring)."""
    import numpy as np

    unequal, far = [], []
    for row, (ours, theirs) in enumerate(pairs):
        (our_labels, our_numbers), (their_labels, their_numbers) = leaves(ours), leaves(theirs)
        if our_labels != their_labels or len(our_numbers) != len(their_numbers):
            unequal.append(row)
            continue
        a, b = np.asarray(our_numbers, dtype=np.float64), np.asarray(their_numbers, dtype=np.float64)
        if int8:
            norms = np.linalg.norm(a) * np.linalg.norm(b)
            if norms and float(a @ b / norms) < INT8_COSINE:
                far.append(row)
        elif a.size and float(np.abs(a - b).max()) > CLOSE:
            far.append(row)
    if int8 and len(pairs) - len(unequal) < round(len(pairs) * INT8_LABELS, 9):
        return f"labels differ from transformers' on {len(unequal)} of {len(pairs)} rows (int8: at most a tenth)"
    if not int8 and unequal:
        return f"labels differ from transformers' on {len(unequal)} of {len(pairs)} rows"
    if far:
        return (f"numbers differ from transformers' on {len(far)} of {len(pairs)} rows (row {far[0]}: "
                + (f"cosine below {INT8_COSINE})" if int8 else f"by more than {CLOSE})"))
    return None
