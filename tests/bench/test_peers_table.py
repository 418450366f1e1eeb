"""The peers table of docs/performance.md is written from benchmark results files, between its markers and nowhere else."""

from __future__ import annotations

import json

from benchmarks import peers

MACHINE = {"cpu": "AMD EPYC", "cores": 2, "torch": "2.13.0+cpu", "transformers": "5.24.0", "ray": "2.60.0",
           "daft": "0.7.26"}
PARAMETERS = {"dtype": "float32", "files": 4}


def test_the_table_is_made_from_results_files_and_replaces_only_the_old_one(tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "RESULTS", tmp_path)
    (tmp_path / "small.json").write_text(json.dumps({"machine": MACHINE, "parameters": PARAMETERS, "rows_per_s": {
        "3000": {"job": 25.0, "daft": 20.0}, "1000": {"job": 20.0, "daft": 25.0}}}))
    (tmp_path / "large.json").write_text(json.dumps({"machine": MACHINE, "parameters": PARAMETERS, "rows_per_s": {
        "10000": {"job": 25.0, "daft": 20.0, "ceiling": 26.0, "ceiling-eager": 22.0}}}))
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- peers table, written by `python -m benchmarks.peers --readme old` -->\n"
                      "| stale |\n<!-- end of peers table -->\nafter\n")

    peers.write_readme(["small", "large"], readme)

    text = readme.read_text()
    assert text.startswith("before\n<!-- peers table, written by `python -m benchmarks.peers --readme small large` -->")
    assert text.endswith("<!-- end of peers table -->\nafter\n") and "stale" not in text
    rows = [line for line in text.splitlines() if line.startswith(("| 1", "| 3"))]
    assert rows == [
        "| 1,000 | 50.0 s (20.0 rows/s) | 40.0 s (25.0 rows/s) | 0.80 | - | - | - |",
        "| 3,000 | 120.0 s (25.0 rows/s) | 150.0 s (20.0 rows/s) | 1.25 | - | - | - |",
        "| 10,000 | 400.0 s (25.0 rows/s) | 500.0 s (20.0 rows/s) | 1.25 | 26.0 rows/s | 0.96 | 22.0 rows/s |",
    ]
    assert "Machine: AMD EPYC, 2 cores; torch 2.13.0+cpu" in text
