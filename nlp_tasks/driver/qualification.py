"""Qualifying the engines from the driver, after the checks and before the output is opened: the pools whose
engine is not transformers and has no verdict on this node, and in a job of QUALIFY_FLOAT32_ROWS input rows or more
the CPU engines `auto` may take in float32 (one a round, in order), are qualified by Ray tasks on a sample of the
input (workers/qualify.py), the verdicts kept (engines/qualification.py), and each such task's engine chosen again
with them (engines/choice.py): `auto` falls back to transformers and says why, a named engine is refused in one line.
Nothing has been committed then; a run whose verdicts are all kept starts no Ray for this.
"""

from __future__ import annotations

import logging

from nlp_tasks.config import ComputeConfig, JobConfig, TaskSpec
from nlp_tasks.driver.checks import CheckedJob, engine_for
from nlp_tasks.driver.compute import group_by_model
from nlp_tasks.driver.phases import timed
from nlp_tasks.driver.progress import RunEvents
from nlp_tasks.driver.ray_session import start_ray, stop_embedded_ray
from nlp_tasks.engines.calibration import needs_calibration, sample_and_size
from nlp_tasks.engines.choice import QUALIFY_FLOAT32_ROWS, encoder_problem
from nlp_tasks.engines.encoders import ENCODER_ENGINES
from nlp_tasks.engines.qualification import Verdict, precision, record, recorded
from nlp_tasks.tasks import get_task
from nlp_tasks.workers.qualify import qualify_pool

log = logging.getLogger(__name__)

ROUNDS = 3
"""Choices at most: `auto` may move on from a CPU engine that failed (in float32, or was timed slower than
transformers) to the next one, qualified in turn."""


def qualification_compute(config: JobConfig, specs: dict[str, TaskSpec]) -> ComputeConfig:
    """How a pool is qualified: its dtype, on CPU unless it is set to cuda (a qualified verdict's device)."""
    compute = config.pool_compute(specs)
    return compute.model_copy(update={"device": "cuda" if compute.device == "cuda" else "cpu"})


def unqualified(config: JobConfig, tasks: dict[str, TaskSpec], rows: int) -> list[dict[str, TaskSpec]]:
    """The pools (their tasks, each naming the engine to qualify) that lack a verdict for some task on this node:
    those whose engine is not transformers, and, in a job of `rows` input rows or more than QUALIFY_FLOAT32_ROWS,
    those `auto` left on transformers in float32 on CPU whose next CPU engine has none (float32_candidate)."""
    pools = []
    for specs in group_by_model(tasks):
        compute = qualification_compute(config, specs)
        engine = next(iter(specs.values())).engine
        if engine == "transformers" and rows >= QUALIFY_FLOAT32_ROWS:
            engine = float32_candidate(config, specs, compute) or engine
        if engine != "transformers" and any(recorded(spec, engine, compute.dtype, compute.device) is None
                                            for spec in specs.values()):
            pools.append({column: spec.model_copy(update={"engine": engine}) for column, spec in specs.items()})
    return pools


def float32_candidate(config: JobConfig, specs: dict[str, TaskSpec], compute: ComputeConfig) -> str | None:
    """The CPU engine to qualify next for a float32 pool of encoder tasks that `auto` left on transformers on CPU:
    the first that could run them and has no verdict on this node; None where none is left to try."""
    if compute.device != "cpu" or compute.dtype not in ("auto", "float32") or \
            any(config.tasks[column].engine != "auto" or "openvino" not in get_task(spec.task).engines
                for column, spec in specs.items()):
        return None
    return next((engine for engine in ENCODER_ENGINES
                 if all(encoder_problem(spec, engine, compute.dtype) is None
                        and recorded(spec, engine, compute.dtype, compute.device) is None for spec in specs.values())),
                None)


def qualify_engines(config: JobConfig, checked: CheckedJob, timings: dict[str, float], events: RunEvents) -> None:
    """Qualify the pools that need it and choose their tasks' engines again (checked.tasks is updated); a named
    engine that fails is a ConfigError, exit 2."""
    for _ in range(ROUNDS):
        pools = unqualified(config, checked.tasks, checked.source.num_rows)
        if not pools:
            return
        with timed(timings, "qualify_engines", events):
            if not qualify(config, checked, pools):
                return  # no usable text in the input: nothing to prove on, every row will say why
        for specs in pools:
            for column in specs:
                checked.tasks[column] = engine_for(config, column, config.tasks[column])


def qualify(config: JobConfig, checked: CheckedJob, pools: list[dict[str, TaskSpec]]) -> bool:
    """Run each pool's qualification as a Ray task on the input sample and keep the verdicts; False where the
    sample holds no usable text."""
    import ray

    from nlp_tasks.driver.plan import fragments_of  # Ray and Ray Data: imported where there is a pool to qualify

    was_up = ray.is_initialized()
    embedded = start_ray()
    try:
        fragments = fragments_of(checked.source.files, [], str)
        sample, size = ray.remote(sample_and_size).options(num_cpus=0.25, num_returns=2).remote(
            checked.source.filesystem, fragments, config.input.text_column)
        if not ray.get(size):
            return False
        running = []
        for specs in pools:
            compute = qualification_compute(config, specs)
            engine = next(iter(specs.values())).engine
            labelled = next((column for column in specs if column in checked.examples), None)
            calibration = None if not needs_calibration(engine, compute.dtype) else \
                sample if labelled is None else list(checked.examples[labelled].texts)
            running.append((specs, compute, ray.remote(qualify_pool).options(
                num_cpus=1, num_gpus=1 if compute.device == "cuda" else 0).remote(specs, compute, sample, calibration)))
        for specs, compute, verdicts in running:
            for column, found in ray.get(verdicts).items():
                verdict = Verdict(**found)
                spec = specs[column]
                record(spec, spec.engine, compute.dtype, compute.device, verdict)
                log.info("task %r %s on %s in %s s: %s", column, "qualified" if verdict.passed else "did not qualify",
                         spec.engine, verdict.seconds, verdict.reason)
                speed = verdict.pace
                engine_precision = precision(spec.engine, compute.dtype, compute.device)
                if speed and not speed.faster and engine_precision == "int8":
                    log.warning("task %r: %s; dtype float32 on transformers (dtype auto) is faster here, and equal "
                                "to pipeline()", column, speed.describe(spec.engine, engine_precision))
        return True
    finally:
        if embedded:
            stop_embedded_ray()
        elif not was_up:  # a cluster joined for this: the run joins it again
            ray.shutdown()
