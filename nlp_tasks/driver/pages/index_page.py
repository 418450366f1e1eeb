"""`__reports/index.html`: every run of one output, newest first, so that a slower or worse night stands out.

Rewritten at each run's end from `__reports/runs.jsonl`, what the index shows of each run (its summary), so that a
nightly job's run reads one file, not a report per night so far: a run report not there yet (this run's, or every
report when the file is new or lost) is read once and its summary added. Both are written atomically
(storage.write_atomic: a rename locally, one PUT on object storage), so a reader sees the old index or the new one.
At the top, small trend charts over the runs (wall time, rows/s, share of rows with errors, rows annotated), a run
that is slower or worse than the median of the runs before it marked red; below, one row per run with its verdict,
rows, duration, rows/s, errors and input changes, linking to its page.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

from pydantic import BaseModel

from nlp_tasks.driver.pages.markup import PALETTE, esc, number, page, svg
from nlp_tasks.driver.pages.verdict import verdict
from nlp_tasks.output.storage import write_atomic
from nlp_tasks.secrets import redact

WORSE = 1.25
"""A run whose wall time (or error share) is this much over the median of the runs before it is marked; rows/s
under the median divided by this too."""
TREND_RUNS = 60
"""Runs drawn in the trend charts (the newest)."""


SUMMARIES = "runs.jsonl"
"""Beside the reports: a line per readable run report, its name and summary (run_summary); an unreadable report is
read again at the next run. Not `.json`, so that a glob of the reports (`run-*.json`, `*.json`) finds reports
only."""


class RunSummary(BaseModel):
    """What the index shows of one run; a line of runs.jsonl that is not one is read again from its report."""

    finished_at: str | None
    ok: bool
    look: list[str]
    output: str
    changes: str
    rows_this_run: int
    rows_out: int
    seconds: float
    rows_with_errors: int
    reuse: str = ""
    """Per task, the rows its model computed and those it reused (workers/reuse.py)."""


def run_summary(report: dict) -> dict:
    """The RunSummary of a run report."""
    ok, look = verdict(report)
    reuse = "; ".join(f"{task}: {stats.get('rows', 0)} computed, {stats.get('reused', 0)} reused"
                      for task, stats in (report.get("throughput") or {}).items())
    return RunSummary(finished_at=report.get("finished_at"), ok=ok, look=look, output=report.get("output", ""),
                      changes=change_text(report), reuse=reuse, **{key: report.get(key) or 0 for key in (
                          "rows_this_run", "rows_out", "seconds", "rows_with_errors")}).model_dump()


def _read_json(filesystem: Any, path: str) -> Any:
    try:
        return json.loads(filesystem.cat_file(path))
    except (OSError, ValueError, RecursionError):
        return None


def _read_summaries(filesystem: Any, path: str) -> dict[str, dict | None]:
    """runs.jsonl by report name; a line that is not a RunSummary (an edited file, another version's) is left out,
    so that its report is read again."""
    try:
        lines = filesystem.cat_file(path).decode().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    summaries = {}
    for line in lines:
        try:
            entry = json.loads(line)
            summaries[str(entry["report"])] = RunSummary.model_validate(entry["summary"]).model_dump()
        except (ValueError, TypeError, KeyError, RecursionError):  # pydantic's ValidationError is a ValueError
            continue
    return summaries


def run_summaries(filesystem: Any, folder: str) -> list[tuple[str, dict | None]]:
    """(report name without suffix, its summary or None if unreadable) of every run report in `folder`, newest
    first; runs.jsonl brought up to date with the reports there."""
    filesystem.invalidate_cache(folder)  # object storage: a listing cached before this run's report was written
    names = sorted((path.rsplit("/", 1)[-1][:-len(".json")] for path in filesystem.ls(folder, detail=False)
                    if path.rsplit("/", 1)[-1].startswith("run-") and path.endswith(".json")), reverse=True)
    known = _read_summaries(filesystem, f"{folder}/{SUMMARIES}")
    summaries: dict[str, dict | None] = {}
    for name in names:
        if name in known:
            summaries[name] = known[name]
        else:
            report = _read_json(filesystem, f"{folder}/{name}.json")
            summaries[name] = run_summary(report) if isinstance(report, dict) and "rows_this_run" in report else None
    lines = "".join(json.dumps({"report": name, "summary": summary}) + "\n"
                    for name, summary in sorted(summaries.items()) if summary is not None)
    write_atomic(filesystem, f"{folder}/{SUMMARIES}", redact(lines).encode())
    return list(summaries.items())


def figures(run: dict) -> dict[str, float | None]:
    seconds = run.get("seconds") or 0
    rows = run.get("rows_this_run", 0)
    return {"seconds": seconds, "rows_per_s": round(rows / seconds, 1) if seconds and rows else None,
            "error_share": run.get("rows_with_errors", 0) / rows if rows else None, "rows": rows}


def median(runs: list[dict[str, float | None]], key: str) -> float | None:
    values = [figure[key] for figure in runs if figure[key] is not None]
    return statistics.median(values) if values else None


def marks(runs: list[dict]) -> list[set[str]]:
    """Per run (oldest first), which figures are worse than the median of the runs before it."""
    out = []
    for index, run in enumerate(runs):
        before = [figures(r) for r in runs[:index] if r.get("rows_this_run")]
        now, worse = figures(run), set()
        if before and run.get("rows_this_run"):
            if (m := median(before, "seconds")) and now["seconds"] > m * WORSE:
                worse.add("seconds")
            if (m := median(before, "rows_per_s")) and now["rows_per_s"] and now["rows_per_s"] < m / WORSE:
                worse.add("rows_per_s")
            if (m := median(before, "error_share")) is not None and now["error_share"] is not None \
                    and now["error_share"] > max(m * WORSE, m + 0.001):
                worse.add("error_share")
        out.append(worse)
    return out


def trend(title: str, values: list[float | None], worse: list[bool], fmt: str) -> str:
    """A small line chart of one figure over the runs, oldest left; worse runs red."""
    width, height, pad = 340, 130, 14
    known = [v for v in values if v is not None]
    peak = max(known, default=0) or 1
    step = (width - 2 * pad) / max(1, len(values) - 1)
    points = [(pad + i * step, height - 24 - (height - 44) * v / peak, v, w)
              for i, (v, w) in enumerate(zip(values, worse)) if v is not None]
    parts = [f"<line class='axis' x1='{pad}' x2='{width - pad}' y1='{height - 24}' y2='{height - 24}'/>",
             f"<text class='small' x='{pad}' y='{height - 8}'>oldest</text>",
             f"<text class='small' x='{width - pad}' y='{height - 8}' text-anchor='end'>newest</text>",
             f"<text class='small' x='{pad}' y='12'>max {esc(format(peak, fmt))}</text>"]
    if len(points) > 1:
        parts.append(f"<polyline fill='none' stroke='{PALETTE[0]}' stroke-width='2' points='"
                     + " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points) + "'/>")
    for x, y, value, bad in points:
        parts.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{5.5 if bad else 3.5}' "
                     f"fill='{'#d62728' if bad else PALETTE[0]}'>"
                     f"<title>{esc(format(value, fmt))}</title></circle>")
    return f"<div class='trend'><h3>{esc(title)}</h3>{svg(height, ''.join(parts), title, width)}</div>"


def change_text(report: dict) -> str:
    changes = report.get("input_changes", {})
    parts = [f"{len(changes[k])} {k}" for k in ("new", "changed", "vanished") if changes.get(k)]
    if changes.get("renamed"):
        parts.append(f"{len(changes['renamed'])} renamed")
    parts += [f"column {c} computed for {len(files)}" for c, files in changes.get("columns_computed", {}).items()
              if files and not changes.get("new") and not changes.get("changed")]
    if report.get("skipped_tasks"):
        parts.append(f"{len(report['skipped_tasks'])} task(s) skipped")
    if report.get("quarantined_files"):
        parts.append(f"{len(report['quarantined_files'])} quarantined")
    return ", ".join(parts) or "none"


def flag(worse: set[str], key: str) -> str:
    return " class='n worse'" if key in worse else " class='n'"


def index_page(runs: list[tuple[str, dict | None]]) -> str:
    """The page of all runs (module docstring); `runs`: their summaries (run_summary), newest first."""
    readable = [(name, run) for name, run in runs if run is not None]
    oldest_first = [run for _, run in reversed(readable)]
    flagged = marks(oldest_first)
    worse_by_name = {name: flagged[len(readable) - 1 - i] for i, (name, _) in enumerate(readable)}
    drawn = oldest_first[-TREND_RUNS:]
    drawn_flags = flagged[-TREND_RUNS:]
    charts = "".join([
        trend("wall time (s), runs with rows",
              [figures(r)["seconds"] if r.get("rows_this_run") else None for r in drawn],
              ["seconds" in f for f in drawn_flags], ".1f"),
        trend("rows/s, end to end", [figures(r)["rows_per_s"] for r in drawn],
              ["rows_per_s" in f for f in drawn_flags], ".1f"),
        trend("share of rows with errors", [figures(r)["error_share"] for r in drawn],
              ["error_share" in f for f in drawn_flags], ".1%"),
        trend("rows annotated", [figures(r)["rows"] for r in drawn], [False] * len(drawn), ",.0f"),
    ])
    rows = []
    for name, run in runs:
        if run is None:
            rows.append(f"<tr><td>{esc(name)}</td><td colspan='7'>unreadable report</td></tr>")
            continue
        fig, worse = figures(run), worse_by_name.get(name, set())
        state = "<span class='ok'>ok</span>" if run["ok"] else \
            f"<span class='bad'>{esc('; '.join(run['look']))}</span>"
        rows.append(
            f"<tr><td><a href='{esc(name)}.html'>{esc((run['finished_at'] or name).replace('T', ' '))}</a></td>"
            f"<td>{state}</td>"
            f"<td class='n'>{number(run.get('rows_this_run'))}</td>"
            f"<td class='n'>{number(run.get('rows_out'))}</td>"
            f"<td{flag(worse, 'seconds')}>{number(fig['seconds'])}</td>"
            f"<td{flag(worse, 'rows_per_s')}>{number(fig['rows_per_s'])}</td>"
            f"<td{flag(worse, 'error_share')}>{number(run.get('rows_with_errors'))}</td>"
            f"<td>{esc(run['changes'])}{'<br>' + esc(run['reuse']) if run.get('reuse') else ''}</td>"
            "</tr>")
    output = next((run["output"] for _, run in readable), "")
    style = ("<style>.trends{display:grid;grid-template-columns:repeat(auto-fit,minmax(15rem,1fr));gap:.2rem 1rem}"
             ".worse{color:#b3261e;font-weight:700}.ok{color:#2f7d32;font-weight:600}.bad{color:#b3261e}"
             "col.when{width:11.5rem}col.state{width:auto}col.num{width:5.6rem}col.changes{width:15rem}</style>")
    body = (f"{style}<h1>All runs</h1><div class='sub'>{esc(output)} · {len(runs)} run(s), newest first; "
            "a red figure is worse than the median of the runs before it</div>"
            f"<section id='trends'><h2>Trends</h2><div class='trends'>{charts}</div></section>"
            "<section><table id='runs'><colgroup><col class='when'><col class='state'><col class='num'>"
            "<col class='num'><col class='num'><col class='num'><col class='num'><col class='changes'></colgroup>"
            "<tr><th>finished</th><th>verdict</th><th class='n'>rows this run</th><th class='n'>rows in output</th>"
            "<th class='n'>seconds</th><th class='n'>rows/s</th><th class='n'>rows with errors</th>"
            f"<th>input changes; rows computed, reused</th></tr>{''.join(rows)}</table></section>")
    return page(f"nlp-tasks runs: {output}", body)


def write_index(filesystem: Any, folder: str) -> str:
    """Rewrite `folder/index.html` from the runs' summaries (module docstring), atomically; returns its path."""
    folder = folder.rstrip("/")
    path = f"{folder}/index.html"
    page_text = redact(index_page(run_summaries(filesystem, folder)))
    write_atomic(filesystem, path, page_text.encode(errors="replace"))  # a lone surrogate (a name from bytes): "?"
    return path
