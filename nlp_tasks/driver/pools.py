"""The annotation as Ray Data stages, and the one place that hands a stage to `map_batches`.

A `Stage` declares what runs on a batch and what it holds: a function runs as Ray tasks (what it loads
stays loaded in its worker process: stages.Skeletons), a class as a pool of actors (set up once in its
constructor, the model loaded, then called once per batch). A `Pool` is the tasks that share one model,
with their settings, decomposed in one of two ways: fused, one stage of `Annotator` actors that
tokenize, run the model and postprocess; split, a stage of `ModelStage` actors that run the model alone
and a stage of CPU tasks that postprocess, after one tokenize stage that every split pool shares
(workers/stages.py). The job (plan.py) and `build_processor` (processor.py) both annotate through
`annotation_stages` and run every stage through `run_stages`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from nlp_tasks.config import TaskSpec
from nlp_tasks.driver.compute import PoolSettings
from nlp_tasks.workers.annotator import Annotator
from nlp_tasks.workers.stages import ModelStage, postprocess, tokenize


@dataclass(frozen=True)
class Actors:
    """How a class stage's actors are pooled: from `min_size` up to `max_size`, `concurrency` batches in flight
    each (in threads)."""

    min_size: int
    max_size: int
    concurrency: int = 1


@dataclass(frozen=True)
class Stage:
    """One step over Arrow batches: `fn` (a function, or a class whose instances are actors) with `kwargs` (the
    function's, or the constructor's), the rows per call, and the CPUs and GPUs each task or actor reserves."""

    fn: Callable | type
    kwargs: dict[str, Any]
    batch_size: int | None
    num_cpus: float
    num_gpus: float | None = None
    actors: Actors | None = None
    """Set for a class: its pool; None for a function."""


def run_stages(dataset: ray.data.Dataset, stages: list[Stage]) -> ray.data.Dataset:
    """`dataset` with the stages applied in order, lazily."""
    for stage in stages:
        if stage.actors is None:
            how = dict(fn_kwargs=stage.kwargs)
        else:
            pool = stage.actors
            how = dict(fn_constructor_kwargs=stage.kwargs, compute=ray.data.ActorPoolStrategy(
                min_size=pool.min_size, max_size=pool.max_size, max_concurrent_calls_per_actor=pool.concurrency,
                enable_true_multi_threading=pool.concurrency > 1))
        dataset = dataset.map_batches(stage.fn, batch_format="pyarrow", batch_size=stage.batch_size,
                                      num_cpus=stage.num_cpus, num_gpus=stage.num_gpus, **how)
    return dataset


@dataclass(frozen=True)
class Pool:
    """The tasks that share one model, with their settings, the heads fitted for them (by column) and the
    Ray object of the texts a static int8 build calibrates on (engines/calibration.py)."""

    specs: dict[str, TaskSpec]
    settings: PoolSettings
    fitted: dict[str, dict] = field(default_factory=dict)
    calibration: Any = None

    @property
    def split(self) -> bool:
        return self.settings.stages == "split"

    def stages(self, text_column: str, errors_column: str, record_calls: bool, later: list[Pool]) -> list[Stage]:
        """The pool fused (one actor stage) or split (a model-only actor stage, then postprocess tasks that keep
        the segments the `later` split pools read). `record_calls`: each call adds its record (stats.py)."""
        settings = self.settings
        actor = Stage(ModelStage if self.split else Annotator,
                      dict(specs=self.specs, compute=settings.compute, text_column=text_column,
                           errors_column=errors_column, record_calls=record_calls,
                           fitted={} if self.split else self.fitted, calibration=self.calibration),
                      settings.batch_size, settings.num_cpus_per_actor, settings.num_gpus_per_actor or None,
                      Actors(settings.min_actors, settings.max_actors, settings.actor_concurrency))
        if not self.split:
            return [actor]
        return [actor, Stage(postprocess, dict(specs=self.specs, compute=settings.compute, fitted=self.fitted,
                                               later=[(pool.specs, pool.settings.compute) for pool in later if pool.split],
                                               text_column=text_column, errors_column=errors_column),
                             settings.batch_size, settings.stage_cpus)]


def annotation_stages(pools: list[Pool], text_column: str, errors_column: str, record_calls: bool) -> list[Stage]:
    """Every pool's stages in order, after the tokenize stage the split pools share."""
    split = [pool for pool in pools if pool.split]
    stages = [Stage(tokenize, dict(pools=[(pool.specs, pool.settings.compute) for pool in split],
                                   text_column=text_column),
                    split[0].settings.batch_size, split[0].settings.stage_cpus)] if split else []
    for index, pool in enumerate(pools):
        stages += pool.stages(text_column, errors_column, record_calls, pools[index + 1:])
    return stages
