"""Benchmarks of the annotation job; run `python -m benchmarks.<name> --help` (throughput, ...)."""
