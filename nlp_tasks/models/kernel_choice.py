"""Packed or plain linear layers for a pool's model, chosen on each node by timing both on the run's own rows.

Packing the weights for oneDNN (cpu_linear.py) pays on some CPUs and costs on others, so no default is right for
a cluster of mixed nodes. The first actor of a pool on a node times a few micro-batches of its first rows both
ways, alternating so that a drift in the machine's speed hits both, keeps the faster, and records the verdict
in the node cache under the CPU (node_cpu.describe), the checkpoint's fingerprint, the dtype, the shape (token
budget and window) and the heap's settings (cpu_memory.py). Other actors on the node, and later nights, apply the
verdict without timing; a file lock makes actors that start together wait for the first one's verdict. Outputs
are the same either way: the same products, summed in another order.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nlp_tasks.models.cpu_linear import can_pack, pack_linears, unpack_linears
from nlp_tasks.models.loading import cache_root

TRIAL_SEGMENTS = 8
"""Segments of the first call timed per variant and round: a micro-batch or two of the pool's."""
ROUNDS = 3
"""Timed pairs (plain, packed) after a warm-up pair; the median of their ratios decides."""


@dataclass(frozen=True)
class Verdict:
    packed: bool
    rates: dict[str, float]
    """Segments per second measured for each variant ("packed", "plain")."""
    seconds: float
    """What the timing cost."""

    def describe(self, cached: bool) -> str:
        rates = ", ".join(f"{variant} {rate:.1f}" for variant, rate in sorted(self.rates.items()))
        return f"timed {rates} segments/s{' on this node before' if cached else f' in {self.seconds:.1f} s'}"


def verdict_path(key: str) -> Path:
    return cache_root() / "kernels" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")


def cached_verdict(key: str) -> Verdict | None:
    """The verdict this node recorded under `key`, or None (none yet, or unreadable: it is timed again)."""
    try:
        return Verdict(**json.loads(verdict_path(key).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def apply(model: Any, verdict: Verdict) -> None:
    if verdict.packed:
        pack_linears(model)


def choose(model: Any, key: str, trial: Callable[[], Any], segments: int) -> tuple[Verdict, bool] | None:
    """Pack `model`'s linear layers or leave them plain, as `key`'s verdict says, timing `trial` (a run of
    `segments` segments) both ways where this node has none yet; returns the verdict and whether it was cached,
    or None where the model cannot be packed here (cpu_linear.can_pack)."""
    if not can_pack(model):
        return None
    from filelock import FileLock

    path = verdict_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        verdict = cached_verdict(key)
        if verdict is not None:
            apply(model, verdict)
            return verdict, True
        verdict = timed(model, trial, segments)
        staging = path.with_suffix(".tmp")
        staging.write_text(json.dumps(asdict(verdict)))
        staging.replace(path)
    return verdict, False


def timed(model: Any, trial: Callable[[], Any], segments: int) -> Verdict:
    """Run `trial` plain and packed: once each to warm up, then ROUNDS pairs in alternating order (so that a drift
    in the machine's speed favours neither); packed wins where the median of the pairs' rate ratios is above 1.
    Leaves the model as the faster ran (plain where `trial` raises, which is raised on)."""
    started = time.perf_counter()
    rates: dict[str, list[float]] = {"plain": [], "packed": []}
    for round_ in range(ROUNDS + 1):
        for packed in (False, True) if round_ % 2 else (True, False):
            swaps = pack_linears(model) if packed else []
            try:  # a trial that raises leaves the model plain, as loaded
                run_started = time.perf_counter()
                trial()
                if round_:  # round 0 warms both up
                    rates["packed" if packed else "plain"].append(segments / (time.perf_counter() - run_started))
            finally:
                unpack_linears(swaps)
    ratio = statistics.median(packed / plain for packed, plain in zip(rates["packed"], rates["plain"]))
    verdict = Verdict(packed=ratio > 1, rates={variant: round(statistics.median(values), 2)
                                               for variant, values in rates.items()},
                      seconds=round(time.perf_counter() - started, 2))
    apply(model, verdict)
    return verdict
