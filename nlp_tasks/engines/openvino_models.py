"""OpenVINO for the encoder tasks: the exported task model as OpenVINO IR, float32 or NNCF's static int8.

float32 is asked for explicitly (`INFERENCE_PRECISION_HINT`): on a CPU with BF16 OpenVINO would otherwise run bf16,
which is not equal to transformers. Thread pinning is off (`ENABLE_CPU_PINNING`): each process would pin its
threads to the cores counted from the first, so a node's one-thread actors would all share one core (two of them on
2 cores ran at half the speed of two unpinned ones: docs/performance.md, CPU engines). int8 is NNCF's post-training
quantization with the transformer preset (activations and weights, calibrated on texts the job read): never claimed
equal, its cosine to float32 is measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nlp_tasks.engines.encoder_engine import EncoderEngine


class OpenVINOModel(EncoderEngine):
    """A built task model compiled for the CPU with `threads` threads, one inference request per calling thread."""

    engine = "openvino"

    def __init__(self, folder: Path, precision: str, threads: int, input_names: list[str], outputs: tuple[str, ...]):
        import threading

        import openvino

        core = openvino.Core()
        self.compiled = core.compile_model(str(folder / "model.xml"), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False})
        self.precision = precision
        self.input_names = input_names
        self.outputs = outputs
        self._requests = threading.local()

    @staticmethod
    def calibrated(precision: str) -> bool:
        """Whether a build in `precision` needs calibration texts: static int8 does."""
        return precision == "int8"

    @staticmethod
    def build(staging: Path, precision: str, batches: list[dict[str, Any]] | None, config: Any) -> None:
        """The IR of `staging/exported.onnx` in `staging/model.xml`; for int8 quantized on `batches`."""
        import openvino

        model = openvino.convert_model(str(staging / "exported.onnx"))
        if precision == "int8":
            import nncf

            model = nncf.quantize(model, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(batches))
        openvino.save_model(model, str(staging / "model.xml"), compress_to_fp16=False)

    def run(self, feed: dict[str, Any]) -> list[Any]:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        results = request.infer(feed, share_inputs=True)
        return [results[output].copy() for output in self.compiled.outputs]
