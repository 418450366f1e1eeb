"""CPU linear layers through oneDNN, with each weight packed once at load instead of once per call.

On CPU, `nn.Linear` in float32 calls MKL's addmm, which copies the bias into the output before its GEMM
(together 76% of MiniLM's forward pass on one core here); in bfloat16 it calls oneDNN, which reorders the
weight into its blocked layout on every call. Packing each weight into that layout once, and fusing the bias,
is what PyTorch's compiler does for frozen CPU graphs (inductor's `freezing`), without the compile: the same
products, summed in another order (float32 differences of ~1e-6 per layer). Where a BERT-family feed-forward
block applies an exact GELU to a linear layer's output, the GELU runs inside the GEMM too (bit-identical to
applying it after). Whether packing pays depends on the CPU (it does with AVX-512, not always with AVX2 alone):
models/kernel_choice.py decides on each node by timing both.
"""

from __future__ import annotations

from collections import Counter

import torch

from nlp_tasks.models.node_cpu import bfloat16_native

PACKED_DTYPES = (torch.float32, torch.bfloat16)


class PackedLinear(torch.nn.Module):
    """`nn.Linear` for inference on CPU: its weight in oneDNN's layout, the bias (and, with `gelu`, an exact GELU
    of the result) computed inside the GEMM."""

    def __init__(self, linear: torch.nn.Linear, gelu: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = linear.bias
        self.post_op = ("gelu", "none") if gelu else ("none", "")  # oneDNN's post-op and its algorithm

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dim() == 1:
            return self.forward(inputs.unsqueeze(0)).squeeze(0)
        operation, algorithm = self.post_op
        return torch.ops.mkldnn._linear_pointwise(inputs.contiguous(), self.packed_weight, self.bias, operation, [],
                                                  algorithm)


def _feed_forward(self, hidden_states):
    hidden_states = self.dense(hidden_states)
    hidden_states = self.intermediate_act_fn(hidden_states)
    return hidden_states


def applies_exact_gelu(block: torch.nn.Module) -> bool:
    """Whether `block.forward` is exactly `_feed_forward` (as BERT, RoBERTa, DeBERTa, ... write their intermediate
    blocks: the same bytecode and names) and its activation an exact (erf) GELU."""
    from transformers.activations import GELUActivation

    forward = getattr(type(block).forward, "__code__", None)
    activation = getattr(block, "intermediate_act_fn", None)
    exact = (type(activation) is GELUActivation and activation.act is torch.nn.functional.gelu) or \
        (type(activation) is torch.nn.GELU and activation.approximate == "none")
    return exact and forward is not None and (forward.co_code, forward.co_names) == (
        _feed_forward.__code__.co_code, _feed_forward.__code__.co_names)


def can_pack(model: torch.nn.Module) -> bool:
    """Whether this torch build, this node's CPU and the model's placement allow packing: oneDNN present, weights
    on CPU, in float32 or in a bfloat16 that oneDNN runs natively here (node_cpu.bfloat16_native)."""
    parameter = next(model.parameters(), None)
    return (parameter is not None and parameter.device.type == "cpu" and parameter.dtype in PACKED_DTYPES
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and (parameter.dtype != torch.bfloat16 or bfloat16_native()))


def kernel_path(model: torch.nn.Module) -> str:
    """How this node runs the model's linear layers: `float32, linear layers packed for oneDNN (72)`, or plain,
    with why."""
    packed = [module for module in model.modules() if isinstance(module, PackedLinear)]
    if packed:
        return f"{str(packed[0].packed_weight.dtype).removeprefix('torch.')}, linear layers packed for oneDNN " \
               f"({len(packed)})"
    parameter = next(model.parameters(), None)
    if parameter is None or parameter.device.type != "cpu":
        return "no weights" if parameter is None else parameter.device.type
    if parameter.dtype == torch.bfloat16 and not bfloat16_native():
        return "bfloat16, plain linear layers (no native bfloat16 on this CPU)"
    return f"{str(parameter.dtype).removeprefix('torch.')}, plain linear layers"


Swap = tuple[torch.nn.Module, str, torch.nn.Linear, torch.nn.Module | None]
"""One packed layer: its parent, its name there, the plain layer, and the activation moved into it (or None)."""


def pack_linears(model: torch.nn.Module) -> list[Swap]:
    """Swap every plain `nn.Linear` of a CPU inference model for a `PackedLinear`; returns the swaps, which
    `unpack_linears` undoes.

    A weight the model shares with another module (an output layer tied to the input embeddings) stays as it
    is: a packed copy would double its memory. A feed-forward block's exact GELU moves into its packed linear
    layer (`applies_exact_gelu`). Does nothing where `can_pack` says no.
    """
    if not can_pack(model):
        return []
    uses = Counter(id(parameter) for _, parameter in model.named_parameters(remove_duplicate=False))
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if type(child) is torch.nn.Linear and child.weight.dtype in PACKED_DTYPES
               and uses[id(child.weight)] == 1]
    swaps: list[Swap] = []
    with torch.no_grad():
        for parent, name, linear in targets:
            gelu = name == "dense" and applies_exact_gelu(parent)
            setattr(parent, name, PackedLinear(linear, gelu))
            swaps.append((parent, name, linear, parent.intermediate_act_fn if gelu else None))
            if gelu:
                parent.intermediate_act_fn = torch.nn.Identity()
    return swaps


def unpack_linears(swaps: list[Swap]) -> None:
    """Put back the plain layers (and activations) that `pack_linears` swapped out."""
    for parent, name, linear, activation in swaps:
        setattr(parent, name, linear)
        if activation is not None:
            parent.intermediate_act_fn = activation
