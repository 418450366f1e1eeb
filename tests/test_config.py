"""Configuration is validated at load time, and every error names the file and the key."""

from __future__ import annotations

import pytest
from helpers import REPO

from nlp_tasks.config import ConfigError, load_config

VALID = """
input: {path: data.parquet, text_column: body}
output: {path: out}
tasks:
  sentiment: {task: sentiment-analysis, model: some/model, top_k: 2}
"""


def write(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_valid_config_and_overrides(tmp_path):
    config = load_config(write(tmp_path, VALID), {"input.path": "s3://bucket/x/", "output.path": "o2"})
    assert config.input.path == "s3://bucket/x/" and config.output.path == "o2"
    assert config.input.text_column == "body"
    assert config.tasks["sentiment"].options.top_k == 2
    assert config.compute.min_actors is None  # left out: sized from the cluster when the job starts


@pytest.mark.parametrize("text, message", [
    (VALID.replace("top_k: 2", "top_k: two"), "tasks.sentiment.top_k: Input should be a valid integer"),
    (VALID.replace("top_k: 2", "topk: 2"), "tasks.sentiment.topk: unknown key"),
    (VALID.replace("sentiment-analysis", "sentiment-analysys"), "tasks.sentiment.task: unknown task 'sentiment-analysys'"),
    (VALID.replace("text_column: body", "text_colum: body"), "input.text_colum: unknown key"),
    (VALID.replace("output: {path: out}", "output: {}"), "output.path: Field required"),
    (VALID + "compute: {min_actors: 4, max_actors: 2}", "compute: max_actors (2) is smaller than min_actors (4)"),
    (VALID + "compute: {dtype: float64}", "compute.dtype: Input should be"),
    (VALID.replace("{task: sentiment-analysis, model: some/model, top_k: 2}", "{task: question-answering, model: m}"),
     "tasks.sentiment: set exactly one of 'question' (fixed) or 'question_column' (per row)"),
    (VALID.replace("{task: sentiment-analysis, model: some/model, top_k: 2}", "{task: zero-shot-classification, model: m}"),
     "tasks.sentiment.candidate_labels: Field required"),
    ("tasks: [", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping"),
])
def test_errors_name_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(str(path))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("nope.yaml")


@pytest.mark.parametrize("name", ["demo.yaml", "nightly.yaml"])
def test_shipped_configs_are_valid(name):
    config = load_config(REPO / "jobs" / "configs" / name)
    assert config.tasks
