"""The run page and the index of runs, opened in headless Chromium as a person would open them the morning after:
three runs on one output (a clean one; one with row errors, a skipped task, a changed and a new input file; one
with nothing to do), every element there, nothing off a laptop screen, hostile labels and file names inert.

Needs Debian's `chromium` (`.ci/run` installs it); where no browser is installed these tests say so and skip.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiny_models
from helpers import write_config

from jobs.annotate import main

pytestmark = pytest.mark.slow  # whole CLI runs

BROWSER = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
needs_browser = pytest.mark.skipif(BROWSER is None, reason="no headless Chromium installed (Debian: apt-get install "
                                                           "chromium; .ci/run installs it in CI)")
HOSTILE = "<img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">"
"""A label and a file name that would run script if a page put it in unescaped."""
HOSTILE_FILE = f"{HOSTILE}.parquet"
OUTPUT = f"out {HOSTILE}"
"""The output folder's name, shown at the top of every page."""


def write(folder: Path, name: str, ids: list[str], texts: list) -> None:
    pq.write_table(pa.table({"id": ids, "text": pa.array(texts, pa.string())}), folder / name)


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory, models):
    """Three runs on one output; returns the reports folder."""
    root = tmp_path_factory.mktemp("pages")
    folder = root / "corpus"
    folder.mkdir()
    texts = tiny_models.sample_texts()
    write(folder, "clean.parquet", [f"c-{i}" for i in range(24)], [texts[i % 12] for i in range(24)])
    write(folder, "changing.parquet", [f"x-{i}" for i in range(24)], [texts[(i + 3) % 12] for i in range(24)])
    tasks = {
        "sentiment": {"task": "sentiment-analysis", "model": str(models["text-classification"])},
        "topic": {"task": "embedding-classification", "model": str(models["token-classification"]),
                  "candidate_labels": [HOSTILE, "places"]},
        "embedding": {"task": "feature-extraction", "model": str(models["token-classification"])},
    }

    def run(tasks: dict) -> None:
        config = write_config(root, folder, tasks, input={"text_column": "text"},
                              output={"path": root / OUTPUT, "rows_per_file": 16}, skip_unavailable_models=True,
                              compute={"token_budget": 512})
        assert main(["--config", config]) == 0

    run(tasks)
    write(folder, "changing.parquet", [f"x-{i}" for i in range(30)], [texts[(i + 5) % 12] for i in range(30)])
    write(folder, HOSTILE_FILE, [f"h-{i}" for i in range(12)], ["", None, "   "] + texts[:9])
    missing = {"summary": {"task": "summarization", "model": str(root / "no-such-model")}}
    run({**tasks, **missing})
    run({**tasks, **missing})
    return root / OUTPUT / "__reports"


def reports(folder: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("run-*.json"))]


def test_reports_hold_what_the_pages_draw(runs):
    _first, second, third = reports(runs)
    assert second["rows_with_errors"] == 3 and third["rows_this_run"] == 0
    ids = {(e["task"], e["message"]): e["row_ids"] for e in second["error_row_ids"]}
    assert ids[("sentiment", "text is empty or whitespace")] == ["h-0", "h-2"]
    assert set(second["distributions"]["topic"]) <= {HOSTILE, "places"}
    norms = second["value_distributions"]["embedding"]
    assert norms["measure"] == "embedding norm" and sum(norms["bins"].values()) == 30 + 12 - 3
    run = second["run"]
    assert [phase for phase, *_ in run["phases"]][:3] == ["inspect_input", "check_models", "open_output"]
    assert "annotate" in [phase for phase, *_ in run["phases"]]
    committed = sorted(name.rsplit("/", 1)[-1] for _, name, _ in run["commits"])
    assert committed == sorted(["changing.parquet", HOSTILE_FILE])
    assert run["written"][-1][1] == run["rows_total"] == 42
    assert all(actor["busy_spans"] for actor in second["actors"])
    assert (runs / "index.html").is_file() and not list(runs.glob("*.tmp-*"))


def browse(path: Path, *flags: str, width: int = 1280, height: int = 800) -> subprocess.CompletedProcess:
    profile = path.parent / ".chromium-profile"
    return subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}",
                           f"--window-size={width},{height}", "--virtual-time-budget=3000", *flags,
                           path.as_uri()], capture_output=True, text=True, timeout=180, check=False)


def dom(path: Path) -> str:
    result = browse(path, "--dump-dom")
    assert result.returncode == 0 and "<body" in result.stdout, result.stderr[-2000:]
    return result.stdout


def off_screen(page: Path, tmp_path: Path, width: int) -> tuple[str, list[str]]:
    """The page's scroll width against the window's, and the elements whose right edge is past the window, as a
    copy of the page with a measuring script finds them (the pages themselves hold no script)."""
    probe = tmp_path / f"probe-{page.name}"
    script = ("<script>addEventListener('load',()=>{const w=document.documentElement.clientWidth;"
              "const off=[...document.querySelectorAll('body *')].filter(e=>!(e instanceof SVGElement)||"
              "e.tagName==='svg').filter(e=>e.getBoundingClientRect().right>w+1)"
              ".map(e=>e.tagName+'#'+e.id+'.'+e.className);"
              "document.body.setAttribute('data-off',JSON.stringify(off.slice(0,10)));"
              "document.body.setAttribute('data-widths',document.documentElement.scrollWidth+'/'+w)})</script>")
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    result = browse(probe, "--dump-dom", width=width)
    widths = re.search(r'data-widths="(\d+)/(\d+)"', result.stdout)
    off = re.search(r'data-off="([^"]*)"', result.stdout)
    assert widths and off, result.stdout[-2000:]
    return widths.group(0), json.loads(off.group(1).replace("&quot;", '"'))


def screenshot_is_drawn(page: Path, tmp_path: Path) -> None:
    """A screenshot of the page holds more than a blank screen: many distinct colours, and ink on most rows."""
    shot = tmp_path / f"{page.stem}.png"
    result = browse(page, f"--screenshot={shot}", height=1400)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    _width, height, _depth, _colour = struct.unpack(">IIBB", data[16:26])
    chunks, position = [], 8
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        if kind == b"IDAT":
            chunks.append(data[position + 8:position + 8 + length])
        position += 12 + length
    pixels = zlib.decompress(b"".join(chunks))
    stride = len(pixels) // height
    rows = [pixels[row * stride + 1:(row + 1) * stride] for row in range(height)]  # each row's filter byte dropped
    assert len(set(pixels)) > 40, "the screenshot is (nearly) one colour"
    assert sum(len(set(row)) > 3 for row in rows) > height // 5, "most of the screenshot is empty"


def assert_inert(page_dom: str) -> None:
    assert "<img" not in page_dom and "<script" not in page_dom
    assert not re.search(r"<body[^>]*data-pwned", page_dom)
    assert "&lt;img src=x onerror=" in page_dom  # shown, as text


def assert_self_contained(source: str) -> None:
    assert not re.search(r"<(script|link|iframe|object|embed)\b", source)
    assert not re.search(r"""(src|href)\s*=\s*['"]?\s*(https?:|//)""", source)


@needs_browser
def test_run_page_shows_verdict_timeline_charts_tables_and_distributions(runs, tmp_path):
    pages = sorted(runs.glob("run-*.html"))
    assert len(pages) == 3
    first, second, third = (dom(page) for page in pages)
    assert "id=\"verdict\"" in first and ">OK<" in first

    verdict = re.search(r'<div class="verdict look" id="verdict">(.*?)</div>', second, re.DOTALL).group(1)
    assert "Needs a look" in verdict and "3 row(s) with errors" in verdict and "1 skipped task(s): summary" in verdict
    timeline = re.search(r"<section id=\"timeline\">(.*?)</section>", second, re.DOTALL).group(1)
    assert ">driver<" in timeline and ">commits<" in timeline
    assert timeline.count("committed at") == 2 and "model load" in timeline and "idle between calls" in timeline
    assert re.search(r"<title>annotate: [\d.]+ to [\d.]+ s", timeline) and "<title>start_ray" in timeline
    rows = re.search(r"<section id=\"rows\">(.*?)</section>", second, re.DOTALL).group(1)
    assert rows.count("<svg") == 2 and "rows committed" in rows and "changing.parquet" in rows
    assert "&lt;img src=x onerror=" in rows  # the hostile file's lane, named as text
    throughput = re.search(r"<section id=\"throughput\">(.*?)</section>", second, re.DOTALL).group(1)
    assert all(f"<td>{task}</td>" in throughput for task in ("sentiment", "topic", "embedding"))
    time_went = re.search(r"<section id=\"time\">(.*?)</section>", second, re.DOTALL).group(1)
    assert "driver (wall time)" in time_went and "forward" in time_went
    errors = re.search(r'<table id="errors">(.*?)</table>', second, re.DOTALL).group(1)
    assert "text is empty or whitespace" in errors and "h-0, h-2" in errors
    changes = re.search(r'<table id="changes">(.*?)</table>', second, re.DOTALL).group(1)
    assert re.search(r"<td>changed</td><td class=\"n\">1</td><td>[^<]*/changing.parquet</td>", changes)
    assert "<td>new</td>" in changes and "skipped task summary" in changes
    assert re.search(r'<table id="compute">.*sentiment.*</table>', second, re.DOTALL)
    distributions = re.search(r"<section id=\"distributions\">(.*?)</section>", second, re.DOTALL).group(1)
    assert "sentiment: labels" in distributions and "topic: labels" in distributions
    assert "embedding: embedding norm" in distributions
    assert re.search(r'<details id="raw"><summary>Ray Data\'s statistics', second)
    assert "nothing to do" in third and ">0<" in third
    for page, page_dom in zip(pages, (first, second, third)):
        assert_inert(page_dom)
        assert_self_contained(page.read_text())
        for width in (1280, 1024):
            widths, off = off_screen(page, tmp_path, width)
            assert not off, f"{page.name} at {width} px: {widths}, past the right edge: {off}"
    screenshot_is_drawn(pages[1], tmp_path)


@needs_browser
def test_index_lists_every_run_newest_first_with_trends(runs, tmp_path):
    index = runs / "index.html"
    page_dom = dom(index)
    table = re.search(r'<table id="runs">(.*?)</table>', page_dom, re.DOTALL).group(1)
    links = re.findall(r'<a href="(run-[^"]+\.html)">', table)
    assert links == sorted((p.name for p in runs.glob("run-*.html")), reverse=True) and len(links) == 3
    assert all((runs / link).is_file() for link in links)
    assert len((runs / "runs.jsonl").read_text().splitlines()) == 3  # a summary per run, for the next run's index
    newest, middle, oldest = re.findall(r"<tr><td><a.*?</tr>", table, re.DOTALL)
    assert '<span class="ok">ok</span>' in oldest and "42" in middle and "3 row(s) with errors" in middle
    assert "1 changed" in middle and "1 new" in middle and "1 task(s) skipped" in middle
    assert re.search(r'<td class="n">0</td>', newest)
    trends = re.search(r'<section id="trends">(.*?)</section>', page_dom, re.DOTALL).group(1)
    assert trends.count("<svg") == 4 and "wall time" in trends and "share of rows with errors" in trends
    assert trends.count("<circle") >= 4 * 2  # the runs with rows, in each chart
    assert_inert(page_dom)
    assert_self_contained(index.read_text())
    for width in (1280, 1024):
        widths, off = off_screen(index, tmp_path, width)
        assert not off, f"index at {width} px: {widths}, past the right edge: {off}"
    screenshot_is_drawn(index, tmp_path)


def test_index_on_object_storage_is_one_write_and_reads_each_report_once(runs):
    """Where the output is not a local folder (here fsspec's in-memory store), the index and runs.jsonl are each
    written with one PUT; a report whose summary runs.jsonl holds is never read again, a new one is, and so is one
    whose line is not a summary."""
    import fsspec

    from nlp_tasks.driver.pages.index_page import SUMMARIES, write_index

    memory = fsspec.filesystem("memory")
    folder = "/bucket/out/__reports"
    if memory.exists(folder):
        memory.rm(folder, recursive=True)
    first, second, third = sorted(runs.glob("run-*.json"))
    for path in (first, second):
        memory.pipe_file(f"{folder}/{path.name}", path.read_bytes())
    memory.pipe_file(f"{folder}/run-20000101T000000.000Z.json", b"{torn")
    written = write_index(memory, folder)
    page = memory.cat_file(written).decode()
    assert written == f"{folder}/index.html" and memory.ls(folder, detail=False).count(written) == 1
    assert page.count("<tr><td><a href=") == 2 and "unreadable report" in page
    lines = [json.loads(line) for line in memory.cat_file(f"{folder}/{SUMMARIES}").decode().splitlines()]
    assert [line["report"] for line in lines] == [first.stem, second.stem]  # the torn one: read again next time
    assert lines[0]["summary"]["rows_this_run"] > 0
    memory.pipe_file(f"{folder}/{first.name}", b"{damaged after it was summarized")
    memory.pipe_file(f"{folder}/{third.name}", third.read_bytes())
    page = memory.cat_file(write_index(memory, folder)).decode()
    assert page.count("<tr><td><a href=") == 3 and page.count("unreadable report") == 1
    kept = memory.cat_file(f"{folder}/{SUMMARIES}").decode().splitlines()
    edited = json.dumps({"report": second.stem, "summary": {"ok": "maybe", "look": "x"}})
    memory.pipe_file(f"{folder}/{SUMMARIES}", "\n".join([kept[0], edited, "[" * 100000, kept[2], kept[2]]).encode())
    page = memory.cat_file(write_index(memory, folder)).decode()  # the edited line: its report is read again
    assert page.count("<tr><td><a href=") == 3 and page.count("unreadable report") == 1
    assert memory.cat_file(f"{folder}/{SUMMARIES}").decode().splitlines() == kept
    memory.pipe_file(f"{folder}/run-20000101T000000.000Z.json", second.read_bytes())  # readable after all
    page = memory.cat_file(write_index(memory, folder)).decode()
    assert page.count("<tr><td><a href=") == 4 and "unreadable report" not in page
    lone = json.loads(kept[2])
    lone["summary"]["changes"] = "1 new \ud800"  # a lone surrogate, as a name decoded from bytes carries
    memory.pipe_file(f"{folder}/{SUMMARIES}", "\n".join([kept[0], kept[1], json.dumps(lone)]).encode())
    assert "1 new ?" in memory.cat_file(write_index(memory, folder)).decode()
    assert sorted(p for p in memory.ls(folder, detail=False) if "tmp" in p) == []
