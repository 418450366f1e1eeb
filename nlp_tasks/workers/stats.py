"""Where a run's time goes inside its actors, carried with the rows instead of by another process.

Each Annotator call records itself: which actor, when it ran, how long it tokenized, ran the
model and postprocessed, the real and the padded tokens of its forward passes, and per task
the rows its model annotated, those whose values it reused (reuse.py), the tokens it read and
the seconds they took (a task that shares
another's forward pass is charged that pass too, so that every task's rows/s is what it
cost); an actor's first call also records its model load. The record rides in an internal
column on the first row of the call's output; the write stage moves it into the part record
of the part that row lands in, and the driver counts the records of committed parts only:
each call once, with no stats actor to start or to lose. The run report shows per task
throughput, and per actor how busy it was between its first and last call and which share
of the tokens it ran were padding.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

import pyarrow as pa

from nlp_tasks.workers.columns import CALLS_COLUMN

PHASES = ("tokenize", "forward", "postprocess")


def with_call(batch: pa.Table, call: dict) -> pa.Table:
    """The batch with `call` added to the record list on its first row (after those of earlier pools)."""
    calls = batch.column(CALLS_COLUMN).to_pylist() if CALLS_COLUMN in batch.column_names else [None] * batch.num_rows
    calls[0] = json.dumps([*json.loads(calls[0] or "[]"), call])
    if CALLS_COLUMN in batch.column_names:
        batch = batch.drop_columns([CALLS_COLUMN])
    return batch.append_column(CALLS_COLUMN, pa.array(calls, pa.string()))


def calls_in(rows: pa.Table) -> list[dict]:
    """The call records held by these rows."""
    if CALLS_COLUMN not in rows.column_names:
        return []
    return [call for value in rows.column(CALLS_COLUMN).drop_null().to_pylist() for call in json.loads(value)]


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals (calls overlap with actor_concurrency > 1)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


BUSY_SPANS = 120
"""Busy spans kept per actor for the report's timeline: calls closer than 1/BUSY_SPANS of the actor's life merge."""


def busy_spans(intervals: list[tuple[float, float]], origin: float) -> list[list[float]]:
    """The [start, end] spans an actor was busy, seconds after `origin`, merged to at most about BUSY_SPANS."""
    if not intervals:
        return []
    ordered = sorted(intervals)
    gap = (max(end for _, end in ordered) - ordered[0][0]) / BUSY_SPANS
    spans = [list(ordered[0])]
    for start, end in ordered[1:]:
        if start <= spans[-1][1] + gap:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    return [[round(start - origin, 3), round(end - origin, 3)] for start, end in spans]


def padding_share(tokens: Counter) -> float | None:
    """The share of the tokens run through the model that were padding."""
    return round(1 - tokens["real"] / tokens["padded"], 3) if tokens["padded"] else None


class RunStats:
    """Per task and per actor figures, from the call records of committed parts."""

    def __init__(self):
        self.tasks: dict[str, Counter] = defaultdict(Counter)
        self.actors: dict[str, dict[str, Any]] = {}

    def add(self, calls: list[dict], reused: bool = True) -> None:
        """Count `calls`; their reused rows too unless `reused` is False (a file annotated a second time takes again
        the values its first time counted, commits.Commits.redo_deferred)."""
        for call in calls:
            state = self.actors.setdefault(call["actor"], {
                "pool": call["pool"], "node": call["node"], "calls": [], "rows": 0,
                "phases": Counter(), "tokens": Counter(),
                "load_s": 0.0, "starts": 0, "ready_at": None, "token_budget": None, "cpu": None, "kernels": None})
            if "load_s" in call:  # the first call after the actor loaded its model
                state["load_s"] += call["load_s"]
                state["starts"] += 1
                state["ready_at"] = min(state["ready_at"] or call["ready_at"], call["ready_at"])
                state["token_budget"] = call["token_budget"]
                state["cpu"], state["kernels"] = call.get("cpu"), call.get("kernels")
            state["calls"].append((call["started"], call["ended"]))
            state["rows"] += call["rows"]
            state["phases"].update(call["phases"])
            state["tokens"].update(call["tokens"])
            for task, (annotated, tokens, seconds, taken) in call["tasks"].items():
                self.tasks[task].update({"rows": annotated, "tokens": tokens, "seconds": seconds,
                                         "reused": taken if reused else 0})

    def summary(self, started_at: float) -> dict:
        """Per task and per actor figures; times of an actor's life are seconds after `started_at` (the plan's
        start, wall clock)."""
        tasks = {}
        for task, totals in sorted(self.tasks.items()):
            seconds = totals["seconds"]
            rows = totals["rows"]
            tasks[task] = {
                "rows": rows, "reused": totals["reused"], "tokens": totals["tokens"], "actor_seconds": round(seconds, 3),
                "rows_per_s": round(rows / seconds, 2) if seconds and rows else None,
                "tokens_per_s": round(totals["tokens"] / seconds, 1) if seconds and rows else None,
                "seconds_saved": round(totals["reused"] * seconds / rows, 1) if rows else None,
            }
        actors = []
        for actor, state in self.actors.items():
            calls = state["calls"]
            first, last = min(start for start, _ in calls), max(end for _, end in calls)
            busy = busy_seconds(calls)
            actors.append({
                "actor": actor[:12], "pool": state["pool"], "node": state["node"][:12],
                "ready_after_s": round(state["ready_at"] - started_at, 2) if state["ready_at"] else None,
                "first_call_after_s": round(first - started_at, 2),
                "last_call_ended_after_s": round(last - started_at, 2),
                "load_s": round(state["load_s"], 2), "restarts": max(0, state["starts"] - 1),
                "token_budget": state["token_budget"], "cpu": state["cpu"], "kernels": state["kernels"],
                "calls": len(calls), "rows": state["rows"],
                "busy_s": round(busy, 2), "span_s": round(last - first, 2),
                "busy_share": round(busy / (last - first), 3) if last > first else None,
                "phases_s": {phase: round(state["phases"][phase], 2) for phase in PHASES},
                "padding_share": padding_share(state["tokens"]),
                "busy_spans": busy_spans(calls, started_at),
            })
        return {"tasks": tasks, "actors": sorted(actors, key=lambda a: (a["pool"], -a["rows"]))}
