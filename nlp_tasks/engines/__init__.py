"""Inference engines beside PyTorch: which one a task runs (choice.py), how its options map (decoding.py), and
CTranslate2's conversion and runtime (ctranslate2_models.py) for the generation tasks."""
