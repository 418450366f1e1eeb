"""The Ray task that fits classification heads on labelled examples, embedded with each task's own model and pooling.

It runs once per run, before the actor pools start (so it may use every core of its node); the driver keeps what it
returns in the output (`__manifest/heads/`), so that a nightly rerun fits nothing.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from nlp_tasks.config import ComputeConfig, TaskSpec
from nlp_tasks.errors import InputError
from nlp_tasks.models.heads import fit_head
from nlp_tasks.workers.annotator import Annotator


def fit_heads(specs: dict[str, TaskSpec], compute: ComputeConfig,
              examples: dict[str, tuple[list[str], list[str]]]) -> dict[str, dict]:
    """Each task's head, fitted on its labelled examples embedded with the task's own model and pooling."""
    import os

    embedding_specs = {column: TaskSpec.model_validate({
        "task": "feature-extraction", "model": specs[column].model, "revision": specs[column].revision,
        "engine": specs[column].engine, **specs[column].options.embedding_options()}) for column in examples}
    if compute.device != "cuda":
        compute = compute.model_copy(update={"torch_threads": os.cpu_count()})
    # static int8 calibrates on the first examples, as the pool does (engines/calibration.pool_samples)
    embedder = Annotator(embedding_specs, compute, "text", "errors", calibration=next(iter(examples.values()))[0])
    heads, embedded = {}, {}
    for column, (texts, labels) in examples.items():
        key = (embedding_specs[column].model_dump_json(), tuple(texts))  # heads of one example set embed it once
        if key not in embedded:
            table = embedder(pa.table({"text": texts}), only=[column])
            for row, errors in enumerate(table.column("errors").to_pylist()):
                if errors:
                    raise InputError(f"tasks.{column}.examples: row {row} cannot be embedded: {errors[0]['message']}")
            embedded[key] = np.stack(table.column(column).to_numpy(zero_copy_only=False))
        heads[column] = fit_head(specs[column].options.head, embedded[key], labels)
    return heads
