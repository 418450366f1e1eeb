"""Distributed NLP batch annotation: Ray Data + Hugging Face transformers over Parquet corpora."""

__version__ = "0.1.0"
