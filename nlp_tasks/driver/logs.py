"""Keep the job's logs readable and free of secrets: drop the one ERROR line Ray prints for every healthy run, and
pass every log record and every line written to stderr through the redaction (secrets.redact).

Ray Data hands each pool actor its own constructor arguments by reference (object refs it owns
on the driver), and Ray core logs, once per process, an ERROR that actor restarts could fail if
such arguments were lost (ray-project/ray#53727, #57733). Here they live as long as the driver,
so restarts work (tests/driver/test_faults.py kills actors and a worker node), and a line at ERROR level
in every run teaches people to ignore errors. Ray writes it from C++ straight to file
descriptor 2, so it can only be dropped there: `dropping_known_ray_noise` passes stderr through a
pipe and drops lines that contain exactly that message; every other line goes through redacted. That
pipe also catches what no Python logger formats: tracebacks Ray prints for its workers, warnings of
C++ libraries. Log records are redacted where they are formatted (`RedactingFilter`), before any
handler writes them anywhere.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from nlp_tasks.secrets import redact

KNOWN_NOISE = (b"has constructor arguments in the object store and max_restarts > 0",)


def redacted(line: bytes) -> bytes:
    return redact(line.decode(errors="surrogateescape")).encode(errors="surrogateescape")


class RedactingFilter(logging.Filter):
    """A handler filter that redacts the record's message, traceback and stack before the handler formats them."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def redact_logging() -> None:
    """Redact what every handler of the root logger writes, Python warnings included (they are logged)."""
    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


@contextmanager
def dropping_known_ray_noise() -> Iterator[None]:
    """Within the block, lines written to fd 2 that hold a KNOWN_NOISE message are not shown."""
    try:
        sys.stderr.flush()
        original = os.dup(2)
    except (OSError, ValueError):  # no real stderr (an embedding host): nothing to filter
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not any(noise in line for noise in KNOWN_NOISE):
                    os.write(original, redacted(line))

    forwarder = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the forwarder drains it and ends
        forwarder.join(timeout=5)
        os.close(original)


class _BelowErrorDropped(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


class _AllDropped(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


RAY_CONSOLE_FILTERS = {"ray": _BelowErrorDropped, "ray.data": _AllDropped}
"""Ray's loggers that print to the console (each with its own handler; they do not propagate), and what of them the
console keeps: Ray core's errors; none of Ray Data's, whose errors that stop a run reach the job as its exception."""

_ray_quiet = False
"""Whether quiet_ray_console ran in this process."""


def ray_console_quiet() -> bool:
    """Whether Ray's own lines are kept off this process's console (no --verbose): start_ray then keeps the output
    of Ray's workers and daemons off it too."""
    return _ray_quiet


def quiet_ray_console() -> None:
    """Keep Ray's own lines off the console; they stay in Ray's log files (Ray Data's under the session folder). A
    person at a run sees the job's own lines, its progress and its one error line, not Ray's execution plan with its
    dataset id, "Progress bars disabled", "Token authentication is enabled", or Ray Data's stack trace of an actor
    that could not start; a bug still prints its traceback (jobs/annotate.py). Imports Ray: its loggers are
    configured when it is imported."""
    import ray
    import ray.data  # noqa: F401

    global _ray_quiet
    _ray_quiet = True
    for name, dropped in RAY_CONSOLE_FILTERS.items():
        for handler in logging.getLogger(name).handlers:
            if (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
                    and not any(isinstance(f, dropped) for f in handler.filters)):
                handler.addFilter(dropped())
