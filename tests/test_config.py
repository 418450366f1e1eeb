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
    (VALID.replace("output: {path: out}", "output: {path: out, if_compacted: redo}"),
     "output: if_compacted: redo is for Delta outputs"),
    ("- a\n- b\n", "expected a mapping"),
    # values of another type are refused, never coerced; nor are infinite or NaN numbers
    (VALID.replace("top_k: 2", "top_k: true"), "tasks.sentiment.top_k: Input should be a valid integer"),
    (VALID.replace("top_k: 2", "max_length: true"), "tasks.sentiment.max_length: Input should be a valid integer"),
    (VALID.replace("top_k: 2", 'max_length: "32"'), "tasks.sentiment.max_length: Input should be a valid integer"),
    (VALID + 'compute: {batch_size: "32"}', "compute.batch_size: Input should be a valid integer"),
    (VALID + "compute: {num_cpus_per_actor: .inf}", "compute.num_cpus_per_actor: Input should be a finite number"),
    (VALID + "compute: {num_gpus_per_actor: .nan}", "compute.num_gpus_per_actor: Input should be a finite number"),
    (VALID.replace("top_k: 2", "max_error_share: .nan"), "tasks.sentiment.max_error_share: Input should be a finite"),
    (VALID.replace("path: data.parquet, text_column: body", "path: a, path: b"), "key 'path' is given twice"),
    (VALID + "compute: {batch_size: 2}\ncompute: {batch_size: 3}\n", "key 'compute' is given twice"),
    # values an actor would fail on are refused here
    (VALID.replace("top_k: 2", "long_text: chunk, max_length: 64, stride: 64"),
     "tasks.sentiment: stride 64 must be smaller than the window (max_length 64)"),
    (VALID.replace("top_k: 2", "stride: 16"), "tasks.sentiment: stride 16 moves the windows of long_text: chunk"),
    (VALID.replace("{task: sentiment-analysis, model: some/model, top_k: 2}",
                   "{task: embedding-classification, model: m, candidate_labels: [a], "
                   "hypothesis_template: '{:999999999}'}"), "no format spec or conversion"),
    (VALID.replace("{task: sentiment-analysis, model: some/model, top_k: 2}",
                   "{task: zero-shot-classification, model: m, candidate_labels: [a], "
                   "hypothesis_template: 'about {!r}'}"), "found: {!r}"),
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
