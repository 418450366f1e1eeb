"""A model an actor cannot load (here: a truncated safetensors file) ends the run in one line naming the task, the
model and why, exit 1; what was committed before stays committed and valid."""

from __future__ import annotations

import shutil

from helpers import last_report, output_table, write_config, write_rows

from jobs.annotate import main


def test_a_corrupt_checkpoint_is_one_line_and_keeps_what_was_committed(ray_local, tmp_path, models, capsys):
    model = tmp_path / "model"
    shutil.copytree(models["text-classification"], model)
    corpus = tmp_path / "corpus"
    write_rows(corpus / "a.parquet", ["a1", "a2"])
    config = write_config(tmp_path, corpus, {"s": {"task": "sentiment-analysis", "model": str(model)}})
    assert main(["--config", config]) == 0
    markers = sorted(path.name for path in (tmp_path / "out" / "__manifest" / "units").iterdir())

    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    write_rows(corpus / "b.parquet", ["b1", "b2"])
    capsys.readouterr()
    assert main(["--config", config]) == 1
    line = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("error: "))
    assert line.startswith(f"error: task(s) s could not load model {str(model)!r}: SafetensorError: "), line
    assert line.endswith("; what was committed before stays"), line
    assert sorted(path.name for path in (tmp_path / "out" / "__manifest" / "units").iterdir()) == markers
    assert sorted(output_table(tmp_path / "out").column("id").to_pylist()) == ["a1", "a2"]

    shutil.copy(models["text-classification"] / "model.safetensors", weights)
    assert main(["--config", config]) == 0
    assert sorted(output_table(tmp_path / "out").column("id").to_pylist()) == ["a1", "a2", "b1", "b2"]
    assert last_report(tmp_path / "out")["input_changes"]["repaired"] == []
