"""Where a run's time goes inside its actors: a small Ray actor that the Annotators report to.

Each Annotator reports once when its model is loaded and once per call: when the call ran,
how long it tokenized, ran the model and postprocessed, and per task the rows it annotated,
the tokens it read and the seconds they took (a task that shares another's forward pass is
charged that forward pass too, so that every task's rows/s is what it really cost). The run
report shows per task throughput and per actor how busy it was between its first and last call.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

STATS_ACTOR_PREFIX = "nlp-tasks-stats-"
PHASES = ("tokenize", "forward", "postprocess")


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals (calls overlap with actor_concurrency > 1)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


class RunStats:
    """Ray actor (num_cpus=0, on the driver's node) that gathers what the Annotators report."""

    def __init__(self):
        self.tasks: dict[str, Counter] = defaultdict(Counter)
        self.actors: dict[str, dict[str, Any]] = {}

    def actor_ready(self, actor: str, pool: str, node: str, load_seconds: float, token_budget: int) -> None:
        """An actor loaded its model; a restarted actor keeps its id and its record, and counts the restart."""
        state = self.actors.setdefault(actor, {"pool": pool, "calls": [], "rows": 0, "phases": Counter(),
                                               "load_s": 0.0, "starts": 0})
        state.update(node=node, token_budget=token_budget, load_s=state["load_s"] + load_seconds,
                     starts=state["starts"] + 1)

    def record(self, actor: str, started: float, ended: float, rows: int, phases: dict[str, float],
               tasks: dict[str, tuple[int, int, float]]) -> None:
        state = self.actors[actor]
        state["calls"].append((started, ended))
        state["rows"] += rows
        state["phases"].update(phases)
        for task, (annotated, tokens, seconds) in tasks.items():
            self.tasks[task].update({"rows": annotated, "tokens": tokens, "seconds": seconds})

    def summary(self) -> dict:
        tasks = {}
        for task, totals in sorted(self.tasks.items()):
            seconds = totals["seconds"]
            tasks[task] = {
                "rows": totals["rows"], "tokens": totals["tokens"], "actor_seconds": round(seconds, 3),
                "rows_per_s": round(totals["rows"] / seconds, 2) if seconds else None,
                "tokens_per_s": round(totals["tokens"] / seconds, 1) if seconds else None,
            }
        actors = []
        for actor, state in self.actors.items():
            calls = state["calls"]
            span = max(end for _, end in calls) - min(start for start, _ in calls) if calls else 0.0
            busy = busy_seconds(calls)
            actors.append({
                "actor": actor[:12], "pool": state["pool"], "node": state["node"][:12],
                "load_s": round(state["load_s"], 2), "restarts": state["starts"] - 1,
                "token_budget": state["token_budget"],
                "calls": len(calls), "rows": state["rows"],
                "busy_s": round(busy, 2), "span_s": round(span, 2),
                "busy_share": round(busy / span, 3) if span else None,
                "phases_s": {phase: round(state["phases"][phase], 2) for phase in PHASES},
            })
        return {"tasks": tasks, "actors": sorted(actors, key=lambda a: (a["pool"], -a["rows"]))}
