"""fill-mask: the top k tokens for the single mask token in each text."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import PositiveInt

from nlp_tasks.tasks.base import ENCODER_ENGINES, RowError, TaskAdapter, TaskOptions
from nlp_tasks.tasks.registry import register

PREDICTION = pa.struct([
    ("score", pa.float32()), ("token", pa.int32()), ("token_str", pa.string()), ("sequence", pa.string()),
])


class FillMaskOptions(TaskOptions):
    top_k: PositiveInt = 5


@register
class FillMask(TaskAdapter):
    name = "fill-mask"
    options_class = FillMaskOptions
    auto_class = "AutoModelForMaskedLM"
    engines = ENCODER_ENGINES

    def arrow_type(self) -> pa.DataType:
        return pa.list_(PREDICTION)

    def preprocess(self, texts, batch):
        mask_id = self.tokenizer.mask_token_id
        segments = []
        for features in self.encode(texts):
            found = features["input_ids"].count(mask_id)
            if found == 1:
                segments.append([features])
            else:
                segments.append(RowError(
                    f"fill-mask needs exactly one {self.tokenizer.mask_token} token in the text "
                    f"(found {found} within the first {self.max_length} tokens)"
                ))
        return segments

    def forward(self, inputs):
        import torch

        logits = self.infer(inputs).logits
        positions = (inputs["input_ids"].to(logits.device) == self.tokenizer.mask_token_id).nonzero()
        probs = logits[positions[:, 0], positions[:, 1]].float().softmax(dim=-1)
        values, tokens = torch.topk(probs, self.options.top_k, dim=-1)
        return list(zip(values.cpu().numpy(), tokens.cpu().numpy()))

    def postprocess(self, text, segments, outputs):
        input_ids = np.array(segments[0]["input_ids"])
        mask_at = int(np.flatnonzero(input_ids == self.tokenizer.mask_token_id)[0])
        predictions = []
        for score, token in zip(*outputs[0]):
            filled = input_ids.copy()
            filled[mask_at] = token
            predictions.append({
                "score": float(score),
                "token": int(token),
                "token_str": self.tokenizer.decode([int(token)]),
                "sequence": self.tokenizer.decode(filled, skip_special_tokens=True),
            })
        return predictions
