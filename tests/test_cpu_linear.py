"""Packed oneDNN linear layers compute what `nn.Linear` does, and loading on CPU packs all but tied weights."""

from __future__ import annotations

import pytest
import torch
import transformers

from nlp_tasks.models.cpu_linear import PackedLinear, pack_linears
from nlp_tasks.models.loading import load_model


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape", [(7,), (5, 7), (2, 3, 7)])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_matches_nn_linear(dtype, tolerance, shape, bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(7, 11, bias=bias).to(dtype).eval()
    inputs = torch.randn(*shape, dtype=dtype)
    transposed = torch.randn(*reversed(shape), dtype=dtype).transpose(0, -1)  # not contiguous
    packed = PackedLinear(linear)
    with torch.inference_mode():
        for x in (inputs, transposed):
            assert packed(x).shape == linear(x).shape
            torch.testing.assert_close(packed(x), linear(x), atol=tolerance, rtol=tolerance)


def test_loading_on_cpu_packs_every_linear_but_tied_ones(models):
    path = str(models["fill-mask"])
    loaded = load_model("AutoModelForMaskedLM", path, None, "cpu", "float32")
    reference = transformers.AutoModelForMaskedLM.from_pretrained(path).eval()
    plain = [name for name, module in loaded.model.named_modules() if type(module) is torch.nn.Linear]
    packed = [name for name, module in loaded.model.named_modules() if isinstance(module, PackedLinear)]
    assert plain == ["cls.predictions.decoder"]  # tied to the word embeddings: left as it is
    assert loaded.model.cls.predictions.decoder.weight is loaded.model.bert.embeddings.word_embeddings.weight
    assert len(packed) == sum(type(m) is torch.nn.Linear for m in reference.modules()) - 1
    inputs = loaded.tokenizer(["the market rallied on monday", "short"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(**inputs).logits, reference(**inputs).logits, atol=1e-4, rtol=1e-4)


def test_skeletons_and_packed_models_are_left_alone(models):
    skeleton = load_model("AutoModelForSequenceClassification", str(models["text-classification"]), None, "cpu",
                          "float32", weights=False)
    assert pack_linears(skeleton.model) == 0
    loaded = load_model("AutoModelForSequenceClassification", str(models["text-classification"]), None, "cpu",
                        "float32")
    assert pack_linears(loaded.model) == 0


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
    blocks = [module for module in loaded.model.modules() if isinstance(module, BertIntermediate)]
    assert blocks and all(block.dense.post_op == ("gelu", "none") for block in blocks)
    assert all(type(block.intermediate_act_fn) is torch.nn.Identity for block in blocks)
    reference = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    inputs = loaded.tokenizer(["the market rallied on monday", "short"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(**inputs).logits, reference(**inputs).logits, atol=1e-5, rtol=1e-5)

    other_order = torch.nn.Sequential(ActivationFirst())
    assert pack_linears(other_order) == 1 and other_order[0].dense.post_op == ("none", "")
    tanh_gelu = BertIntermediate(transformers.BertConfig(hidden_size=4, intermediate_size=8, hidden_act="gelu_new"))
    assert pack_linears(tanh_gelu) == 1 and tanh_gelu.dense.post_op == ("none", "")
    assert type(tanh_gelu.intermediate_act_fn) is type(ACT2FN["gelu_new"])
