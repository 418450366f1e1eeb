"""Job entry points: `python -m jobs.annotate`."""
