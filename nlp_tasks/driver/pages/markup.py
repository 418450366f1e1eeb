"""The pages' building blocks: CSS, escaping, numbers, and inline-SVG charts (bars, histograms, time axes).

Every chart scales to the page's width; every string from a user or a file goes through `esc`.
"""

from __future__ import annotations

import html
import math
from typing import Any

PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d",
           "#bab0ac")
PHASE_COLORS = {"inspect_input": "#bab0ac", "check_models": "#9d755d", "open_output": "#72b7b2",
                "start_ray": "#eeca3b", "fit_heads": "#b279a2", "annotate": "#4c78a8", "finish_commits": "#54a24b",
                "stop_ray": "#e45756", "close_output": "#ff9da6"}
LOAD, BUSY, IDLE, TOKENIZE, POSTPROCESS, COMMIT = "#f58518", "#4c78a8", "#e8e8e8", "#54a24b", "#b279a2", "#e45756"
MAX_LANES = 24
MAX_FILE_LANES = 16
MAX_BARS = 20
WIDTH = 1000
DIST_WIDTH = 520
CSS = """
:root{--ink:#1d2330;--muted:#5b6473;--line:#d9dde3;--ok:#2f7d32;--look:#b3261e;--bg:#f6f7f9}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);background:var(--bg);
margin:0}
main{max-width:72rem;margin:0 auto;padding:1.2rem 1.5rem 3rem}
h1{font-size:1.45rem;margin:.2rem 0 .1rem} h2{font-size:1.1rem;margin:1.6rem 0 .5rem}
h3{font-size:.95rem;margin:1rem 0 .3rem;color:var(--muted)}
.sub{color:var(--muted);overflow-wrap:anywhere}
section>h2:first-child{margin-top:.1rem}
section,.verdict{background:#fff;border:1px solid var(--line);border-radius:8px;padding:.8rem 1rem;margin:.9rem 0}
.verdict{border-width:2px;font-size:1.05rem}
.verdict.ok{border-color:var(--ok)} .verdict.look{border-color:var(--look)}
.verdict strong{font-size:1.25rem} .verdict.ok strong{color:var(--ok)} .verdict.look strong{color:var(--look)}
.verdict ul{margin:.3rem 0 0;padding-left:1.2rem}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(9.5rem,1fr));gap:.6rem}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:.5rem .7rem}
.card b{display:block;font-size:1.2rem} .card span{color:var(--muted);font-size:.85rem}
svg{width:100%;height:auto;display:block} svg text{font-size:12px;fill:var(--ink)}
svg .axis{stroke:#999;stroke-width:1} svg .grid{stroke:#eee;stroke-width:1} svg .small{font-size:10.5px;fill:#5b6473}
table{width:100%;border-collapse:collapse;table-layout:fixed;font-size:.9rem}
th,td{text-align:left;padding:.25rem .4rem;border-bottom:1px solid var(--line);vertical-align:top;
overflow-wrap:anywhere;word-break:break-word}
th{color:var(--muted);font-weight:600} td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.legend{display:flex;flex-wrap:wrap;gap:.3rem 1rem;font-size:.85rem;color:var(--muted);margin:.2rem 0 .4rem}
.legend i{display:inline-block;width:.8rem;height:.8rem;border-radius:2px;margin-right:.3rem;vertical-align:-1px}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(24rem,1fr));gap:.2rem 1.5rem}
details{margin:.4rem 0} summary{cursor:pointer;color:var(--muted)}
pre{white-space:pre-wrap;overflow-wrap:anywhere;font-size:.8rem;background:var(--bg);padding:.6rem;border-radius:6px}
.note{color:var(--muted);font-size:.85rem}
a{color:#2a5db0}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def cut(text: str, length: int) -> str:
    text = str(text)
    return text if len(text) <= length else text[:length - 1] + "…"


def cut_path(path: str, length: int) -> str:
    """A file name cut from the left: its last part says most."""
    path = str(path)
    return path if len(path) <= length else "…" + path[-(length - 1):]


def number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>{body}</main></body></html>")


def legend(items: list[tuple[str, str]]) -> str:
    return "<div class='legend'>" + "".join(f"<span><i style='background:{color}'></i>{esc(name)}</span>"
                                            for name, color in items) + "</div>"


def svg(height: float, content: str, label: str, width: int = WIDTH) -> str:
    return (f"<svg viewBox='0 0 {width} {height:.0f}' role='img' aria-label='{esc(label)}' "
            f"preserveAspectRatio='xMinYMin meet'>{content}</svg>")


def ticks(limit: float, count: int = 6) -> list[float]:
    """Round tick values from 0 to about `limit`."""
    if limit <= 0:
        return [0.0]
    raw = limit / count
    step = 10 ** math.floor(math.log10(raw))
    step = next(s * step for s in (1, 2, 2.5, 5, 10) if s * step >= raw)
    return [i * step for i in range(int(limit / step + 1e-9) + 1)]


def time_axis(x0: float, x1: float, y: float, seconds: float, top: float) -> str:
    parts = []
    for tick in ticks(seconds):
        x = x0 + (x1 - x0) * tick / (seconds or 1)
        parts.append(f"<line class='grid' x1='{x:.1f}' x2='{x:.1f}' y1='{top}' y2='{y}'/>"
                     f"<text class='small' x='{x:.1f}' y='{y + 13}' text-anchor='middle'>{tick:g} s</text>")
    return "".join(parts) + f"<line class='axis' x1='{x0}' x2='{x1}' y1='{y}' y2='{y}'/>"


def bars(counts: dict[str, float], color: str = PALETTE[0], unit: str = "", label_width: int = 260,
         width: int = WIDTH) -> str:
    """Horizontal bars, largest first as given, label on the left (cut, whole in a tooltip)."""
    if not counts:
        return "<p class='note'>none</p>"
    peak = max(counts.values()) or 1
    rows, bar_width = [], width - label_width - 90
    for index, (name, count) in enumerate(counts.items()):
        y = index * 22
        length = max(1.0, bar_width * count / peak)
        rows.append(f"<g><title>{esc(name)}: {esc(number(count))}{esc(unit)}</title>"
                    f"<text x='{label_width - 8}' y='{y + 15}' text-anchor='end'>"
                    f"{esc(cut(name, label_width // 7))}</text>"
                    f"<rect x='{label_width}' y='{y + 4}' width='{length:.1f}' height='15' rx='2' fill='{color}'/>"
                    f"<text x='{label_width + length + 6:.1f}' y='{y + 15}'>{esc(number(count))}{esc(unit)}"
                    "</text></g>")
    return svg(22 * len(counts) + 6, "".join(rows), "bar chart", width)


def histogram(bins: dict[str, int], measure: str, chart_width: int = WIDTH) -> str:
    """A histogram of binned values (write.value_bins), merged into at most MAX_BARS equal bins."""
    values = sorted((float(low), count) for low, count in bins.items())
    if not values:
        return "<p class='note'>none</p>"
    low, high = values[0][0], values[-1][0]
    rows = sum(c for _, c in values)
    if high - low <= 0.02 * max(abs(high), 1e-9):
        return (f"<p class='one-value'>{rows:,} rows, every {esc(measure)} between {esc(f'{low:.3g}')} and "
                f"{esc(f'{high * 1.01:.3g}')}</p>")
    width = (high - low) / MAX_BARS
    merged = [0] * (MAX_BARS + 1)
    for value, count in values:
        merged[min(MAX_BARS, int((value - low) / width))] += count
    peak, plot = max(merged) or 1, chart_width - 80
    step = plot / len(merged)
    parts = []
    for index, count in enumerate(merged):
        height = 150 * count / peak
        start = low + index * width
        parts.append(f"<g><title>{esc(f'{start:.3g}')} to {esc(f'{start + width:.3g}')}: {count} rows</title>"
                     f"<rect x='{60 + index * step:.1f}' y='{160 - height:.1f}' width='{step - 2:.1f}' "
                     f"height='{height:.1f}' fill='{PALETTE[4]}'/></g>")
    parts.append(f"<line class='axis' x1='60' x2='{60 + plot}' y1='160' y2='160'/>"
                 f"<text class='small' x='60' y='176'>{esc(f'{low:.3g}')}</text>"
                 f"<text class='small' x='{60 + plot}' y='176' text-anchor='end'>{esc(f'{high + width:.3g}')}</text>"
                 f"<text class='small' x='{60 + plot / 2}' y='176' text-anchor='middle'>{esc(measure)}</text>"
                 f"<text class='small' x='54' y='14' text-anchor='end'>{peak:,}</text>")
    return svg(184, "".join(parts), f"histogram of {measure}", chart_width)


def stacked(rows: list[tuple[str, list[tuple[str, float, str]]]], unit: str = " s") -> str:
    """One horizontal stacked bar per row: (label, [(part, value, color)])."""
    peak = max((sum(v for _, v, _ in parts) for _, parts in rows), default=0) or 1
    x0, x1, out = 230, WIDTH - 70, []
    for index, (label, parts) in enumerate(rows):
        y, start = index * 24, 0.0
        out.append(f"<text x='{x0 - 8}' y='{y + 16}' text-anchor='end'>{esc(cut(label, 32))}<title>{esc(label)}"
                   f"</title></text>")
        for name, value, color in parts:
            width = (x1 - x0) * value / peak
            out.append(f"<rect x='{x0 + start:.1f}' y='{y + 4}' width='{max(0.0, width):.1f}' height='16' "
                       f"fill='{color}'><title>{esc(name)}: {value:.2f}{esc(unit)}</title></rect>")
            start += width
        out.append(f"<text class='small' x='{x0 + start + 5:.1f}' y='{y + 16}'>"
                   f"{sum(v for _, v, _ in parts):.1f}{esc(unit)}</text>")
    return svg(24 * len(rows) + 6, "".join(out), "where the time went")


def table(headers: list[str], rows: list[list[Any]], numeric: set[int] = frozenset(), id_: str = "",
          widths: tuple[str, ...] = ()) -> str:
    columns = "<colgroup>" + "".join(f"<col style='width:{w}'>" for w in widths) + "</colgroup>" if widths else ""
    head = "".join(f"<th{' class=n' if i in numeric else ''}>{esc(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td{' class=n' if i in numeric else ''}>{cell}</td>" for i, cell in
                                    enumerate(row)) + "</tr>" for row in rows)
    return f"<table{f' id={id_}' if id_ else ''}>{columns}<tr>{head}</tr>{body}</table>"


def names(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(esc(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
