"""Packed or plain linear layers are chosen on the node by timing both on the run's own rows, once per node."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
import torch
from helpers import SAMPLE

from nlp_tasks.config import ComputeConfig, TaskSpec
from nlp_tasks.models import kernel_choice
from nlp_tasks.models.cpu_linear import PackedLinear
from nlp_tasks.workers.annotator import Annotator


@pytest.fixture
def node_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NLP_TASKS_MODEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "kernels"


def annotator(minilm: str) -> Annotator:
    specs = {"embedding": TaskSpec.model_validate({"task": "feature-extraction", "model": minilm, "max_length": 64})}
    return Annotator(specs, ComputeConfig(device="cpu", token_budget=1024), "text", "errors", record_calls=True)


def is_packed(actor: Annotator) -> bool:
    return any(isinstance(module, PackedLinear) for module in actor.adapters["embedding"].model.modules())


def test_the_first_actor_times_both_and_the_next_applies_its_verdict(node_cache, minilm):
    import pyarrow.parquet as pq

    texts = pa.table({"text": pq.read_table(SAMPLE).column("text").to_pylist()[:24]})
    first = annotator(minilm)
    assert not is_packed(first) and not list(node_cache.glob("*.json"))
    first_out = first(texts)
    [verdict_file] = node_cache.glob("*.json")
    verdict = json.loads(verdict_file.read_text())
    assert set(verdict["rates"]) == {"packed", "plain"} and all(rate > 0 for rate in verdict["rates"].values())
    assert verdict["packed"] == (verdict["rates"]["packed"] > verdict["rates"]["plain"]) == is_packed(first)
    [call] = json.loads(first_out.column("__calls")[0].as_py())
    assert " in " in call["kernels"] and ("packed for oneDNN" in call["kernels"]) == verdict["packed"]

    verdict_file.write_text(json.dumps({**verdict, "packed": not verdict["packed"]}))  # the node's record decides
    second = annotator(minilm)
    assert is_packed(second) != verdict["packed"]
    second_out = second(texts)
    [call] = json.loads(second_out.column("__calls")[0].as_py())
    assert call["kernels"].endswith("on this node before")
    for ours, theirs in zip(first_out.column("embedding").to_pylist(), second_out.column("embedding").to_pylist()):
        torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), atol=1e-5, rtol=1e-4)


def test_a_call_too_small_to_time_leaves_the_choice_to_a_later_one(node_cache, minilm):
    actor = annotator(minilm)
    actor(pa.table({"text": ["one short row", "and another"]}))
    assert not list(node_cache.glob("*.json")) and not is_packed(actor) and actor.kernels_key is not None
    actor(pa.table({"text": [f"row number {i} of a larger call" for i in range(kernel_choice.TRIAL_SEGMENTS)]}))
    assert len(list(node_cache.glob("*.json"))) == 1 and actor.kernels_key is None


def test_an_unreadable_verdict_is_timed_again(node_cache, minilm):
    texts = pa.table({"text": [f"row number {i} of a call" for i in range(kernel_choice.TRIAL_SEGMENTS)]})
    annotator(minilm)(texts)
    [verdict_file] = node_cache.glob("*.json")
    verdict_file.write_text("{not json")
    actor = annotator(minilm)
    assert actor.kernels_key is not None
    actor(texts)
    assert json.loads(verdict_file.read_text())["rates"]["plain"] > 0
