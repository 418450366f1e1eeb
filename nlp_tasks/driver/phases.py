"""The driver's phases, timed for the run report: checks, Ray start, annotating, commits, Ray stop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from nlp_tasks.driver.progress import RunEvents


@contextmanager
def timed(timings: dict[str, float], phase: str, events: RunEvents | None = None) -> Iterator[None]:
    """Add the seconds the block takes to `timings[phase]`; tell `events` (the progress display, the timeline)."""
    started = time.perf_counter()
    if events is not None:
        events.phase_started(phase)
    try:
        yield
    finally:
        timings[phase] = round(timings.get(phase, 0.0) + time.perf_counter() - started, 2)
        if events is not None:
            events.phase_ended(phase)
