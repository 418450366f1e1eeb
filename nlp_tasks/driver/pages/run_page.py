"""The run's page, `__reports/run-<time>.html`: what a person opens the morning after, drawn from the run report.

One self-contained file (inline CSS and SVG; no script, no network), readable on a laptop screen: every chart scales
to the page's width, long names are cut in charts (the whole name in a tooltip) and wrap in tables. From the top:
the verdict (ok, or what needs a look, with counts), the run in numbers, a timeline (the driver's phases, each
actor's model load, idle and busy time, the CPU stage workers of split pools, commits as marks), rows annotated and
committed over time and per input file, throughput per task, where the time went, tables (errors by reason with a
few row ids, input changes, the pools' settings), each task's output distribution, and Ray's raw statistics folded
away. Every string that comes from a user or a file (task names, labels, file names, row ids, messages) is escaped.
"""

from __future__ import annotations

from collections import Counter

from nlp_tasks.driver.pages.markup import (
    BUSY,
    COMMIT,
    DIST_WIDTH,
    IDLE,
    LOAD,
    MAX_BARS,
    MAX_FILE_LANES,
    MAX_LANES,
    PALETTE,
    PHASE_COLORS,
    POSTPROCESS,
    TOKENIZE,
    WIDTH,
    bars,
    cut,
    cut_path,
    esc,
    histogram,
    legend,
    names,
    number,
    page,
    stacked,
    svg,
    table,
    ticks,
    time_axis,
)
from nlp_tasks.driver.pages.verdict import cards, verdict_html


def actor_kind(actor: dict) -> str:
    name = actor["actor"]
    return next((stage for stage in ("tokenize", "postprocess") if name.endswith(stage)), "model")


def timeline(report: dict) -> str:
    """Driver phases, then each actor's (and CPU stage worker's) life, then the commits, on one time axis."""
    run = report.get("run") or {}
    phases, commits = run.get("phases", []), run.get("commits", [])
    offset = run.get("annotate_started_s") or 0.0
    actors = report.get("actors", [])
    ends = [report.get("seconds", 0)] + [end for _, _, end in phases] + [t for t, *_ in commits]
    ends += [offset + a["last_call_ended_after_s"] for a in actors]
    total = max(ends) or 1.0
    x0, x1, lane = 190, WIDTH - 10, 20
    def x(t: float) -> float:
        return x0 + (x1 - x0) * max(0.0, t) / total

    shown = actors[:MAX_LANES]
    rows = [f"<text x='{x0 - 8}' y='15' text-anchor='end'>driver</text>"]
    for name, start, end in phases:
        rows.append(f"<g><title>{esc(name)}: {start:.2f} to {end:.2f} s ({end - start:.2f} s)</title>"
                    f"<rect x='{x(start):.1f}' y='2' width='{max(1.0, x(end) - x(start)):.1f}' height='16' "
                    f"fill='{PHASE_COLORS.get(name, '#999')}'/></g>")
    y = lane + 6
    for actor in shown:
        kind = actor_kind(actor)
        label = f"{actor['pool']} {actor['actor'][:8]}" if kind == "model" else f"{kind} {actor['actor'][:8]}"
        rows.append(f"<g><title>{esc(actor['pool'])}: {esc(actor['actor'])} ({kind}), {actor['rows']} rows in "
                    f"{actor['calls']} calls</title><text x='{x0 - 8}' y='{y + 13}' text-anchor='end'>"
                    f"{esc(cut(label, 26))}</text></g>")
        ready = offset + (actor.get("ready_after_s") if actor.get("ready_after_s") is not None
                          else actor["first_call_after_s"])
        last = offset + actor["last_call_ended_after_s"]
        rows.append(f"<rect x='{x(ready):.1f}' y='{y + 2}' width='{max(0.0, x(last) - x(ready)):.1f}' height='14' "
                    f"fill='{IDLE}'><title>idle between calls</title></rect>")
        if actor.get("load_s"):
            rows.append(f"<g><title>{'model load' if kind == 'model' else 'load'} {actor['load_s']} s</title>"
                        f"<rect x='{x(ready - actor['load_s']):.1f}' y='{y + 2}' "
                        f"width='{max(1.0, x(ready) - x(ready - actor['load_s'])):.1f}' height='14' "
                        f"fill='{LOAD}'/></g>")
        color = {"model": BUSY, "tokenize": TOKENIZE, "postprocess": POSTPROCESS}[kind]
        spans = actor.get("busy_spans") or [[actor["first_call_after_s"], actor["last_call_ended_after_s"]]]
        for start, end in spans:
            rows.append(f"<rect x='{x(offset + start):.1f}' y='{y + 2}' "
                        f"width='{max(0.8, x(offset + end) - x(offset + start)):.1f}' height='14' fill='{color}'/>")
        y += lane
    rows.append(f"<text x='{x0 - 8}' y='{y + 13}' text-anchor='end'>commits</text>")
    for t, name, rows_committed in commits:
        rows.append(f"<g><title>{esc(name)} committed at {t:.2f} s ({rows_committed} rows)</title>"
                    f"<path d='M{x(t):.1f},{y + 2} l5,7 l-5,7 l-5,-7 z' fill='{COMMIT}'/></g>")
    y += lane + 4
    content = time_axis(x0, x1, y, total, 0) + "".join(rows)
    more = (f"<p class='note'>and {len(actors) - MAX_LANES} more actor(s) and worker(s), not drawn</p>"
            if len(actors) > MAX_LANES else "")
    items = [("driver phase", PHASE_COLORS["annotate"]), ("model load", LOAD), ("busy", BUSY),
             ("idle", IDLE), ("commit", COMMIT)]
    if any(actor_kind(a) != "model" for a in actors):
        items[3:3] = [("tokenize (CPU)", TOKENIZE), ("postprocess (CPU)", POSTPROCESS)]
    phases_legend = legend([(name, PHASE_COLORS.get(name, "#999")) for name in dict.fromkeys(p[0] for p in phases)])
    return legend(items) + svg(y + 20, content, "timeline of the run") + phases_legend + more


def rows_over_time(report: dict) -> str:
    """Rows annotated (written) and committed over time, then one lane per input file."""
    run = report.get("run") or {}
    written, commits = run.get("written", []), sorted(run.get("commits", []))
    total_rows = run.get("rows_total") or report["rows_this_run"] or 1
    files = run.get("files", {})
    if not written and not commits:
        return "<p class='note'>nothing was annotated this run.</p>"
    end = max([report.get("seconds", 0)] + [t for t, _ in written] + [t for t, *_ in commits]) or 1
    x0, x1, top, bottom = 60, WIDTH - 20, 10, 190
    def x(t: float) -> float:
        return x0 + (x1 - x0) * t / end

    def y(rows: float) -> float:
        return bottom - (bottom - top) * rows / total_rows

    def steps(points: list[tuple[float, float]]) -> str:
        path, last = [f"{x(0):.1f},{y(0):.1f}"], 0.0
        for t, rows in points:
            path += [f"{x(t):.1f},{y(last):.1f}", f"{x(t):.1f},{y(rows):.1f}"]
            last = rows
        path.append(f"{x(end):.1f},{y(last):.1f}")
        return " ".join(path)

    committed, running = [], 0
    for t, _, rows in commits:
        running += rows
        committed.append((t, running))
    parts = [time_axis(x0, x1, bottom, end, top)]
    for tick in ticks(total_rows, 4):
        parts.append(f"<line class='grid' x1='{x0}' x2='{x1}' y1='{y(tick):.1f}' y2='{y(tick):.1f}'/>"
                     f"<text class='small' x='{x0 - 6}' y='{y(tick) + 4:.1f}' text-anchor='end'>{tick:,.0f}</text>")
    parts.append(f"<polyline fill='none' stroke='{PALETTE[0]}' stroke-width='2' points='{steps(written)}'/>"
                 f"<polyline fill='none' stroke='{PALETTE[2]}' stroke-width='2.5' points='{steps(committed)}'/>")
    overall = legend([("rows annotated (written to staging)", PALETTE[0]), ("rows committed", PALETTE[2])])
    overall += svg(bottom + 22, "".join(parts), "rows annotated and committed over time")

    commit_at = {name: t for t, name, _ in commits}
    lanes = sorted(files.values(), key=lambda f: commit_at.get(f["name"], float("inf")))
    shown, lane = lanes[:MAX_FILE_LANES], 18
    fx0 = 250
    def fx(t: float) -> float:
        return fx0 + (x1 - fx0) * t / end

    parts = []
    for index, file in enumerate(shown):
        top_y = index * lane
        points = [f"{fx(0):.1f},{top_y + lane - 2}"]
        last = 0
        for t, rows in file.get("written", []):
            share = rows / (file["rows"] or 1)
            points += [f"{fx(t):.1f},{top_y + lane - 2 - (lane - 4) * last:.1f}",
                       f"{fx(t):.1f},{top_y + lane - 2 - (lane - 4) * share:.1f}"]
            last = share
        stop = commit_at.get(file["name"], end)
        points += [f"{fx(stop):.1f},{top_y + lane - 2 - (lane - 4) * last:.1f}", f"{fx(stop):.1f},{top_y + lane - 2}"]
        parts.append(f"<g><title>{esc(file['name'])}: {file['rows']:,} rows"
                     + (f", committed at {commit_at[file['name']]:.2f} s" if file["name"] in commit_at else
                        ", not committed") + "</title>"
                     f"<text x='{fx0 - 8}' y='{top_y + 13}' text-anchor='end'>{esc(cut_path(file['name'], 36))}</text>"
                     f"<rect x='{fx0}' y='{top_y + 1}' width='{x1 - fx0}' height='{lane - 2}' fill='#f3f4f6'/>"
                     f"<polygon fill='{PALETTE[0]}' fill-opacity='.45' points='{' '.join(points)}'/>"
                     + (f"<path d='M{fx(stop):.1f},{top_y + 1} l5,8 l-5,8 l-5,-8 z' fill='{COMMIT}'/>"
                        if file["name"] in commit_at else "") + "</g>")
    height = lane * len(shown) + 4
    parts.append(time_axis(fx0, x1, height, end, 0))
    per_file = ("<h3>Per input file: share of its rows written over time, ◆ its commit</h3>"
                + svg(height + 20, "".join(parts), "rows per input file over time"))
    if len(lanes) > MAX_FILE_LANES:
        per_file += f"<p class='note'>and {len(lanes) - MAX_FILE_LANES} more file(s), not drawn</p>"
    return overall + per_file


def throughput(report: dict) -> str:
    tasks = report.get("throughput", {})
    if not tasks:
        return "<p class='note'>no task ran this run.</p>"
    rates = {task: stats["rows_per_s"] or 0 for task, stats in tasks.items()}
    rows = "".join(f"<tr><td>{esc(task)}</td><td class='n'>{number(s['rows'])}</td><td class='n'>"
                   f"{number(s['reused'])}</td><td class='n'>{number(s['seconds_saved'])}</td><td class='n'>"
                   f"{number(s['rows_per_s'])}</td><td class='n'>{number(s['tokens_per_s'])}</td><td class='n'>"
                   f"{number(s['actor_seconds'])}</td></tr>" for task, s in tasks.items())
    return (bars(rates, PALETTE[0], " rows/s") + "<table><tr><th>task</th><th class='n'>rows computed</th>"
            "<th class='n'>rows reused</th><th class='n'>actor seconds saved (estimated)</th>"
            "<th class='n'>rows/s per actor</th><th class='n'>tokens/s per actor</th><th class='n'>actor seconds"
            f"</th></tr>{rows}</table>")


def where_time_went(report: dict) -> str:
    run = report.get("run") or {}
    driver = [(name, end - start, PHASE_COLORS.get(name, "#999")) for name, start, end in run.get("phases", [])]
    if not driver:
        driver = [(name, seconds, PHASE_COLORS.get(name, "#999")) for name, seconds in report.get("time_s", {}).items()
                  if name in PHASE_COLORS]
    rows = [("driver (wall time)", driver)]
    for actor in report.get("actors", [])[:MAX_LANES]:
        phases = actor.get("phases_s", {})
        idle = max(0.0, actor["span_s"] - actor["busy_s"])
        parts = [("model load", actor.get("load_s", 0.0), LOAD)]
        colors = {"tokenize": TOKENIZE, "forward": BUSY, "postprocess": POSTPROCESS}
        parts += [(phase, seconds, colors.get(phase, "#999")) for phase, seconds in phases.items()]
        parts.append(("idle between first and last call", idle, IDLE))
        rows.append((f"{actor['pool']} {actor['actor'][:8]}", parts))
    items = [(name, color) for name, color in PHASE_COLORS.items() if any(p[0] == name for p in driver)]
    items += [("model load", LOAD), ("tokenize", TOKENIZE), ("forward", BUSY), ("postprocess", POSTPROCESS),
              ("idle", IDLE)]
    padding = [f"{a['pool']} {a['actor'][:8]}: {a['padding_share']:.0%} padding" for a in report.get("actors", [])
               if a.get("padding_share") is not None][:6]
    note = f"<p class='note'>tokens run through the model that were padding: {esc('; '.join(padding))}</p>" \
        if padding else ""
    return legend(items) + stacked(rows) + note


def errors_table(report: dict) -> str:
    reasons = report.get("errors_by_reason", [])
    if not reasons:
        return "<p class='note' id='errors'>no row errors.</p>"
    ids = {(e["task"], e["message"]): e["row_ids"] for e in report.get("error_row_ids", [])}
    rows = [[esc(e["task"]), esc(e["message"]), number(e["rows"]), names(ids.get((e["task"], e["message"]), []))]
            for e in reasons]
    return table(["task", "reason", "rows", "e.g. row ids"], rows, {2}, "errors", ("14rem", "auto", "6rem", "18rem"))


def changes_table(report: dict) -> str:
    changes = report.get("input_changes", {})
    rows = []
    for kind in ("new", "changed", "vanished"):
        if changes.get(kind):
            what = f"{kind}" + (f" (their rows {changes.get('vanished_rows')})" if kind == "vanished" else "")
            rows.append([esc(what), number(len(changes[kind])), names(changes[kind])])
    if changes.get("renamed"):
        rows.append(["renamed", number(len(changes["renamed"])),
                     names([f"{old} → {new}" for new, old in changes["renamed"].items()])])
    for key, verb in (("columns_computed", "computed"), ("columns_dropped", "dropped")):
        for column, files in changes.get(key, {}).items():
            rows.append([f"column {esc(column)} {verb}", number(len(files)), names(files)])
    if changes.get("removed_tasks_kept"):
        rows.append(["columns kept of tasks no longer configured", number(len(changes["removed_tasks_kept"])),
                     names(changes["removed_tasks_kept"])])
    for what in changes.get("repaired", []):
        rows.append(["repaired", "1", esc(what)])
    for path, problem in report.get("quarantined_files", {}).items():
        rows.append(["quarantined", "1", f"{esc(path)}: {esc(problem)}"])
    for path, why in report.get("skipped_inputs", {}).items():
        rows.append(["not read below input.path", "1", f"{esc(path)} {esc(why)}"])
    for task, reason in report.get("skipped_tasks", {}).items():
        rows.append([f"skipped task {esc(task)}", "1", esc(reason)])
    if not rows:
        return "<p class='note' id='changes'>no changes: every input file as committed before.</p>"
    return table(["change", "files", "which"], rows, {1}, "changes", ("17rem", "5rem", "auto"))


def compute_table(report: dict) -> str:
    pools = report.get("compute", [])
    if not pools:
        return "<p class='note' id='compute'>no pool ran this run.</p>"
    rows = []
    for pool in pools:
        engine = pool.get("engine", "transformers")
        threads = (f"ctranslate2, {pool.get('inter_threads')} worker(s)" if engine == "ctranslate2"
                   else f"{pool.get('torch_threads')} torch thread(s)" if engine == "transformers"
                   else f"{engine}, {pool.get('torch_threads')} thread(s)")
        threads += (f"; transformers: {pool['engine_note']}" if pool.get("engine_note") else "") + (
            f"; qualification timed {pool['engine_speed']}" if pool.get("engine_speed") else "")
        rows.append([esc("+".join(pool.get("tasks", []))), f"{pool.get('min_actors')}-{pool.get('max_actors')}",
                     f"{pool.get('num_cpus_per_actor', 0):g} CPU, {pool.get('num_gpus_per_actor', 0):g} GPU",
                     esc(threads), esc(f"{pool.get('device')} {pool.get('dtype')}"), number(pool.get("batch_size")),
                     number(pool.get("token_budget")), esc(pool.get("stages", "-")),
                     node_paths(report, "+".join(pool.get("tasks", [])))])
    return table(["pool", "actors", "per actor", "engine", "device", "batch", "token budget", "stages",
                  "each node's CPU: path taken"], rows, {5, 6}, "compute",
                 ("auto", "5rem", "9rem", "10rem", "8rem", "5rem", "7rem", "5rem", "auto"))


def node_paths(report: dict, pool: str) -> str:
    """The CPUs the pool's actors ran on and the kernel path each took there (node_cpu, workers.annotator), one line
    per distinct pair with how many actors took it."""
    paths = Counter((actor.get("cpu"), actor.get("kernels")) for actor in report.get("actors", [])
                    if actor.get("pool") == pool and actor.get("kernels"))
    return "<br>".join(f"{esc(cpu)}: {esc(kernels)}" + (f" ({count} actors)" if count > 1 else "")
                       for (cpu, kernels), count in sorted(paths.items())) or "-"


def distributions(report: dict) -> str:
    out = []
    for task, counts in report.get("distributions", {}).items():
        items = list(counts.items())
        shown = dict(items[:MAX_BARS])
        if len(items) > MAX_BARS:
            shown[f"other ({len(items) - MAX_BARS} labels)"] = sum(c for _, c in items[MAX_BARS:])
        kind = "entity types" if report.get("tasks", {}).get(task, {}).get("task") in ("ner", "token-classification") \
            else "labels"
        out.append(f"<div class='dist'><h3>{esc(task)}: {kind}</h3>"
                   f"{bars(shown, PALETTE[1], label_width=170, width=DIST_WIDTH)}</div>")
    for task, entry in report.get("value_distributions", {}).items():
        out.append(f"<div class='dist'><h3>{esc(task)}: {esc(entry['measure'])}</h3>"
                   f"{histogram(entry['bins'], entry['measure'], DIST_WIDTH)}</div>")
    if not out:
        return "<p class='note'>no task output this run.</p>"
    return "<div class='grid2'>" + "".join(out) + "</div>"


def raw(report: dict) -> str:
    import json

    tasks = json.dumps(report.get("tasks", {}), indent=1)
    return ("<details id='raw'><summary>Ray Data's statistics of this run</summary>"
            f"<pre>{esc(report.get('stage_stats', ''))}</pre></details>"
            "<details><summary>tasks, models and fingerprints</summary>"
            f"<pre>{esc(tasks)}</pre></details>"
            "<details><summary>versions and the config fingerprint</summary>"
            f"<pre>{esc(json.dumps(report.get('versions', {}), indent=1))}\n"
            f"config {esc(report.get('config_fingerprint'))}</pre></details>")


def run_page(report: dict, name: str = "run") -> str:
    """The run's page (module docstring)."""
    ran = bool(report.get("run", {}).get("phases"))
    body = [(f"<h1>Run report</h1><div class='sub'>{esc(report['output'])} · finished "
            f"{esc(report.get('finished_at', ''))} · {esc(name)} · <a href='index.html'>all runs of this output</a>"
            "</div>"), verdict_html(report), cards(report)]
    if report["rows_this_run"] or ran:
        body.append(f"<section id='timeline'><h2>Timeline</h2>{timeline(report)}</section>")
        body.append(f"<section id='rows'><h2>Rows over time</h2>{rows_over_time(report)}</section>")
        body.append(f"<section id='throughput'><h2>Throughput per task</h2>{throughput(report)}</section>")
        body.append(f"<section id='time'><h2>Where the time went</h2>{where_time_went(report)}</section>")
    body.append(f"<section><h2>Errors by reason</h2>{errors_table(report)}</section>")
    body.append(f"<section><h2>Input changes</h2>{changes_table(report)}</section>")
    body.append(f"<section><h2>Pools</h2>{compute_table(report)}</section>")
    body.append(f"<section id='distributions'><h2>Output per task</h2>{distributions(report)}</section>")
    body.append(f"<section><h2>Details</h2>{raw(report)}</section>")
    return page(f"nlp-tasks run report: {report['output']}", "".join(body))
