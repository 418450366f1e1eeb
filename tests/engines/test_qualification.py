"""Qualification: a pool runs on an engine other than transformers only once the engine has loaded, run with the
task's settings and agreed with transformers on the run's own rows; `auto` falls back and says why, a named engine
is refused in one line before anything is committed, and a node pays for a verdict once."""

from __future__ import annotations

import json
from dataclasses import asdict

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiny_models
from helpers import last_report, write_config

from jobs.annotate import main

DOCS = [" ".join(tiny_models._corpus()[3 * i: 3 * i + 3]) for i in range(30)]
"""Documents of three sentences each: longer than the tiny BART's summaries."""
DISAGREEING = {"task": "summarization", "max_new_tokens": 24, "min_length": 20, "num_beams": 4,
               "no_repeat_ngram_size": 3, "early_stopping": True}
"""Beams 4 with no_repeat_ngram_size 3, summaries held long: CTranslate2 renormalizes the scores of the tokens it
forbids, transformers does not, and most rows end otherwise (measured: 17 of 24 differ, where a quarter may)."""


@pytest.fixture
def node_cache(tmp_path, monkeypatch):
    """A node cache of its own for the driver, where the verdicts are kept (conversions stay in the workers')."""
    monkeypatch.setenv("NLP_TASKS_MODEL_CACHE", str(tmp_path / "node-cache"))
    return tmp_path / "node-cache"


def job(tmp_path, tasks: dict, name: str, files: tuple[str, ...] = ("a",)) -> str:
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    for index, file in enumerate(files):
        rows = DOCS[index * 15:(index + 1) * 15]
        pq.write_table(pa.table({"id": [f"{file}{i}" for i in range(len(rows))], "text": rows}),
                       folder / f"{file}.parquet")
    return write_config(tmp_path, folder, tasks, name=f"{name}.yaml", output={"path": tmp_path / name},
                        compute={"num_cpus_per_actor": 0.5, "batch_size": None})


@pytest.mark.slow
def test_a_pool_that_agrees_runs_on_the_engine_and_a_later_run_does_not_qualify_it_again(ray_local, models,
                                                                                        node_cache, tmp_path, capsys):
    tasks = {"summary": {"task": "summarization", "model": str(models["seq2seq"]), "max_new_tokens": 12}}
    assert main(["--config", job(tmp_path, tasks, "out")]) == 0
    logs = capsys.readouterr().err
    assert "task 'summary' qualified on ctranslate2" in logs and "agrees with transformers on 15" in logs
    first = last_report(tmp_path / "out")
    assert [pool["engine"] for pool in first["compute"]] == ["ctranslate2"]
    assert first["time_s"]["qualify_engines"] > 0
    [verdict] = [json.loads(path.read_text()) for path in (node_cache / "qualification").glob("*.json")]
    assert verdict["passed"] and verdict["rows"] == 15

    assert main(["--config", job(tmp_path, tasks, "out", files=("a", "b"))]) == 0  # a new file, a nightly run
    assert "qualif" not in capsys.readouterr().err
    later = last_report(tmp_path / "out")
    assert [pool["engine"] for pool in later["compute"]] == ["ctranslate2"]
    assert "qualify_engines" not in later["time_s"]


@pytest.mark.slow
def test_a_named_engine_that_disagrees_is_refused_in_one_line_and_auto_falls_back_saying_why(
        ray_local, models, node_cache, tmp_path, capsys):
    tasks = {"summary": {**DISAGREEING, "model": str(models["seq2seq"]), "engine": "ctranslate2"}}
    assert main(["--config", job(tmp_path, tasks, "refused")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error", "Traceback"))]
    assert len(errors) == 1 and errors[0].startswith(
        "error: tasks.summary: engine ctranslate2 cannot run it: it did not qualify on the input's rows: beam "
        "search differs from transformers' on "), errors
    assert not (tmp_path / "refused").exists()  # refused before the output was opened

    tasks["summary"]["engine"] = "auto"
    assert main(["--config", job(tmp_path, tasks, "out")]) == 0  # the verdict kept: nothing qualified again
    captured = capsys.readouterr()
    assert "task 'summary' runs on transformers: ctranslate2 cannot run it: it did not qualify" in captured.err
    report = last_report(tmp_path / "out")
    assert "qualify_engines" not in report["time_s"]
    [pool] = report["compute"]
    assert pool["engine"] == "transformers" and "beam search differs from transformers'" in pool["engine_note"]
    summary = [line for line in captured.out.splitlines() if line.startswith("compute: pool summary")]
    assert len(summary) == 1 and "(transformers: ctranslate2 cannot run it: it did not qualify" in summary[0]
    page = next((tmp_path / "out" / "__reports").glob("run-*.html")).read_text()
    assert "transformers: ctranslate2 cannot run it: it did not qualify on the input&#x27;s rows" in page


@pytest.mark.slow
def test_an_int8_encoder_pool_is_qualified_against_transformers_before_it_runs_on_openvino(ray_local, models,
                                                                                           node_cache, tmp_path,
                                                                                           capsys):
    tasks = {"sentiment": {"task": "text-classification", "model": str(models["text-classification"])}}
    config = write_config(tmp_path, tmp_path / "in", tasks, output={"path": tmp_path / "out"},
                          compute={"num_cpus_per_actor": 0.5, "batch_size": None, "dtype": "int8"})
    job(tmp_path, {}, "unused")  # writes the input
    assert main(["--config", config]) == 0
    captured = capsys.readouterr()
    assert "task 'sentiment' qualified on openvino" in captured.err
    [pool] = last_report(tmp_path / "out")["compute"]
    assert pool["engine"] == "openvino"
    [verdict] = [json.loads(path.read_text()) for path in (node_cache / "qualification").glob("*.json")]
    speed = verdict["speed"]  # timed on the rows it was compared on, against transformers float32
    assert speed["rows"] == verdict["rows"] and speed["engine"] > 0 and speed["transformers"] > 0
    faster = speed["engine"] > speed["transformers"]
    said = (f"openvino int8 {speed['engine']:.1f} rows/s against transformers float32 {speed['transformers']:.1f} "
            f"({speed['engine'] / speed['transformers']:.2f}x) on {speed['cpu']} with {speed['threads']} thread(s): "
            f"{'faster' if faster else 'slower'} than float32 on this CPU")
    assert pool["engine_speed"] == said
    [line] = [line for line in captured.out.splitlines() if line.startswith("compute: pool sentiment")]
    assert f"(qualification timed {said})" in line
    assert ("dtype float32 on transformers (dtype auto) is faster here" in captured.err) == (not faster)
    page = next((tmp_path / "out" / "__reports").glob("run-*.html")).read_text()
    assert "openvino, 1 thread(s); qualification timed openvino int8" in page


@pytest.mark.slow
def test_auto_in_float32_qualifies_a_cpu_engine_on_a_large_input_and_takes_it_only_where_timed_faster(
        ray_local, models, node_cache, tmp_path, capsys):
    from nlp_tasks.engines.choice import QUALIFY_FLOAT32_ROWS

    tasks = {"sentiment": {"task": "text-classification", "model": str(models["text-classification"])}}
    small = job(tmp_path, tasks, "small")  # 15 rows: not worth a qualification
    assert main(["--config", small]) == 0
    assert "task 'sentiment' qualified on" not in capsys.readouterr().err
    assert "qualify_engines" not in last_report(tmp_path / "small")["time_s"]
    [pool] = last_report(tmp_path / "small")["compute"]
    assert pool["engine"] == "transformers" and pool["engine_note"] is None  # the default: no engine tried here

    folder = tmp_path / "large"
    folder.mkdir()
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(QUALIFY_FLOAT32_ROWS)],
                             "text": [f"{DOCS[i % len(DOCS)]} {i}" for i in range(QUALIFY_FLOAT32_ROWS)]}),
                   folder / "a.parquet")
    large = write_config(tmp_path, folder, tasks, name="large.yaml", output={"path": tmp_path / "large-out"},
                         compute={"num_cpus_per_actor": 0.5, "batch_size": None})
    assert main(["--config", large]) == 0
    logs = capsys.readouterr().err
    assert "task 'sentiment' qualified on openvino" in logs
    verdicts = [json.loads(path.read_text()) for path in (node_cache / "qualification").glob("*.json")]
    faster = [verdict["speed"]["engine"] > verdict["speed"]["transformers"] for verdict in verdicts]
    [pool] = last_report(tmp_path / "large-out")["compute"]
    if pool["engine"] == "transformers":  # every engine timed slower: transformers, saying so
        assert not any(faster) and "not timed faster than transformers" in pool["engine_note"]
    else:  # the first engine timed faster is taken, and the next one not qualified
        assert sum(faster) == 1 and (len(verdicts) == 1) == (pool["engine"] == "openvino")
        assert pool["engine_speed"].startswith(pool["engine"]) and "faster than float32" in pool["engine_speed"]


def test_auto_in_float32_takes_a_cpu_engine_only_with_a_verdict_of_this_node_timing_it_faster(models, node_cache):
    from nlp_tasks.config import TaskSpec
    from nlp_tasks.engines.choice import choose_engine
    from nlp_tasks.engines.qualification import Speed, Verdict, record

    spec = TaskSpec.model_validate({"task": "text-classification", "model": str(models["text-classification"])})
    assert choose_engine("sentiment", spec, "auto", "cpu") == ("transformers", None)  # none tried on this node

    def verdict(engine: str, rate: float, passed: bool = True) -> None:
        record(spec, engine, "float32", "cpu", Verdict(passed, "agrees" if passed else "differs", 24, 3.0,
                                                       asdict(Speed("some CPU", 2, 24, rate, 10.0))))

    verdict("openvino", 9.0)
    engine, why = choose_engine("sentiment", spec, "auto", "cpu")
    assert engine == "transformers" and "openvino: not timed faster than transformers float32: openvino float32 " \
        "9.0 rows/s against transformers float32 10.0 (0.90x) on some CPU with 2 thread(s)" in why
    verdict("onnxruntime", 12.0, passed=False)  # faster, but not equal: never taken
    engine, why = choose_engine("sentiment", spec, "auto", "cpu")
    assert engine == "transformers" and "onnxruntime: it did not qualify on the input's rows: differs" in why
    verdict("onnxruntime", 12.0)
    assert choose_engine("sentiment", spec, "auto", "cpu") == ("onnxruntime", None)
    verdict("openvino", 11.0)  # the first engine timed faster is taken
    assert choose_engine("sentiment", spec, "auto", "cpu") == ("openvino", None)
    assert choose_engine("sentiment", spec, "float32", "cuda")[0] == "transformers"
    named = spec.model_copy(update={"engine": "transformers"})
    assert choose_engine("sentiment", named, "auto", "cpu") == ("transformers", None)


def test_int8_values_agree_within_the_documented_tolerance_and_float32_within_1e_4():
    from nlp_tasks.engines.qualification import judge_values

    row = {"label": "positive", "score": 0.9}
    assert judge_values([(row, {**row, "score": 0.90005})] * 10, int8=False) is None
    assert "numbers differ" in judge_values([(row, {**row, "score": 0.9002})], int8=False)
    embedding = [0.1, 0.2, 0.3]
    assert judge_values([(embedding, [0.1, 0.2, 0.31])] * 10, int8=True) is None  # cosine 0.9997
    assert "cosine below 0.99" in judge_values([(embedding, [0.3, 0.2, 0.1])], int8=True)
    flipped = [(row, row)] * 9 + [(row, {**row, "label": "negative"})]
    assert judge_values(flipped, int8=True) is None and "labels differ" in judge_values(flipped, int8=False)
    assert "labels differ" in judge_values(flipped[-2:], int8=True)
