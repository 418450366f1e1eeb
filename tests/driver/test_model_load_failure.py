"""A model an actor cannot load (a truncated safetensors file, a process killed while it loads) ends the run in one
line naming the task, the model and why, exit 1, with no Ray traceback on the console; what was committed before
stays committed and valid."""

from __future__ import annotations

import os
import shutil

from helpers import cli, last_report, output_table, write_config, write_rows

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


KILLED_WHILE_LOADING = '''"""A package that ships a checkpoint (python:killed_while_loading) whose loading, in a Ray actor, kills the process
that loads it, as the out-of-memory killer does; the driver that checks it gets the path."""

import os
import signal


def get_model_path():
    import ray

    if ray.is_initialized() and ray.get_runtime_context().get_actor_id():
        os.kill(os.getpid(), signal.SIGKILL)
    return os.environ["KILLED_WHILE_LOADING"]
'''


def the_one_line(result) -> str:
    """The run's one error line, after checking that the console holds nothing but the job's own lines: no Ray
    traceback, no line of Ray's (they stay in Ray's log files)."""
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert not any("Traceback" in line for line in lines), result.stdout[-3000:] + result.stderr[-3000:]
    foreign = [line for line in lines if not line.startswith(("INFO nlp_tasks.", "WARNING nlp_tasks.", "error: "))]
    assert not foreign, foreign
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, errors
    return errors[0]


def test_a_corrupt_checkpoint_leaves_one_line_on_the_console(tmp_path, models):
    model = tmp_path / "model"
    shutil.copytree(models["text-classification"], model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    corpus = tmp_path / "corpus"
    write_rows(corpus / "a.parquet", ["a1", "a2"])
    config = write_config(tmp_path, corpus, {"s": {"task": "sentiment-analysis", "model": str(model)}})
    line = the_one_line(cli(config))
    assert line.startswith(f"error: task(s) s could not load model {str(model)!r}: SafetensorError: "), line


def test_an_actor_killed_while_loading_ends_the_run_in_one_line(tmp_path, models):
    """Ray restarts a killed actor without end; the run stops after a few deaths while loading (cli's timeout bounds
    the wait)."""
    package = tmp_path / "package"
    package.mkdir()
    (package / "killed_while_loading.py").write_text(KILLED_WHILE_LOADING)
    corpus = tmp_path / "corpus"
    write_rows(corpus / "a.parquet", ["a1", "a2"])
    config = write_config(tmp_path, corpus, {"s": {"task": "sentiment-analysis", "model": "python:killed_while_loading"}})
    path = os.pathsep.join(filter(None, [str(package), os.environ.get("PYTHONPATH")]))
    result = cli(config, env={"PYTHONPATH": path, "KILLED_WHILE_LOADING": str(models["text-classification"])})
    assert the_one_line(result) == (
        "error: task(s) s could not load model 'python:killed_while_loading': its actor died 3 times while loading it "
        "(its process was killed: out of memory?); what was committed before stays")
