"""Decide, per row, whether a text value can go to a model at all."""

from __future__ import annotations

from typing import Any


def text_problem(value: Any, name: str = "text") -> str | None:
    """Return why `value` is not usable model input, or None when it is clean text."""
    if value is None:
        return f"{name} is null"
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return f"{name} is not valid UTF-8"
    if not isinstance(value, str):
        return f"{name} is not a string (got {type(value).__name__})"
    if not value.strip():
        return f"{name} is empty or whitespace"
    return None


def as_text(value: Any) -> str:
    """The clean text of a value that `text_problem` accepted."""
    return value.decode("utf-8") if isinstance(value, bytes) else value
