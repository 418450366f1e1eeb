"""The internal columns rows carry between the plan's stages. None reaches the output (write.output_columns), and an
input column of one of these names is refused before anything runs (driver/checks.py): the stages would take it
for their own."""

from __future__ import annotations

UNIT_COLUMN = "__unit"
"""Each row's input file (its unit), set by the reader."""
ROW_COLUMN = "__row"
"""Each row's position in its input file, set by the reader."""
CALLS_COLUMN = "__calls"
"""On one row of a batch, the JSON list of the actor calls that produced it (stats.py)."""
KEY_PREFIX = "__key."
"""Each row's content key for a task (null where its text is unusable): reuse.py."""
HELD_PREFIX = "__held."
"""The value the output's cache holds for each row's key (null where it holds none): reuse.py."""
DEFERRED_PREFIX = "__deferred."
"""True where another batch of the night claimed the row's key first: the pools leave the row to it (reuse.py)."""
SEGMENTS_PREFIX = "__segments."
"""Each row's segments whole (pickled), for the postprocess stage and multi-level tasks: stages.py."""
INPUTS_PREFIX = "__inputs."
"""The same segments' model inputs alone, as Arrow lists of int32 (stages.inputs_array), for the model stage."""
RESULTS_PREFIX = "__results."
"""Each row's raw outputs (its segments too, where a multi-level task made new ones), or its RowError."""

INTERNAL_COLUMNS = (UNIT_COLUMN, ROW_COLUMN, CALLS_COLUMN)
INTERNAL_PREFIXES = (KEY_PREFIX, HELD_PREFIX, DEFERRED_PREFIX, SEGMENTS_PREFIX, INPUTS_PREFIX, RESULTS_PREFIX)


def is_internal(name: str) -> bool:
    return name in INTERNAL_COLUMNS or name.startswith(INTERNAL_PREFIXES)
