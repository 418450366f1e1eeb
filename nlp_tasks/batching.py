"""Length-aware micro-batching: sort by token length, cut by a token budget, restore order.

A Ray batch holds rows of very different lengths. Padding them all to the longest wastes
most of the compute, so each batch is sorted by length and cut into micro-batches whose
padded size (rows x longest row) stays within a token budget; results go back in input order.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

Features = dict[str, Any]
"""One token sequence: model inputs (lists of ints) plus whatever the adapter keeps for postprocessing."""

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
CPU_TOKEN_BUDGET = 2048
"""Padded tokens per micro-batch on CPU: 8 rows of 256 tokens, the fastest budget of 1,024 to 4,096 for MiniLM and
BERT-base on one thread (`python -m benchmarks.cpu_engine_threads`)."""


def group_micro_batches(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Group indices, longest first, so that each group's rows x longest length <= token_budget.

    A single row longer than the budget still gets a group of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    groups: list[list[int]] = []
    for index in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= token_budget:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def pad_features(features: Sequence[Features], pad_values: dict[str, int], side: str = "right") -> dict[str, Any]:
    """Stack the model inputs of each row into tensors padded to the longest row of this micro-batch.

    Rows are copied into a pre-filled numpy array (4x faster than building tensors from padded lists:
    on a GPU this runs under the GIL while another batch's forward pass should be kept fed).
    """
    import numpy as np
    import torch

    width = max(len(f["input_ids"]) for f in features)
    tensors = {}
    for key in (k for k in MODEL_INPUT_KEYS if k in features[0]):
        padded = np.full((len(features), width), pad_values.get(key, 0), dtype=np.int64)
        for row, f in enumerate(features):
            values = f[key]
            if side == "left":
                padded[row, width - len(values):] = values
            else:
                padded[row, :len(values)] = values
        tensors[key] = torch.from_numpy(padded)
    return tensors


class MicroBatcher:
    """Runs a forward function over length-sorted micro-batches and returns outputs in input order.

    On CUDA out-of-memory it halves the token budget (for the rest of the actor's life) and
    retries the failed micro-batch in smaller pieces, instead of failing the job.
    """

    def __init__(self, token_budget: int, pad_values: dict[str, int], padding_side: str = "right"):
        self.token_budget = token_budget
        self.pad_values = pad_values
        self.padding_side = padding_side

    def run(self, features: Sequence[Features], forward: Callable[[dict[str, Any]], list[Any]],
            tokens: Counter | None = None) -> list[Any]:
        """Each feature's output, in input order; `tokens` counts the real and the padded tokens run."""
        results: list[Any] = [None] * len(features)
        lengths = [len(f["input_ids"]) for f in features]
        for group in group_micro_batches(lengths, self.token_budget):
            if tokens is not None:
                tokens.update(real=sum(lengths[i] for i in group), padded=len(group) * lengths[group[0]])
            for index, output in zip(group, self._run_group([features[i] for i in group], forward)):
                results[index] = output
        return results

    def _run_group(self, group: list[Features], forward: Callable[[dict[str, Any]], list[Any]]) -> list[Any]:
        import torch

        inputs = pad_features(group, self.pad_values, self.padding_side)
        try:
            return forward(inputs)
        except torch.cuda.OutOfMemoryError:
            if len(group) == 1:
                raise
            torch.cuda.empty_cache()
            # Half of what failed, not half the budget: micro-batches planned with the old budget fail
            # too, and must not shrink it again.
            self.token_budget = max(1, min(self.token_budget, inputs["input_ids"].numel() // 2))
            half = len(group) // 2
            return self._run_group(group[:half], forward) + self._run_group(group[half:], forward)


GPU_MEMORY_SHARE = 0.5
"""Of the GPU memory free once the model is loaded, the share micro-batches may use (the rest: fragmentation,
other actors sharing the GPU, the CUDA out-of-memory back-off's headroom)."""
GPU_TOKEN_BUDGET_BOUNDS = (8192, 1 << 19)


def gpu_token_budget(model: Any, device: Any, max_length: int, generates: bool) -> int:
    """Padded tokens per micro-batch that fit in the GPU's free memory, as a power of two.

    Per token a forward pass holds about four hidden-size vectors (queries, keys, values, output),
    one intermediate-size vector and one attention row per head, twice over for safety;
    generation keeps keys and values for every layer as well.
    """
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    config = getattr(model.config, "text_config", None) or model.config
    hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", 1024)
    intermediate = getattr(config, "intermediate_size", None) or getattr(config, "encoder_ffn_dim", 4 * hidden)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "encoder_attention_heads", 16)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "decoder_layers", 12)
    elements = 4 * hidden + intermediate + heads * max_length + (2 * layers * hidden if generates else 0)
    per_token = 2 * elements * torch.tensor([], dtype=model.dtype).element_size()
    budget = int(free * GPU_MEMORY_SHARE / per_token)
    low, high = GPU_TOKEN_BUDGET_BOUNDS
    return 1 << int(math.log2(min(max(budget, low), high)))
