"""What the CPU engines of the encoder tasks share: a built task model called as the PyTorch model is."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


class EncoderEngine:
    """A built task model on a CPU engine, called as the PyTorch model is: padded tensors in, the outputs by their
    transformers names out (tensors, float32). Subclasses run one micro-batch of numpy arrays (`run`)."""

    engine: str
    outputs: tuple[str, ...]
    input_names: list[str]

    def __call__(self, inputs: dict[str, Any]) -> SimpleNamespace:
        import torch

        feed = {name: inputs[name].numpy() for name in self.input_names}
        return SimpleNamespace(**{name: torch.from_numpy(array) for name, array in zip(self.outputs, self.run(feed))})

    def run(self, feed: dict[str, Any]) -> list[Any]:
        raise NotImplementedError
