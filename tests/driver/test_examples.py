"""Labels from examples: embedding-classification with a head fitted on labelled texts, once per run."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from helpers import SAMPLE, last_report, write_config

from jobs.annotate import main
from nlp_tasks.config import ComputeConfig, ConfigError, TaskSpec, parse_config
from nlp_tasks.models.heads import fit_head, head_scores
from nlp_tasks.workers.annotator import Annotator
from nlp_tasks.workers.heads import fit_heads


def test_heads_separate_labelled_points():
    rng = np.random.default_rng(0)
    centers = np.eye(4)[:3]
    points = np.concatenate([center + 0.1 * rng.standard_normal((20, 4)) for center in centers])
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    labels = [name for name in ("a", "b", "c") for _ in range(20)]
    for kind in ("centroid", "logistic"):
        head = fit_head(kind, points, labels)
        scores = head_scores(head, points)
        assert [head["labels"][i] for i in scores.argmax(axis=1)] == labels
    assert np.allclose(head_scores(fit_head("logistic", points, labels), points).sum(axis=1), 1, atol=1e-5)


def test_examples_or_candidate_labels_not_both():
    base = {"input": {"path": "in"}, "output": {"path": "out"}}
    task = {"task": "embedding-classification", "model": "m", "candidate_labels": ["x"],
            "examples": {"path": "e.parquet"}}
    with pytest.raises(ConfigError, match="tasks.t: set either candidate_labels .* or examples"):
        parse_config({**base, "tasks": {"t": task}})
    with pytest.raises(ConfigError, match="tasks.t.head: Input should be 'centroid' or 'logistic'"):
        parse_config({**base, "tasks": {"t": {**task, "candidate_labels": None, "head": "knn"}}})


def test_a_head_fitted_on_a_tiny_model_labels_rows_with_its_examples_labels(models, tmp_path):
    spec = TaskSpec.model_validate({"task": "embedding-classification", "model": str(models["token-classification"]),
                                    "examples": {"path": str(tmp_path)}, "head": "logistic"})
    compute = ComputeConfig(device="cpu", token_budget=256)
    texts = ["Paris is in France.", "Berlin is in Germany.", "Rome is in Italy.", "Madrid is in Spain."]
    heads = fit_heads({"topic": spec}, compute, {"topic": (texts, ["fr", "de", "it", "es"])})
    table = Annotator({"topic": spec}, compute, "text", "errors", fitted=heads)(pa.table({"text": texts + [None]}))
    values = table.column("topic").to_pylist()
    assert [value["labels"][0] for value in values[:4]] == ["fr", "de", "it", "es"]  # it fits its own examples
    assert all(sorted(v["labels"]) == ["de", "es", "fr", "it"] and v["scores"] == sorted(v["scores"], reverse=True)
               for v in values[:4])
    assert values[4] is None and table.column("errors").to_pylist()[4][0]["task"] == "topic"


@pytest.mark.slow
def test_minilm_head_from_examples_in_the_job_and_a_changed_example_set_recomputes(ray_local, tmp_path, minilm):
    sample = pq.read_table(SAMPLE)
    pq.write_table(sample.slice(0, 150), tmp_path / "examples.parquet")
    (tmp_path / "corpus").mkdir()
    pq.write_table(sample.slice(150).drop_columns(["category"]), tmp_path / "corpus" / "held-out.parquet")

    def run(examples_rows: int) -> dict:
        pq.write_table(sample.slice(0, examples_rows), tmp_path / "examples.parquet")
        config = write_config(tmp_path, tmp_path / "corpus", {"topic": {
            "task": "embedding-classification", "model": minilm, "max_length": 128,
            "examples": {"path": str(tmp_path / "examples.parquet"), "label_column": "category"}}}, compute=None)
        assert main(["--config", config]) == 0
        return last_report(tmp_path / "out")

    report = run(150)
    output = pads.dataset(tmp_path / "out", format="parquet").to_table().sort_by("id")
    truth = dict(zip(sample.column("id").to_pylist(), sample.column("category").to_pylist()))
    predicted = [value["labels"][0] for value in output.column("topic").to_pylist()]
    accuracy = np.mean([label == truth[row_id] for label, row_id in zip(predicted, output.column("id").to_pylist())])
    assert accuracy >= 0.85, accuracy  # 50 held-out BBC articles, 5 topics, a centroid per topic
    assert report["tasks"]["topic"]["examples"]["rows"] == 150
    assert len(list((tmp_path / "out" / "__manifest" / "heads").glob("topic-*.json"))) == 1

    assert run(150)["files_processed"] == 0  # the same examples: nothing to do
    report = run(120)
    assert report["input_changes"]["columns_computed"] == {"topic": [str(tmp_path / "corpus" / "held-out.parquet")]}
    assert len(list((tmp_path / "out" / "__manifest" / "heads").glob("topic-*.json"))) == 2


def test_bad_examples_fail_in_one_line_naming_file_and_row(tmp_path, minilm, capsys):
    pq.write_table(pa.table({"id": ["a"], "text": ["Some text."]}), tmp_path / "in.parquet")

    def run(examples: pa.Table, **columns) -> str:
        pq.write_table(examples, tmp_path / "examples.parquet")
        config = write_config(tmp_path, tmp_path / "in.parquet", {"topic": {
            "task": "embedding-classification", "model": minilm,
            "examples": {"path": str(tmp_path / "examples.parquet"), **columns}}}, compute=None)
        assert main(["--config", config]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    good = pa.table({"text": ["Goals galore.", "Shares fell."], "label": ["sport", "business"]})
    assert "examples.parquet': no column 'category'" in run(good, label_column="category")
    null_label = pa.table({"text": ["Goals galore.", "Shares fell."], "label": ["sport", None]})
    assert "examples.parquet': row 1: no label" in run(null_label)
    one_label = pa.table({"text": ["Goals galore.", "A late winner."], "label": ["sport", "sport"]})
    assert "a head needs at least two" in run(one_label)
    assert not (tmp_path / "out").exists()  # refused before the output is touched
