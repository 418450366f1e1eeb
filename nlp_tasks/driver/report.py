"""The run report: what a run did, for machines (JSON) and for people (a summary, a page per run, a page of all runs).

Written next to the output as `__reports/run-<UTC time, to the millisecond>.{json,html}`: rows in and out, rows with
errors by reason (with a few row ids each), per-task throughput measured inside the actors (rows/s and tokens/s of
model time), wall time per stage, the run's timeline as the driver saw it (progress.RunEvents), models and their
fingerprints, the config fingerprint, library versions, and per task the distribution of its labels or entity types,
or of a number that fits its output (write.measured_values). The HTML pages are drawn by pages/run_page.py (this run)
and pages/index_page.py (`__reports/index.html`, every run of the output, rewritten at each run's end).
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from nlp_tasks.driver.budget import budget_failure
from nlp_tasks.driver.pages.index_page import write_index
from nlp_tasks.driver.pages.run_page import run_page
from nlp_tasks.output.layout import REPORTS
from nlp_tasks.output.storage import write_atomic
from nlp_tasks.secrets import redact


@dataclass
class RunReport:
    """Accumulates, on the driver, the counts of each committed part (counted by the workers that wrote it)."""

    tasks: list[str]
    started: float = field(default_factory=time.perf_counter)
    rows: int = 0
    timeline: list[tuple[float, int]] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    rows_with_errors: int = 0
    distributions: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    writers: Counter = field(default_factory=Counter)
    error_ids: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    values: dict[str, tuple[str, Counter]] = field(default_factory=dict)

    def add_part(self, rows: int, counts: dict, writer: str) -> None:
        """One committed part's rows and counts (write.part_counts)."""
        self.rows += rows
        self.timeline.append((round(time.perf_counter() - self.started, 3), self.rows))
        self.rows_with_errors += counts["rows_with_errors"]
        for task, message, count, *ids in counts["errors"]:
            self.errors[(task, message)] += count
            kept = self.error_ids.setdefault((task, message), [])
            kept += [row_id for row_id in (ids[0] if ids else []) if row_id not in kept][:3 - len(kept)]
        for task, labels in counts["labels"].items():
            self.distributions[task].update(labels)
        for task, (measure, bins) in counts.get("values", {}).items():
            self.values.setdefault(task, (measure, Counter()))[1].update(bins)
        self.writers[writer] += rows

    def to_dict(self, job: dict, result: Any, run_stats: dict, stage_stats: str, run: dict | None = None) -> dict:
        """The report; `run`: the driver's timeline of the run (progress.RunEvents.as_report)."""
        return {
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "output": result.output_path,
            "rows_in": result.rows_in,
            "rows_out": result.rows_out,
            "rows_kept_from_vanished_inputs": result.rows_kept_vanished,
            "rows_this_run": self.rows,
            "files_processed": result.files_processed,
            "files_already_committed": result.files_done_before,
            "seconds": round(result.seconds, 2),
            "rows_with_errors": self.rows_with_errors,
            "errors_by_reason": [
                {"task": task, "message": message, "rows": count}
                for (task, message), count in self.errors.most_common()
            ],
            "error_row_ids": [{"task": task, "message": message, "row_ids": self.error_ids.get((task, message), [])}
                              for (task, message), _ in self.errors.most_common()],
            "error_budget": result.error_budget,
            "skipped_tasks": result.skipped,
            "quarantined_files": result.quarantined,
            "skipped_inputs": result.skipped_inputs,
            "input_changes": result.changes,
            "rows_by_writer": dict(self.writers.most_common()),
            "time_s": result.timings,
            "compute": result.pools,
            "throughput": run_stats.get("tasks", {}),
            "actors": run_stats.get("actors", []),
            "distributions": {task: dict(counts.most_common()) for task, counts in self.distributions.items()},
            "value_distributions": {task: {"measure": measure, "bins": dict(sorted(bins.items(),
                                                                                  key=lambda item: float(item[0])))}
                                    for task, (measure, bins) in self.values.items()},
            "timeline": self.timeline,
            "run": run or {},
            "config_fingerprint": job["fingerprint"],
            "tasks": job["tasks"],
            "versions": job["versions"],
            "stage_stats": stage_stats,
        }


def summary(report: dict) -> str:
    """The human summary printed at the end of a run."""
    lines = [
        (f"rows: {report['rows_in']} in, {report['rows_out']} out "
        f"({report['rows_this_run']} this run, {report['files_processed']} file(s); "
        f"{report['files_already_committed']} already committed) in {report['seconds']} s"),
        f"rows with errors: {report['rows_with_errors']}",
    ]
    if (line := budget_failure(report.get("error_budget") or {})) is not None:
        lines.append(f"error budget blown: {line}")
    lines += [f"quarantined input file {path}: {problem}" for path, problem in report["quarantined_files"].items()]
    lines += [f"not read below input.path: {path} {why}" for path, why in report["skipped_inputs"].items()]
    changes = report["input_changes"]
    for kind in ("changed", "vanished"):
        if changes.get(kind):
            lines.append(f"{kind} input files ({len(changes[kind])}): {', '.join(changes[kind][:5])}"
                         + (f"; their old rows were {changes['vanished_rows']}" if kind == "vanished" else ""))
    lines += [f"renamed input file {old} -> {new}" for new, old in changes.get("renamed", {}).items()]
    lines += [f"column {column} {verb} for {len(files)} file(s)" for key, verb in (("columns_computed", "computed"),
              ("columns_dropped", "dropped")) for column, files in changes.get(key, {}).items()]
    lines += [f"column {column} kept: its task is no longer configured"
              for column in changes.get("removed_tasks_kept", [])]
    lines += [f"repaired: {what}" for what in changes.get("repaired", [])]
    lines += [f"  {e['rows']:>6}  {e['task']}: {e['message']}" for e in report["errors_by_reason"][:10]]
    lines += [f"compute: pool {'+'.join(pool['tasks'])}: {pool['min_actors']}-{pool['max_actors']} actors, "
              f"{pool['num_cpus_per_actor']:g} CPU, {pool['num_gpus_per_actor']:g} GPU, "
              + (f"ctranslate2 with {pool['inter_threads']} worker(s)" if pool.get("engine") == "ctranslate2"
                 else f"{pool.get('engine', 'transformers')} with {pool['torch_threads']} thread(s)")
              + f", batch {pool['batch_size']}, {pool['device']} {pool['dtype']}"
              + (f", calibrated on {pool['calibration']}" if pool.get("calibration") else "")
              + (f" (transformers: {pool['engine_note']})" if pool.get("engine_note") else "")
              + (f" (qualification timed {pool['engine_speed']})" if pool.get("engine_speed") else "")
              for pool in report["compute"]]
    lines.append("time: " + ", ".join(f"{phase} {seconds} s" for phase, seconds in report["time_s"].items()))
    for task, stats in report["throughput"].items():
        saved = f" (about {stats['seconds_saved']} s of actor time saved)" if stats["reused"] and stats["rows"] else ""
        speed = (f"; {stats['rows_per_s']} rows/s, {stats['tokens_per_s']} tokens/s per actor "
                 f"({stats['actor_seconds']} s of actor time)" if stats["rows_per_s"] else "")
        lines.append(f"{task}: {stats['rows']} rows computed, {stats['reused']} reused{saved}{speed}")
    for actor in report["actors"]:
        share = f"{actor['busy_share']:.0%}" if actor["busy_share"] is not None else "-"
        phases = ", ".join(f"{phase} {seconds} s" for phase, seconds in actor["phases_s"].items())
        lines.append(f"actor {actor['actor']} ({actor['pool']}): {actor['rows']} rows in {actor['calls']} calls, "
                     f"busy {share} of {actor['span_s']} s, padding {actor['padding_share']}; "
                     f"model load {actor['load_s']} s, ready at "
                     f"{actor['ready_after_s']} s, calls from {actor['first_call_after_s']} to "
                     f"{actor['last_call_ended_after_s']} s; {phases}"
                     + (f"; on {actor['cpu']}: {actor['kernels']}" if actor.get("kernels") else ""))
    for task, counts in report["distributions"].items():
        top = ", ".join(f"{label} {count}" for label, count in list(counts.items())[:6])
        lines.append(f"{task} distribution: {top}")
    return "\n".join(lines)


def holds(report: dict) -> str:
    """What the output holds after the run: the current input's rows, and those kept of vanished input files."""
    kept = report["rows_kept_from_vanished_inputs"]
    return (f"output holds {report['rows_out'] + kept} rows: {report['rows_out']} of the input's {report['rows_in']}"
            + (f" and {kept} kept from vanished input files" if kept else ""))


def write_report(filesystem: Any, output_root: str, report: dict) -> str:
    """Write the JSON and the run's page next to the output, secrets redacted (a task's skip reason, a stage's error
    may name a URL), then rewrite the index of all runs (pages/index_page.py); returns the JSON's path."""
    now = time.time()  # to the millisecond: a run with nothing to do ends within the second of the one before
    stamp = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}.{int(now * 1000) % 1000:03d}Z"
    folder = f"{output_root.rstrip('/')}/{REPORTS}"
    filesystem.makedirs(folder, exist_ok=True)
    report = json.loads(redact(json.dumps(report)))
    for suffix, text in (("html", run_page(report, f"run-{stamp}")), ("json", json.dumps(report, indent=2))):
        # whole or absent, the JSON last: a run killed while writing them leaves no torn report for the index
        write_atomic(filesystem, f"{folder}/run-{stamp}.{suffix}", redact(text).encode(errors="replace"))
    write_index(filesystem, folder)
    return f"{folder}/run-{stamp}.json"


def index_path(report_path: str) -> str:
    """The index of all runs beside a run's report."""
    return f"{report_path.rsplit('/', 1)[0]}/index.html"
