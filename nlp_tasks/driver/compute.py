"""Compute that fits the cluster by itself: each actor pool's settings, from what Ray reports when the job starts.

Every key of `compute` left out is sized here; any key set by hand (in `compute`, or in a task's own
`compute`) is kept as it is.

- With GPUs: GPU actors, from one up to as many as the cluster's GPUs hold (small models share a
  GPU: a quarter or half of one each, which also overlaps one actor's Python with another's
  kernels), each with CPUs for its tokenizing, bf16, several batches in flight, and a token budget
  that the actor sizes from the GPU's free memory once its model is loaded.
- CPU only: the cores are split among the pools, as one-thread actors (two one-thread processes
  beat one two-thread process on the same cores for PyTorch, and ran as fast for OpenVINO and ONNX
  Runtime: benchmarks/cpu_engine_threads.py), leaving a reserve for the read and write tasks
  so that a small machine is never refused; fewer, wider actors where memory would not hold a
  model copy per core.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from nlp_tasks.batching import CPU_TOKEN_BUDGET
from nlp_tasks.config import ComputeConfig, ConfigError, JobConfig, TaskSpec
from nlp_tasks.engines.choice import choose_engine
from nlp_tasks.engines.encoders import ENCODER_ENGINES
from nlp_tasks.engines.qualification import precision, recorded
from nlp_tasks.models.loading import weights_bytes
from nlp_tasks.tasks import get_task

log = logging.getLogger(__name__)

READ_CPUS = 0.25
"""CPUs a read task reserves: it mostly waits on storage, and must not hold a CPU an actor needs."""
WRITE_CPUS = 0.25
"""CPUs a write task reserves, likewise."""
CPU_RESERVE = READ_CPUS + WRITE_CPUS
SMALL_STAGE_CPUS = 0.25
"""CPUs a tokenize or postprocess task of split pools reserves where the actors leave less than two CPUs free."""
SPLIT_GPU_ACTOR_CPUS = 0.5
"""CPUs a split pool's GPU actor reserves: it only copies batches and launches kernels; the CPU stages tokenize."""
CTRANSLATE2_CPU_TOKEN_BUDGET = 8192
"""Padded source tokens per micro-batch of a CTranslate2 pool on CPU: 16 rows of 512. Beam search 4 over BBC rows
(BART-base shape, one process, 2 workers) took 16.9 CPU-seconds for 16 rows at 8,192 against 20.7 at 4,096 and
24.6 at 2,048."""
CPU_BATCH_SIZE = 64
GPU_BATCH_SIZE = 512
GPU_ACTOR_CONCURRENCY = 4
BATCHES_PER_ACTOR = 4
"""On a small run the sized batches shrink until a pool's rows make at least this many per actor: the first actor
to load its model takes two batches at once (Ray Data keeps two calls in flight per actor), and would otherwise
take a run of a few batches whole while the others are still loading. A CTranslate2 pool on CPU (an actor per node)
shrinks them only to one per worker: each call is sorted by length and cut into micro-batches that all its workers
take, and smaller calls would only carry more padding."""
GPU_CPUS_PER_ACTOR_MAX = 4.0
MEMORY_PER_WEIGHT_BYTE = 3.0
"""Host memory an actor needs per byte of weights (the weights, their load, activations)."""


@dataclass(frozen=True)
class Cluster:
    """What Ray reports: CPUs, GPUs and memory in all, and whether the cluster can grow."""

    cpus: float
    gpus: float
    memory: float
    nodes: int
    fixed_size: bool
    kept_free: float = 0.0
    """CPUs per node the pools leave to stages the job does not plan (a processor's user's read, map and write)."""
    node_cpus: float | None = None
    """CPUs of the largest node, where Ray said (None: the CPUs spread evenly over the nodes): no actor is wider."""

    @property
    def reserve(self) -> float:
        """CPUs per node the pools' actors leave to the stages around them: the job's reader and writer, and
        `kept_free`."""
        return CPU_RESERVE + self.kept_free

    @classmethod
    def now(cls, fixed_size: bool) -> Cluster:
        import ray

        total = ray.cluster_resources()
        alive = [node for node in ray.nodes() if node.get("Alive")]
        return cls(cpus=total.get("CPU", 0.0), gpus=total.get("GPU", 0.0), memory=total.get("memory", 0.0),
                   nodes=max(1, len(alive)), fixed_size=fixed_size,
                   node_cpus=max((node.get("Resources", {}).get("CPU", 0.0) for node in alive), default=None))


@dataclass(frozen=True)
class PoolSettings:
    """One actor pool's resolved settings (`token_budget` None: the actor sizes it from the GPU)."""

    tasks: tuple[str, ...]
    model: str
    min_actors: int
    max_actors: int
    num_cpus_per_actor: float
    num_gpus_per_actor: float
    torch_threads: int
    batch_size: int
    token_budget: int | None
    actor_concurrency: int
    device: str
    dtype: str
    stages: str = "fused"
    stage_cpus: float = 1.0
    """With split stages: CPUs each task of the tokenize and postprocess stages reserves."""
    engine: str = "transformers"
    inter_threads: int = 1
    """CTranslate2 pools: batches one actor decodes at once, one thread each."""
    calibration: str | None = None
    """CPU engines in int8 with static quantization: what the model was calibrated on (engines/calibration.py)."""
    engine_note: str | None = None
    """Why `engine: auto` left the pool on transformers where a CPU engine could have run it (engines/choice.py)."""
    engine_speed: str | None = None
    """A CPU engine's pool: its pace against transformers float32 as qualification timed it (engines/qualification.py)."""

    @property
    def compute(self) -> ComputeConfig:
        """The settings as the actor takes them."""
        return ComputeConfig(
            min_actors=self.min_actors, max_actors=self.max_actors, num_cpus_per_actor=self.num_cpus_per_actor,
            num_gpus_per_actor=self.num_gpus_per_actor, torch_threads=self.torch_threads,
            batch_size=self.batch_size, token_budget=self.token_budget, actor_concurrency=self.actor_concurrency,
            inter_threads=self.inter_threads, device=self.device, dtype=self.dtype, stages=self.stages)

    def describe(self) -> str:
        actors = f"{self.min_actors}" if self.min_actors == self.max_actors else f"{self.min_actors}-{self.max_actors}"
        gpus = f" + {self.num_gpus_per_actor:g} GPU" if self.num_gpus_per_actor else ""
        budget = self.token_budget or "sized from free GPU memory"
        if self.engine == "ctranslate2":
            threads = f"CTranslate2 with {self.inter_threads} one-thread worker(s)"
        elif self.engine in ENCODER_ENGINES:
            threads = f"{self.engine} with {self.torch_threads} thread(s)" + (
                f" (qualification timed {self.engine_speed})" if self.engine_speed else "")
        else:
            threads = f"{self.torch_threads} torch thread(s)" + (
                f" (transformers: {self.engine_note})" if self.engine_note else "")
        return (f"pool {'+'.join(self.tasks)} ({self.model}): {actors} actor(s) of {self.num_cpus_per_actor:g} CPU"
                f"{gpus}, {threads}, {self.device} {self.dtype}, batch {self.batch_size}, "
                f"token budget {budget}, {self.actor_concurrency} batch(es) in flight"
                + (f", calibrated on {self.calibration}" if self.calibration else "")
                + (f", tokenizing and postprocessing in CPU tasks of {self.stage_cpus:g} CPU"
                   if self.stages == "split" else ""))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tasks": list(self.tasks)}



def group_by_model(tasks: dict[str, TaskSpec]) -> list[dict[str, TaskSpec]]:
    """Tasks that load the same checkpoint the same way share one actor pool and one model copy."""
    groups: dict[tuple, dict[str, TaskSpec]] = {}
    for column, spec in tasks.items():
        groups.setdefault(spec.pool_key, {})[column] = spec
    return list(groups.values())

def gpu_share(weights: int) -> float:
    """GPUs per actor: small models share a GPU (more actors feed it while one runs Python)."""
    if weights and weights < 500 * 2**20:
        return 0.25
    if weights and weights < 2 * 2**30:
        return 0.5
    return 1.0


def resolve_pools(config: JobConfig, groups: list[dict[str, TaskSpec]], cluster: Cluster,
                  weights: list[int], rows: int | None = None) -> list[PoolSettings]:
    """Each pool's settings: the hand-set ones, and the rest sized from the cluster and the run's `rows`."""
    hand = [config.pool_compute(specs) for specs in groups]
    on_gpu = [c.device == "cuda" or (c.device == "auto" and cluster.gpus > 0 and c.num_gpus_per_actor != 0)
              for c in hand]
    split = [(c.stages == "split" or (c.stages == "auto" and gpu)) and all(
        get_task(spec.task).splits(spec.options) for spec in specs.values())
        for specs, c, gpu in zip(groups, hand, on_gpu)]
    cpu_pools, gpu_pools = sum(1 for gpu in on_gpu if not gpu), sum(1 for gpu in on_gpu if gpu)
    resolved: dict[int, PoolSettings] = {}
    taken = 0.0  # the CPUs the GPU pools' first actors hold: planned first, the CPU pools share what they leave
    for index in sorted(range(len(groups)), key=lambda index: not on_gpu[index]):
        specs, compute, gpu, size, pool_split = groups[index], hand[index], on_gpu[index], weights[index], split[index]
        first = next(iter(specs.values()))
        engine = _pool_engine(config, specs, gpu, compute.dtype)
        chosen = compute.model_dump(exclude_none=True, exclude={"device", "dtype", "stages"})
        auto = (_gpu_defaults(cluster, gpu_pools, cpu_pools, size, pool_split) if gpu else
                _cpu_defaults(cluster, cpu_pools, size, chosen.get("max_actors"), any(split), taken))
        if first.engine == "ctranslate2":
            auto = _ctranslate2_defaults(auto, cluster, gpu, chosen.get("max_actors"))
        merged = {**auto, **chosen}
        threads = "inter_threads" if first.engine == "ctranslate2" and not gpu else "torch_threads"
        if ("num_cpus_per_actor" in chosen and threads not in chosen) or threads not in merged:
            merged[threads] = max(1, math.floor(merged["num_cpus_per_actor"]))
        merged["max_actors"] = max(merged["max_actors"], merged["min_actors"])
        if rows is not None and "batch_size" not in chosen:
            calls = merged["max_actors"] * (merged["inter_threads"] if first.engine == "ctranslate2" and not gpu
                                            else BATCHES_PER_ACTOR)
            merged["batch_size"] = max(1, min(merged["batch_size"], -(-rows // calls)))
        if gpu:
            taken += merged["min_actors"] * merged["num_cpus_per_actor"]
        resolved[index] = PoolSettings(
            tasks=tuple(specs), model=first.model, device="cuda" if gpu else "cpu",
            dtype=compute.dtype if compute.dtype != "auto" else (
                ("float16" if first.engine == "ctranslate2" else "bfloat16") if gpu else "float32"),
            stages="split" if pool_split else "fused",
            engine=engine,
            **{key: merged[key] for key in ("min_actors", "max_actors", "num_cpus_per_actor",
                                            "num_gpus_per_actor", "torch_threads", "batch_size",
                                            "token_budget", "actor_concurrency", "inter_threads")})
    return with_stage_cpus([resolved[index] for index in range(len(groups))], cluster)


def _pool_engine(config: JobConfig, specs: dict[str, TaskSpec], gpu: bool, dtype: str) -> str:
    """The engine the pool runs: its tasks' (engines/choice.py), except that a CPU engine `auto` took for an encoder
    task gives way to transformers on a GPU pool (choice.py sees the device only where it is set by hand)."""
    engine = next(iter(specs.values())).engine
    if not gpu or engine not in ENCODER_ENGINES:
        return engine if engine != "auto" else "transformers"
    named = [column for column in specs if column in config.tasks and config.tasks[column].engine == engine]
    if named or dtype == "int8":
        raise ConfigError(f"tasks.{(named or list(specs))[0]}: engine {engine} (dtype {dtype}) runs on CPU only, "
                          "and this pool runs on GPUs; set compute.device: cpu")
    return "transformers"


def with_stage_cpus(resolved: list[PoolSettings], cluster: Cluster) -> list[PoolSettings]:
    """The split pools' CPU stages get a CPU per task where the actors (as the pools start) leave two per node
    free, so that the tokenizers use the cores; else a quarter, so that they are never refused."""
    actors = sum(settings.min_actors * settings.num_cpus_per_actor for settings in resolved)
    free = cluster.cpus - actors - cluster.nodes * cluster.reserve
    stage_cpus = 1.0 if free >= 2 * cluster.nodes else SMALL_STAGE_CPUS
    return [replace(settings, stage_cpus=stage_cpus) for settings in resolved]


def share_down(amount: float) -> float:
    """A CPU or GPU share per actor, rounded down to 1/1000 (never to 0): rounded up, the actors' shares add up to
    more than the cluster has, and the run is refused or an actor never placed."""
    return max(0.001, math.floor(amount * 1000) / 1000)


def _gpu_defaults(cluster: Cluster, pools: int, cpu_pools: int, weights: int, split: bool) -> dict[str, Any]:
    """GPU actors, the first of each of the `pools` GPU pools fitting the GPUs together (a share is a whole
    fraction of one GPU, so that they pack) and the cores beside the `cpu_pools` kept on CPU; with split stages they
    reserve little CPU, the CPU stages get the rest."""
    share = gpu_share(weights)
    if cluster.gpus:
        share = min(share, share_down(1 / math.ceil(pools / max(1, math.floor(cluster.gpus)))))
    actors = max(1, math.floor(cluster.gpus / share)) if cluster.gpus else 1
    usable = cluster.cpus - cluster.nodes * cluster.reserve
    cpus = min(GPU_CPUS_PER_ACTOR_MAX, max(1.0, usable / max(cluster.gpus, 1.0)) * share, usable / (pools + cpu_pools))
    return {
        "min_actors": 1, "max_actors": actors, "num_gpus_per_actor": share,
        "num_cpus_per_actor": SPLIT_GPU_ACTOR_CPUS if split else max(0.5, share_down(cpus)),
        "batch_size": GPU_BATCH_SIZE, "token_budget": None, "actor_concurrency": GPU_ACTOR_CONCURRENCY,
        "inter_threads": 1,
    }


def _cpu_defaults(cluster: Cluster, pools: int, weights: int, actors: int | None, split: bool,
                  taken: float = 0.0) -> dict[str, Any]:
    """A pool's share of the cores, as one-thread actors (fewer, wider ones where memory is short, none wider
    than a node); `actors`: the pool size, when set by hand; `split`: some pool has split stages, whose two CPU
    stages need room too; `taken`: CPUs the GPU pools' actors hold."""
    reserve = cluster.reserve + (2 * SMALL_STAGE_CPUS if split else 0)
    usable = max(0.5, cluster.cpus - cluster.nodes * reserve - taken)
    node_cores = cluster.node_cpus or cluster.cpus / cluster.nodes
    cores = max(1, math.floor((cluster.cpus - taken) / max(pools, 1)))
    if actors is None:
        actors = cores
        if weights and cluster.memory:
            fits = max(1, math.floor(cluster.memory / max(pools, 1) / (weights * MEMORY_PER_WEIGHT_BYTE)))
            actors = min(actors, fits)
    fixed = actors if cluster.fixed_size else 1
    width = min(usable / max(pools, 1) / actors, max(0.5, node_cores - reserve))  # an actor runs on one node
    return {
        "min_actors": fixed, "max_actors": actors, "num_gpus_per_actor": 0,
        "num_cpus_per_actor": share_down(width),
        "torch_threads": max(1, min(cores // actors, math.floor(node_cores))),
        "batch_size": CPU_BATCH_SIZE, "token_budget": CPU_TOKEN_BUDGET, "actor_concurrency": 1,
        "inter_threads": 1,
    }


def _ctranslate2_defaults(auto: dict[str, Any], cluster: Cluster, gpu: bool, actors: int | None) -> dict[str, Any]:
    """CTranslate2 pools: on CPU one actor per node, whose workers take the pool's cores (one model copy per node,
    and CTranslate2's docs advise more workers rather than more threads per batch); two batches in flight, so that
    one batch's last micro-batch never leaves a worker idle. On a GPU one worker per actor, batches queued."""
    if gpu:
        return {**auto, "inter_threads": 1}
    cores = auto["max_actors"] * auto["torch_threads"]
    actors = actors or min(auto["max_actors"], cluster.nodes)
    return {**auto, "min_actors": min(auto["min_actors"], actors), "max_actors": actors,
            "num_cpus_per_actor": share_down(auto["num_cpus_per_actor"] * auto["max_actors"] / actors),
            "torch_threads": 1, "inter_threads": max(1, cores // actors), "actor_concurrency": 2,
            "token_budget": CTRANSLATE2_CPU_TOKEN_BUDGET}


def size_pools(config: JobConfig, groups: list[dict[str, TaskSpec]], cluster: Cluster,
               rows: int | None) -> list[tuple[dict, PoolSettings]]:
    """Each pool's tasks and settings for a run of `rows` (None: not known, as for a Dataset handed to
    build_processor), logged, and checked against the cluster."""
    weights = [weights_bytes(spec.model, spec.revision) for spec in (next(iter(g.values())) for g in groups)]
    resolved = [replace(settings, engine_note=engine_note(config, specs, settings),
                        engine_speed=engine_speed(specs, settings))
                for specs, settings in zip(groups, resolve_pools(config, groups, cluster, weights, rows))]
    for settings in resolved:
        log.info("compute: %s", settings.describe())
    check_reservations(resolved, cluster)
    # A CPU engine `auto` took gives way to transformers on a GPU pool (resolve_pools): the actors load the pool's engine.
    groups = [{column: spec.model_copy(update={"engine": settings.engine}) for column, spec in specs.items()}
              for specs, settings in zip(groups, resolved)]
    return list(zip(groups, resolved))


def engine_note(config: JobConfig, specs: dict[str, TaskSpec], settings: PoolSettings) -> str | None:
    """Why `engine: auto` left a CPU pool of encoder tasks on transformers (no CPU engine installed, a model type
    the exporter does not take), for the pool's log line."""
    if settings.engine != "transformers" or settings.device != "cpu":
        return None
    column = next(iter(specs))
    return choose_engine(column, config.tasks[column], settings.dtype, "cpu")[1] if config.tasks[column].engine == "auto" \
        else None


def engine_speed(specs: dict[str, TaskSpec], settings: PoolSettings) -> str | None:
    """A CPU engine's pace against transformers float32, as its qualification on this node timed it, for the plan
    line; None for other pools, or a verdict kept without one."""
    if settings.engine not in ENCODER_ENGINES:
        return None
    verdict = recorded(next(iter(specs.values())), settings.engine, settings.dtype, "cpu")
    if verdict is None or verdict.pace is None:
        return None
    return verdict.pace.describe(settings.engine, precision(settings.engine, settings.dtype, "cpu"))


def check_reservations(pools: list[PoolSettings], cluster: Cluster) -> None:
    """The pools' smallest sizes must fit the cluster and leave room for reading and writing, or the job
    waits forever. Auto-sized pools always fit; hand-set ones may not. On a fixed-size cluster (the embedded
    local Ray) that is an error; a cluster that can autoscale may still grow, so there it is a warning. A processor's
    `kept_free` is not counted: a user's task that finds those CPUs held by a stage task waits for it to end.
    """
    reserved = sum(settings.min_actors * settings.num_cpus_per_actor for settings in pools)
    gpus = sum(settings.min_actors * settings.num_gpus_per_actor for settings in pools)
    stage_tasks = max((2 * settings.stage_cpus for settings in pools if settings.stages == "split"), default=0.0)
    room = cluster.cpus - cluster.nodes * CPU_RESERVE - stage_tasks
    if reserved > room + 1e-9 or gpus > cluster.gpus:
        stages_alone = stage_tasks and reserved <= room + stage_tasks + 1e-9 and gpus <= cluster.gpus
        message = (f"compute: the actor pools' min_actors reserve {reserved:g} CPUs and {gpus:g} GPUs; the cluster "
                   f"has {cluster.cpus:g} CPUs ({room:g} after reading, writing"
                   f"{' and split stages' if stage_tasks else ''}) and {cluster.gpus:g} GPUs: "
                   + ("set stages: fused, whose actors tokenize and postprocess themselves" if stages_alone else
                      "lower min_actors or num_cpus_per_actor, or leave them out to size them automatically"))
        if cluster.fixed_size:
            raise ConfigError(message)
        log.warning(message)
