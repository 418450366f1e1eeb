"""GPU busy share, sampled while a block of code runs: what the GPU benchmarks report beside rows/s."""

from __future__ import annotations

import shutil
import subprocess
import threading
from typing import Self


class GpuSampler:
    """Samples GPU busy % every `interval` s in a thread (`nvidia-smi`), if there is a GPU.

    The summary drops the first 10% of samples (start-up, model load) and averages the rest.
    """

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.samples: list[float] = []
        self.enabled = shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> Self:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                answer = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                        capture_output=True, text=True, timeout=5, check=True)
                self.samples.append(float(answer.stdout.split()[0]))
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                continue  # a missed sample is not worth failing the benchmark

    def summary(self) -> dict | None:
        if not self.enabled:
            return None
        steady = self.samples[len(self.samples) // 10:]
        return {"busy_pct": round(sum(steady) / len(steady), 1) if steady else None, "samples": len(steady)}
