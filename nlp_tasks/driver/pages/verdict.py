"""A run at a glance: its verdict (ok, or what needs a look, with counts) and its numbers, for both pages."""

from __future__ import annotations

from nlp_tasks.driver.budget import budget_failure
from nlp_tasks.driver.pages.markup import esc, number


def verdict(report: dict) -> tuple[bool, list[str]]:
    """Ok, or what needs a look, each with its count."""
    look = []
    if (line := budget_failure(report.get("error_budget") or {})) is not None:
        look.append(f"error budget blown: {line}")
    if report.get("rows_with_errors"):
        look.append(f"{report['rows_with_errors']:,} row(s) with errors")
    if report.get("skipped_tasks"):
        look.append(f"{len(report['skipped_tasks'])} skipped task(s): " + ", ".join(report["skipped_tasks"]))
    if report.get("quarantined_files"):
        look.append(f"{len(report['quarantined_files'])} quarantined input file(s)")
    changes = report.get("input_changes", {})
    if changes.get("vanished"):
        look.append(f"{len(changes['vanished'])} vanished input file(s), their rows "
                    f"{changes.get('vanished_rows', 'kept')}")
    if changes.get("repaired"):
        look.append(f"{len(changes['repaired'])} repaired commit(s)")
    return not look, look


def verdict_html(report: dict) -> str:
    ok, look = verdict(report)
    if ok:
        return (f"<div class='verdict ok' id='verdict'><strong>OK</strong> — {report['rows_this_run']:,} rows "
                f"annotated this run, no row errors, nothing skipped or set aside.</div>")
    items = "".join(f"<li>{esc(item)}</li>" for item in look)
    return f"<div class='verdict look' id='verdict'><strong>Needs a look</strong><ul>{items}</ul></div>"


def rows_per_s(report: dict) -> float | None:
    return round(report["rows_this_run"] / report["seconds"], 1) if report.get("seconds") else None


def cards(report: dict) -> str:
    annotate = report.get("time_s", {}).get("annotate")
    items = [("rows this run", number(report["rows_this_run"])), ("rows in / out", (f"{report['rows_in']:,} / "
             f"{report['rows_out']:,}")), ("files annotated", number(report["files_processed"])),
             ("already committed", number(report["files_already_committed"])),
             ("wall time", f"{report['seconds']:g} s"), ("rows/s, end to end", number(rows_per_s(report))),
             ("rows/s, annotating", number(round(report["rows_this_run"] / annotate, 1) if annotate else None)),
             ("rows with errors", number(report["rows_with_errors"]))]
    return "<div class='cards' id='numbers'>" + "".join(f"<div class='card'><b>{esc(value)}</b><span>{esc(name)}"
                                                        f"</span></div>" for name, value in items) + "</div>"
