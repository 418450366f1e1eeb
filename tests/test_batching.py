"""Length-aware micro-batching: the token budget holds, every row is run once, order comes back."""

from __future__ import annotations

import random

import torch

from nlp_tasks.batching import MicroBatcher, group_micro_batches


def test_plan_respects_budget_and_covers_every_row_once():
    rng = random.Random(0)
    lengths = [rng.randint(1, 300) for _ in range(500)]
    groups = group_micro_batches(lengths, token_budget=1024)
    assert sorted(i for group in groups for i in group) == list(range(500))
    for group in groups:
        longest = max(lengths[i] for i in group)
        assert longest * len(group) <= 1024 or len(group) == 1
        assert [lengths[i] for i in group] == sorted((lengths[i] for i in group), reverse=True)


def test_oversized_row_gets_its_own_micro_batch():
    assert group_micro_batches([5000, 10, 10], token_budget=100) == [[0], [1, 2]]


def test_outputs_return_in_input_order_and_padding_is_clipped():
    rows = [{"input_ids": list(range(1, n + 1)), "attention_mask": [1] * n} for n in (3, 9, 1, 6, 9, 2)]
    widths = []

    def forward(inputs):
        widths.append(inputs["input_ids"].shape[1])
        return inputs["input_ids"].sum(dim=1).tolist()

    batcher = MicroBatcher(token_budget=18, pad_values={"input_ids": 0})
    assert batcher.run(rows, forward) == [sum(r["input_ids"]) for r in rows]
    assert widths == [9, 6, 1]  # each micro-batch padded only to its own longest row


def test_left_padding_for_decoder_models():
    rows = [{"input_ids": [7, 8, 9], "attention_mask": [1, 1, 1]}, {"input_ids": [5], "attention_mask": [1]}]
    seen = []
    MicroBatcher(100, {"input_ids": 0}, padding_side="left").run(rows, lambda x: seen.append(x) or [0, 0])
    assert torch.equal(seen[0]["input_ids"], torch.tensor([[7, 8, 9], [0, 0, 5]]))
    assert torch.equal(seen[0]["attention_mask"], torch.tensor([[1, 1, 1], [0, 0, 1]]))


def test_cuda_out_of_memory_halves_the_budget_and_every_row_still_runs_once():
    """A forward pass that only fits 64 padded tokens (as a GPU with little free memory would) raises CUDA
    OOM above that; the batcher splits the failing micro-batch, keeps the smaller budget, loses no row."""
    fits = 64
    shapes = []

    def forward(inputs):
        if inputs["input_ids"].numel() > fits:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: {inputs['input_ids'].numel()} padded tokens")
        shapes.append(tuple(inputs["input_ids"].shape))
        return inputs["input_ids"][:, 0].tolist()

    rng = random.Random(0)
    rows = [{"input_ids": [row] + [1] * rng.randint(0, 15)} for row in range(40)]
    batcher = MicroBatcher(token_budget=512, pad_values={"input_ids": 0})
    assert batcher.run(rows, forward) == list(range(40))
    assert sum(rows for rows, _ in shapes) == 40 and all(rows * width <= fits for rows, width in shapes)
    assert 32 <= batcher.token_budget <= fits
    assert batcher.run(rows[:8], forward) == list(range(8)), "the halved budget holds for later batches"


def test_micro_batcher_counts_real_and_padded_tokens():
    from collections import Counter

    features = [{"input_ids": [1] * length} for length in (4, 2, 2, 1)]
    tokens = Counter()
    MicroBatcher(8, {"input_ids": 0}).run(features, lambda inputs: [0] * len(inputs["input_ids"]), tokens)
    assert tokens == {"real": 9, "padded": 12}  # micro-batches [4, 2] and [2, 1], each padded to its longest
