"""What a person watching a run sees, drawn from `progress.RunEvents`: in a terminal one live view (rich's Live,
redrawn four times a second, log lines printed above it); elsewhere (a log file, `ray job logs`) a plain line every
PLAIN_EVERY_S seconds or each tenth of the rows, never a bar.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any, Self, TextIO

from nlp_tasks.driver.progress import PHASE_NAMES, RunEvents, Snapshot
from nlp_tasks.secrets import redact

log = logging.getLogger(__name__)

PLAIN_EVERY_S = 30.0
PLAIN_SHARE_STEP = 0.1
def seconds_text(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def plain_line(snap: Snapshot) -> str:
    """One progress line for logs."""
    parts = [f"{snap.rows_written}/{snap.rows_total} rows annotated ({snap.share():.0%})",
             f"{snap.rows_committed}/{snap.rows_total} committed",
             f"{snap.files_committed}/{snap.files_total} file(s) committed"]
    if snap.rows_per_s:
        parts.append(f"{snap.rows_per_s:.1f} rows/s")
    if snap.seconds_left is not None:
        parts.append(f"about {seconds_text(snap.seconds_left)} left")
    parts += [f"pool {pool.name}: {len(pool.actors)}/{pool.actors_planned} actor(s) at work" for pool in snap.pools]
    return f"progress at {seconds_text(snap.elapsed_s)}: " + ", ".join(parts)


class PlainLines:
    """Outside a terminal: a log line each PLAIN_SHARE_STEP of the rows annotated, and every PLAIN_EVERY_S."""

    def __init__(self, every_s: float = PLAIN_EVERY_S):
        self.every_s = every_s
        self.events: RunEvents | None = None
        self.next_share = PLAIN_SHARE_STEP
        self.announced = False
        self.finished = False
        self.last_line = 0.0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ticker = threading.Thread(target=self._tick, name="progress-lines", daemon=True)

    def attach(self, events: RunEvents) -> None:
        self.events = events

    def __enter__(self) -> Self:
        self.ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.ticker.join(timeout=2)

    def _tick(self) -> None:
        """Under the lock, so that a line of a snapshot taken before the last commit never prints after the last."""
        while not self.stop.wait(1.0):
            with self.lock:
                if self.events is None or not self.announced or self.finished \
                        or time.monotonic() - self.last_line < self.every_s:
                    continue
                snap = self.events.snapshot()
                if snap.rows_committed < snap.rows_total:
                    self._line(plain_line(snap))

    def _line(self, text: str) -> None:
        self.last_line = time.monotonic()
        log.info("%s", text)

    def changed(self, snap: Snapshot) -> None:
        with self.lock:
            if not snap.rows_total:
                return
            if snap.phase == "annotate" and not self.announced:
                self.announced = True
                pools = ", ".join(f"{p.name} ({p.actors_planned} actor(s))" for p in snap.pools)
                self._line(f"progress: annotating {snap.rows_total} rows of {snap.files_total} file(s) "
                           f"on pool(s) {pools}")
            done = snap.rows_committed >= snap.rows_total
            if done and not self.finished:
                self.finished = True
                self._line(plain_line(snap))
            elif not done and snap.share() >= self.next_share - 1e-9:
                while self.next_share <= snap.share() + 1e-9:
                    self.next_share += PLAIN_SHARE_STEP
                self._line(plain_line(snap))


class _AboveLive:
    """A text stream whose lines the live display prints above itself, redacted as the stderr filter would."""

    def __init__(self, console: Any, underneath: TextIO):
        self.console = console
        self.underneath = underneath
        self.buffer = ""

    def fileno(self) -> int:
        """The descriptor below (Ray's fault handler writes tracebacks there, past any Python stream)."""
        return self.underneath.fileno()

    def write(self, text: str) -> int:
        self.buffer += text
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            self.console.print(redact(line), markup=False, highlight=False, emoji=False, soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


class LiveDisplay:
    """In a terminal: one live view of the run, redrawn four times a second; log lines print above it."""

    def __init__(self, terminal: TextIO):
        from rich.console import Console

        self.console = Console(file=terminal, force_terminal=True, highlight=False)
        self.events: RunEvents | None = None
        self.live = None
        self.last_step: tuple | None = None
        self.streams: list[tuple[logging.StreamHandler, Any]] = []
        self.stderr = None

    def attach(self, events: RunEvents) -> None:
        self.events = events

    def changed(self, snap: Snapshot) -> None:
        """Redrawn four times a second anyway; also at each phase and each percent of the rows written or
        committed, so that no step of a quick run goes undrawn."""
        step = (snap.phase, int(100 * snap.share()), snap.rows_committed * 100 // (snap.rows_total or 1))
        if self.live is not None and step != self.last_step:
            self.last_step = step
            self.live.refresh()

    def __enter__(self) -> Self:
        from rich.live import Live

        self.live = Live(get_renderable=self.render, console=self.console, refresh_per_second=4,
                         redirect_stdout=False, redirect_stderr=False, transient=False)
        self.live.start()
        above = _AboveLive(self.console, sys.stderr)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                self.streams.append((handler, handler.setStream(above)))
        self.stderr, sys.stderr = sys.stderr, above
        return self

    def __exit__(self, *exc) -> None:
        sys.stderr = self.stderr
        for handler, stream in self.streams:
            handler.setStream(stream)
        if self.live is not None:
            self.live.refresh()
            self.live.stop()
        self.console.file.flush()

    def render(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(padding=(0, 2))
        if self.events is None:
            return grid
        snap = self.events.snapshot()
        phase = PHASE_NAMES.get(snap.phase or "", snap.phase or "working")
        if snap.phase == "annotate" and not snap.rows_written:
            phase = "annotating: loading models, waiting for the first rows"
        grid.add_row(Text(f"nlp-tasks  {phase}  {seconds_text(snap.elapsed_s)}", style="bold"))
        if snap.rows_total:
            bar = ProgressBar(total=snap.rows_total, completed=snap.rows_written, width=40)
            line = Table.grid(padding=(0, 2))
            line.add_row(bar, Text(f"annotated {snap.rows_written}/{snap.rows_total} rows ({snap.share():.0%})  "
                                   f"committed {snap.rows_committed}/{snap.rows_total}  files {snap.files_committed}/"
                                   f"{snap.files_total} committed"))
            grid.add_row(line)
            speed = f"{snap.rows_per_s:.1f} rows/s" if snap.rows_per_s else "rows/s: measuring"
            left = f"about {seconds_text(snap.seconds_left)} left" if snap.seconds_left is not None else ""
            grid.add_row(Text(f"{speed}  {left}"))
            for pool in snap.pools:
                cpu = f", {len(pool.cpu_workers)} CPU stage worker(s)" if pool.cpu_workers else ""
                grid.add_row(Text(f"  pool {pool.name}: {len(pool.actors)}/{pool.actors_planned} actor(s) at work, "
                                  f"{pool.rows} rows{cpu}", overflow="ellipsis", no_wrap=True))
        return grid


def display_for_stderr() -> LiveDisplay | PlainLines:
    """A live display if stderr is a terminal (asked now, before the stderr filter puts a pipe there), else lines.

    The live display writes to its own copy of the terminal's descriptor, so it draws on the terminal itself."""
    try:
        terminal = sys.stderr.isatty()
    except (AttributeError, ValueError):
        terminal = False
    if terminal and os.environ.get("TERM") != "dumb":
        return LiveDisplay(os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, errors="replace"))
    return PlainLines()
