"""Distributed NLP batch annotation: Ray Data + Hugging Face transformers over Parquet corpora.

`nlp_tasks.build_processor(tasks)(dataset)` annotates a Ray Data Dataset of the user's own (processor.py);
`python -m jobs.annotate` runs the whole job over files."""

__version__ = "0.1.0"
__all__ = ["build_processor"]


def __getattr__(name: str):
    """`build_processor`, imported on first use: importing any module of the package (the CLI checking a config,
    a worker unpickling a stage) must not load Ray Data and the driver's modules."""
    if name == "build_processor":
        from nlp_tasks.processor import build_processor

        return build_processor
    raise AttributeError(f"module 'nlp_tasks' has no attribute {name!r}")
