"""ONNX Runtime for the encoder tasks: the exported task model with its attention fused, float32 or dynamic int8.

The BERT optimizer fuses attention, GELU and layer norms (the export uses eager attention: under SDPA it fuses the
layer norms only). int8 is dynamic quantization with per-channel weights (per-tensor loses too much: cosine to
float32 down to 0.89 on MiniLM); on the fused graph it needs `DefaultTensorType` to type the fused nodes' outputs.
Needs no calibration. Never claimed equal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nlp_tasks.engines.encoder_engine import EncoderEngine

OPTIMIZER_TYPES = {"distilbert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert",
                   "electra": "bert", "mpnet": "bert", "albert": "bert"}
"""The optimizer's model type per checkpoint model type: its BERT fusions fit every encoder the exporter takes."""


class OnnxRuntimeModel(EncoderEngine):
    """A built task model in an ONNX Runtime CPU session of `threads` threads (sessions take concurrent calls)."""

    engine = "onnxruntime"

    def __init__(self, folder: Path, precision: str, threads: int, input_names: list[str], outputs: tuple[str, ...]):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options,
                                                    providers=["CPUExecutionProvider"])
        self.precision = precision
        self.input_names = input_names
        self.outputs = outputs

    @staticmethod
    def calibrated(precision: str) -> bool:
        """Dynamic int8 quantizes activations as they come: no build needs calibration texts."""
        return False

    @staticmethod
    def build(staging: Path, precision: str, batches: list[dict[str, Any]] | None, config: Any) -> None:
        """`staging/exported.onnx` fused (and for int8 quantized) into `staging/model.onnx`."""
        import logging

        from onnxruntime.transformers import optimizer

        logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
        fused = optimizer.optimize_model(
            str(staging / "exported.onnx"), model_type=OPTIMIZER_TYPES.get(config.model_type, "bert"),
            num_heads=config.num_attention_heads, hidden_size=config.hidden_size, opt_level=1)
        if precision != "int8":
            fused.save_model_to_file(str(staging / "model.onnx"))
            return
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        fused.save_model_to_file(str(staging / "fused.onnx"))
        quantize_dynamic(str(staging / "fused.onnx"), str(staging / "model.onnx"), per_channel=True,
                         weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        (staging / "fused.onnx").unlink()

    def run(self, feed: dict[str, Any]) -> list[Any]:
        return self.session.run(list(self.outputs), feed)
