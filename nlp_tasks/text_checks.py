"""Decide, per row, whether a text value can go to a model at all."""

from __future__ import annotations

import unicodedata
from typing import Any

INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"})
"""Controls (NUL included), format characters (zero-width spaces and joiners, BOM), surrogates, separators."""


def has_visible_character(text: str) -> bool:
    """Whether the text has a character a model can read; stops at the first one (usually the first character)."""
    return any(not char.isspace() and unicodedata.category(char) not in INVISIBLE_CATEGORIES for char in text)


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
    if not has_visible_character(value):
        return f"{name} has no visible character (only control, format or zero-width characters)"
    return None


def as_text(value: Any) -> str:
    """The clean text of a value that `text_problem` accepted."""
    return value.decode("utf-8") if isinstance(value, bytes) else value
