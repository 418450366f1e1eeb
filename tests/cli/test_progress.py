"""What a person watching a run sees: in a terminal one live display that advances before the end; in a log, plain
progress lines and no bar; in neither, Ray's own INFO or WARNING lines (a verbose flag brings those back)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiny_models
from helpers import REPO, sentiment, write_config

pytestmark = pytest.mark.slow  # whole CLI runs

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
BAR_CHARACTERS = "━█▏▎▍▌▋▊▉░▒▓■"
FILES, ROWS_PER_FILE = 3, 96


@pytest.fixture(scope="module")
def job(tmp_path_factory, models):
    """A config over three small files, written in parts of 16 rows, so that a run commits files one by one."""
    root = tmp_path_factory.mktemp("progress")
    folder = root / "corpus"
    folder.mkdir()
    texts = tiny_models.sample_texts()
    for number in range(FILES):
        rows = [texts[i % len(texts)] for i in range(ROWS_PER_FILE)]
        pq.write_table(pa.table({"id": [f"{number}-{i}" for i in range(ROWS_PER_FILE)], "text": rows}),
                       folder / f"part-{number}.parquet")

    def config(name: str) -> str:
        return write_config(root, folder, sentiment(models), name=f"{name}.yaml",
                            input={"text_column": "text"}, output={"path": root / name, "rows_per_file": 16},
                            compute={"num_cpus_per_actor": 0.5, "min_actors": 1, "max_actors": 1, "token_budget": 512})

    return config


def cli_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    return env


def run_in_terminal(config: str, columns: int = 160) -> str:
    """Run the CLI with a pseudo-terminal as its stdin, stdout and stderr; everything it drew, as text."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "jobs.annotate", "--config", config], cwd=REPO,
                               stdin=slave, stdout=slave, stderr=slave, env={**cli_env(), "TERM": "xterm-256color"},
                               close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 600)
        if not ready:
            process.kill()
            raise AssertionError("the run printed nothing for 10 minutes")
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert process.wait(timeout=60) == 0, ANSI.sub("", b"".join(chunks).decode(errors="replace"))[-3000:]
    return b"".join(chunks).decode(errors="replace")


def test_terminal_shows_one_live_display_that_advances_before_the_end(job):
    raw = run_in_terminal(job("terminal"))
    text = ANSI.sub("\n", raw)
    summary_at = text.index("rows: 288 in, 288 out")
    live = text[:summary_at]
    annotated = [int(n) for n in re.findall(r"annotated (\d+)/288 rows", live)]
    assert annotated, f"no live display before the summary:\n{live[-2000:]}"
    assert len(set(annotated)) >= 3 and annotated == sorted(annotated), annotated  # it advanced, never back
    assert min(annotated) < 288 and max(annotated) == 288
    committed = [int(n) for n in re.findall(r"files (\d)/3 committed", live)]
    assert 0 < max(committed) == 3 and len(set(committed)) >= 2
    assert re.search(r"\d+\.\d rows/s", live) and "pool sentiment: 1/1 actor(s) at work" in live
    assert "\x1b[" in raw  # drawn in place, as a terminal display is
    assert "WARNING" not in text and "Progress bars disabled" not in text and "Execution plan" not in text
    assert "Token authentication" not in text and "Started a local Ray instance" not in text
    assert re.search(r"report of this run: \S+/__reports/run-\S+\.html", text)
    assert re.search(r"all runs of this output: \S+/__reports/index\.html", text)


def test_without_a_terminal_progress_is_plain_lines_without_a_bar(job):
    run = subprocess.run([sys.executable, "-m", "jobs.annotate", "--config", job("log")], cwd=REPO,
                         capture_output=True, text=True, env=cli_env(), stdin=subprocess.DEVNULL, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stderr.splitlines() if "progress" in line]
    assert lines[0].endswith("progress: annotating 288 rows of 3 file(s) on pool(s) sentiment (1 actor(s))")
    annotated = [int(n) for n in re.findall(r": (\d+)/288 rows annotated", "\n".join(lines))]
    assert len(annotated) >= 3 and annotated == sorted(annotated) and annotated[0] < 288, lines
    assert lines[-1].split(": ", 2)[-1].startswith("288/288 rows annotated (100%), 288/288 committed, 3/3 file(s)")
    everything = run.stdout + run.stderr
    assert not any(char in everything for char in BAR_CHARACTERS)
    assert "\x1b[" not in everything and "\r" not in everything
    assert not [line for line in everything.splitlines() if "WARNING" in line], everything
    assert "Progress bars disabled" not in everything and "Execution plan" not in everything


def test_verbose_brings_back_rays_own_lines(job):
    run = subprocess.run([sys.executable, "-m", "jobs.annotate", "--config", job("verbose"), "--verbose"], cwd=REPO,
                         capture_output=True, text=True, env=cli_env(), stdin=subprocess.DEVNULL, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Execution plan of Dataset" in run.stderr or "Started a local Ray instance" in run.stderr, run.stderr
