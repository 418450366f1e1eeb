"""Packed oneDNN linear layers compute what `nn.Linear` does, and loading on CPU packs all but tied weights."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch
import transformers
from helpers import AVX2_CAPS, REPO, SAMPLE, cli, last_report, output_table, write_config

from nlp_tasks.models.cpu_linear import PackedLinear, kernel_path, pack_linears, unpack_linears
from nlp_tasks.models.node_cpu import bfloat16_native
from nlp_tasks.workers.load import load_model


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape", [(7,), (5, 7), (2, 3, 7)])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_matches_nn_linear_where_the_cpu_runs_it(dtype, tolerance, shape, bias):
    """Packed where this CPU's oneDNN runs the dtype (float32 always; bfloat16 with AVX-512 BW/VL/DQ or
    AVX-NE-CONVERT), left plain where it does not: either way the products of `nn.Linear`."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(7, 11, bias=bias).to(dtype).eval()
    model = torch.nn.Sequential(copy.deepcopy(linear))
    inputs = torch.randn(*shape, dtype=dtype)
    transposed = torch.randn(*reversed(shape), dtype=dtype).transpose(0, -1)  # not contiguous
    native = dtype == torch.float32 or bfloat16_native()
    assert len(pack_linears(model)) == int(native)
    assert isinstance(model[0], PackedLinear) == native
    assert ("packed for oneDNN" in kernel_path(model)) == native
    with torch.inference_mode():
        for x in (inputs, transposed):
            assert model(x).shape == linear(x).shape
            torch.testing.assert_close(model(x), linear(x), atol=tolerance, rtol=tolerance)


BFLOAT16_ON_AVX2 = """
import json, sys, torch, transformers
from nlp_tasks.workers.load import load_model
from nlp_tasks.models.node_cpu import describe
path = sys.argv[1]
loaded = load_model("AutoModelForSequenceClassification", path, None, "cpu", "bfloat16")
reference = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
inputs = loaded.tokenizer(["the market rallied on monday", "short"], padding=True, return_tensors="pt")
with torch.inference_mode():
    difference = (loaded.model(**inputs).logits.float() - reference(**inputs).logits).abs().max().item()
from nlp_tasks.models.cpu_linear import kernel_path
print(json.dumps({"cpu": describe(), "kernels": kernel_path(loaded.model), "difference": difference}))
"""


def test_bfloat16_on_a_cpu_without_it_runs_plain_and_equal_to_float32(models):
    """Under oneDNN's, PyTorch's and MKL's AVX2 caps (an AVX2-only node, emulated; on one they change nothing),
    a bfloat16 model loads with its linear layers plain, says so, and computes float32's logits within
    bfloat16's tolerance: no actor dies packing what the CPU cannot run."""
    result = subprocess.run([sys.executable, "-c", BFLOAT16_ON_AVX2, str(models["text-classification"])],
                            env={**os.environ, **AVX2_CAPS}, capture_output=True, text=True, timeout=120,
                            check=False, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert "(AVX2" in seen["cpu"] and "BF16" not in seen["cpu"]
    assert seen["kernels"] == "bfloat16, plain linear layers (no native bfloat16 on this CPU)"
    assert seen["difference"] < 5e-2


def test_packing_takes_every_linear_but_tied_ones_and_unpacking_restores_them(models):
    path = str(models["fill-mask"])
    loaded = load_model("AutoModelForMaskedLM", path, None, "cpu", "float32")
    assert not any(isinstance(module, PackedLinear) for module in loaded.model.modules())  # the actor decides
    reference = transformers.AutoModelForMaskedLM.from_pretrained(path).eval()
    swaps = pack_linears(loaded.model)
    plain = [name for name, module in loaded.model.named_modules() if type(module) is torch.nn.Linear]
    packed = [name for name, module in loaded.model.named_modules() if isinstance(module, PackedLinear)]
    assert plain == ["cls.predictions.decoder"]  # tied to the word embeddings: left as it is
    assert loaded.model.cls.predictions.decoder.weight is loaded.model.bert.embeddings.word_embeddings.weight
    assert len(packed) == len(swaps) == sum(type(m) is torch.nn.Linear for m in reference.modules()) - 1
    inputs = loaded.tokenizer(["the market rallied on monday", "short"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(**inputs).logits, reference(**inputs).logits, atol=1e-4, rtol=1e-4)
        unpack_linears(swaps)
        assert [name for name, module in loaded.model.named_modules() if type(module) is torch.nn.Linear] == \
            [name for name, module in reference.named_modules() if type(module) is torch.nn.Linear]
        assert loaded.model(**inputs).logits.equal(reference(**inputs).logits)


def test_skeletons_and_packed_models_are_left_alone(models):
    skeleton = load_model("AutoModelForSequenceClassification", str(models["text-classification"]), None, "cpu",
                          "float32", weights=False)
    assert pack_linears(skeleton.model) == []
    loaded = load_model("AutoModelForSequenceClassification", str(models["text-classification"]), None, "cpu",
                        "float32")
    assert len(pack_linears(loaded.model)) > 0 and pack_linears(loaded.model) == []


class ActivationFirst(torch.nn.Module):
    """Same attributes as BERT's intermediate block, another computation: its GELU must not move."""

    def __init__(self):
        super().__init__()
        self.dense = torch.nn.Linear(4, 4)
        self.intermediate_act_fn = torch.nn.GELU()

    def forward(self, hidden_states):
        return self.dense(self.intermediate_act_fn(hidden_states))


def test_exact_gelu_after_a_feed_forward_layer_runs_inside_it(models):
    from transformers.activations import ACT2FN
    from transformers.models.bert.modeling_bert import BertIntermediate

    path = str(models["text-classification"])
    loaded = load_model("AutoModelForSequenceClassification", path, None, "cpu", "float32")
    pack_linears(loaded.model)
    blocks = [module for module in loaded.model.modules() if isinstance(module, BertIntermediate)]
    assert blocks and all(block.dense.post_op == ("gelu", "none") for block in blocks)
    assert all(type(block.intermediate_act_fn) is torch.nn.Identity for block in blocks)
    reference = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    inputs = loaded.tokenizer(["the market rallied on monday", "short"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(**inputs).logits, reference(**inputs).logits, atol=1e-5, rtol=1e-5)

    other_order = torch.nn.Sequential(ActivationFirst())
    assert len(pack_linears(other_order)) == 1 and other_order[0].dense.post_op == ("none", "")
    tanh_gelu = BertIntermediate(transformers.BertConfig(hidden_size=4, intermediate_size=8, hidden_act="gelu_new"))
    assert len(pack_linears(tanh_gelu)) == 1 and tanh_gelu.dense.post_op == ("none", "")
    assert type(tanh_gelu.intermediate_act_fn) is type(ACT2FN["gelu_new"])


@pytest.mark.slow
def test_a_bfloat16_job_on_an_avx2_node_runs_equal_to_float32_and_says_its_path(tmp_path, models, minilm):
    """`compute: {dtype: bfloat16}` on an AVX2-only node (emulated): the run ends 0, its rows equal float32's within
    bfloat16's tolerance, and its report and page name each pool's CPU and the path taken there."""
    tasks = {"sentiment": {"task": "sentiment-analysis", "model": str(models["text-classification"])},
             "embedding": {"task": "feature-extraction", "model": minilm, "max_length": 64}}
    rows = {}
    pq.write_table(pq.read_table(SAMPLE).slice(0, 48), tmp_path / "in.parquet")  # enough for the timing's batches
    for dtype in ("float32", "bfloat16"):
        config = write_config(tmp_path, tmp_path / "in.parquet", tasks, name=f"{dtype}.yaml",
                              output={"path": tmp_path / dtype}, compute={"dtype": dtype, "batch_size": 16})
        result = cli(config, env=AVX2_CAPS)
        assert result.returncode == 0, result.stderr[-3000:]
        rows[dtype] = output_table(tmp_path / dtype).sort_by("id")
    plain, bf16 = rows["float32"], rows["bfloat16"]
    assert bf16.column("id").equals(plain.column("id"))
    for ours, theirs in zip(bf16.column("embedding").to_pylist(), plain.column("embedding").to_pylist()):
        assert torch.nn.functional.cosine_similarity(torch.tensor(ours), torch.tensor(theirs), dim=0) > 0.99
    for ours, theirs in zip(bf16.column("sentiment").to_pylist(), plain.column("sentiment").to_pylist()):
        assert abs(ours["score"] - theirs["score"]) < 2e-2
    assert all("segments/s" in actor["kernels"] for actor in last_report(tmp_path / "float32")["actors"])  # timed
    actors = last_report(tmp_path / "bfloat16")["actors"]
    assert {actor["kernels"] for actor in actors} == {"bfloat16, plain linear layers (no native bfloat16 on this CPU)"}
    assert all("(AVX2" in actor["cpu"] for actor in actors)
    page = next((tmp_path / "bfloat16" / "__reports").glob("run-*.html")).read_text()
    assert "no native bfloat16 on this CPU" in page and "(AVX2" in page
