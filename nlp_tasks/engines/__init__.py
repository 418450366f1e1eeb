"""Inference engines beside PyTorch: which one a task runs (choice.py), how its options map (decoding.py),
CTranslate2's conversion and runtime (ctranslate2_models.py) for the generation tasks, and the CPU engines of the
encoder tasks: the export and node cache (encoders.py), OpenVINO (openvino_models.py), ONNX Runtime
(onnxruntime_models.py) and what static int8 is calibrated on (calibration.py)."""
