"""Compute that fits the cluster by itself: pools sized from what Ray reports, hand-set keys kept."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiny_models
from helpers import write_config

from nlp_tasks.config import ConfigError, parse_config
from nlp_tasks.driver.commits import COMMITTERS
from nlp_tasks.driver.compute import CPU_RESERVE, Cluster, check_reservations, group_by_model, resolve_pools
from nlp_tasks.driver.plan import rows_per_write
from nlp_tasks.workers.read import Fragment

MB = 2**20


def job(tasks: dict, compute: dict | None = None):
    return parse_config({"input": {"path": "in"}, "output": {"path": "out"}, "tasks": tasks,
                         **({"compute": compute} if compute is not None else {})})


def plans_for(config, cluster: Cluster, weights: list[int]):
    return resolve_pools(config, group_by_model(config.tasks), cluster, weights)


THREE_MODELS = {
    "sentiment": {"task": "sentiment-analysis", "model": "a"},
    "entities": {"task": "ner", "model": "b"},
    "embedding": {"task": "feature-extraction", "model": "c"},
}


@pytest.mark.slow
def test_pools_fit_clusters_of_several_shapes(own_ray):
    """A real multi-node Ray cluster, CPU-only first, then with (declared, not used) GPU nodes."""
    import ray
    from ray.cluster_utils import Cluster as RayCluster

    cluster = RayCluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=4)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        cpu_only = Cluster.now(fixed_size=True)
        assert (cpu_only.cpus, cpu_only.gpus, cpu_only.nodes, cpu_only.node_cpus) == (8, 0, 3, 4)
        [one] = plans_for(job({"embedding": THREE_MODELS["embedding"]}), cpu_only, [90 * MB])
        assert (one.device, one.dtype, one.min_actors, one.max_actors, one.torch_threads) == ("cpu", "float32", 8, 8, 1)
        three = plans_for(job(THREE_MODELS), cpu_only, [90 * MB] * 3)
        assert [p.max_actors for p in three] == [2, 2, 2]
        assert sum(p.max_actors * p.num_cpus_per_actor for p in three) <= 8 - 3 * CPU_RESERVE + 1e-9
        huge = plans_for(job({"embedding": THREE_MODELS["embedding"]}), cpu_only, [int(cpu_only.memory / 4)])
        # one copy fits in memory: one actor, as wide as a node (of 4 CPUs, less reading and writing) and no wider
        assert (huge[0].max_actors, huge[0].torch_threads, huge[0].num_cpus_per_actor) == (1, 4, 4 - CPU_RESERVE)

        for _ in range(2):
            cluster.add_node(num_cpus=8, num_gpus=1)
        cluster.wait_for_nodes()
        with_gpus = Cluster.now(fixed_size=False)
        assert (with_gpus.cpus, with_gpus.gpus) == (24, 2)
        small, large = plans_for(job({"embedding": THREE_MODELS["embedding"],
                                      "summary": {"task": "summarization", "model": "d"}}),
                                 with_gpus, [90 * MB, 1600 * MB])
        assert (small.device, small.dtype, small.num_gpus_per_actor, small.max_actors) == ("cuda", "bfloat16", 0.25, 8)
        assert (large.num_gpus_per_actor, large.max_actors, large.min_actors) == (0.5, 4, 1)
        assert small.token_budget is None and small.actor_concurrency > 1
        # GPU pools split: their actors only run the model, a CPU per task tokenizes and postprocesses
        assert (small.stages, large.stages, small.num_cpus_per_actor, small.stage_cpus) == ("split", "split", 0.5, 1.0)
        pinned = plans_for(job({"embedding": {**THREE_MODELS["embedding"], "compute": {"device": "cpu"}}}),
                           with_gpus, [90 * MB])
        assert (pinned[0].device, pinned[0].num_gpus_per_actor) == ("cpu", 0)
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_split_stages_on_gpus_by_default_and_on_cpus_by_hand_with_room_for_their_tasks():
    two_cores = Cluster(cpus=2, gpus=0, memory=24 * 2**30, nodes=1, fixed_size=True)
    [fused] = plans_for(job({"embedding": THREE_MODELS["embedding"]}), two_cores, [90 * MB])
    assert fused.stages == "fused"
    split = plans_for(job(THREE_MODELS, {"stages": "split"}), two_cores, [90 * MB] * 3)
    assert {settings.stages for settings in split} == {"split"} and {settings.stage_cpus for settings in split} == {0.25}
    actors = sum(settings.max_actors * settings.num_cpus_per_actor for settings in split)
    assert actors + CPU_RESERVE + 2 * split[0].stage_cpus <= 2 + 1e-9  # read, write, tokenize, postprocess fit
    gpu_node = Cluster(cpus=16, gpus=1, memory=128 * 2**30, nodes=1, fixed_size=True)
    labels = {"task": "embedding-classification", "model": "c", "candidate_labels": ["a", "b"]}
    on_gpu = plans_for(job({"topic": labels, "sentiment": THREE_MODELS["sentiment"]}), gpu_node, [90 * MB] * 2)
    # candidate labels are scored against embeddings the weights make at load: that pool stays fused
    assert [(settings.tasks, settings.stages) for settings in on_gpu] == [(("topic",), "fused"), (("sentiment",), "split")]
    assert on_gpu[1].stage_cpus == 1.0 and "CPU tasks of 1 CPU" in on_gpu[1].describe()


def test_auto_sized_pools_fit_every_cluster_shape_and_split_stages_that_cannot_say_so():
    """Sized by hand, pools may not fit (the refusal names the keys); sized automatically, they must, whatever the
    node count, cores per node, GPUs, memory, model size and number of models, one of them kept on CPU or not: 7.5
    free CPUs shared by 8 actors must not round to 8 x 0.938, a pool kept on CPU shares the cores the GPU actors
    leave, GPU shares pack onto whole GPUs, and no actor is wider than a node. The one exception is split stages on
    a one-core node, and the refusal says to fuse them."""
    for nodes, cores, gpus, memory, weights, pools, stages, on_cpu in itertools.product(
            (1, 2, 3), (1, 2, 3, 4, 6, 7, 8, 12, 16, 24, 48, 96), (0, 1, 4), (2e9, 64e9), (90 * MB, 1024 * MB, 5 * 2**30),
            (1, 2, 3), ("auto", "fused", "split"), (False, True)):
        if (gpus and cores < 4) or (stages == "split" and cores == 1 and nodes > 1) or (on_cpu and not gpus):
            continue  # GPU nodes have cores; the check adds a cluster's CPUs up, so one-core nodes split it
            # unevenly; a pool kept on CPU means something only beside GPU pools
        cluster = Cluster(cpus=cores * nodes, gpus=gpus * nodes, memory=memory * nodes, nodes=nodes, fixed_size=True)
        tasks = dict(list(THREE_MODELS.items())[:pools])
        if on_cpu:
            tasks["embedding"] = {**THREE_MODELS["embedding"], "compute": {"device": "cpu"}}
        plans = plans_for(job(tasks, {"stages": stages}), cluster, [weights] * len(tasks))
        for plan in plans:  # an actor runs on one node: a wider one would wait for a node that does not exist
            assert plan.num_cpus_per_actor <= cores and plan.torch_threads <= cores, (nodes, cores, plan)
        free = [1.0] * (gpus * nodes)  # each GPU pool's first actor on a GPU with room for its share
        for share in sorted((plan.num_gpus_per_actor for plan in plans if plan.device == "cuda"), reverse=True):
            room = next(index for index, left in enumerate(free) if left >= share - 1e-9)
            free[room] -= share
        if stages == "split" and cores == 1:
            with pytest.raises(ConfigError, match=r"\(0 after reading, writing and split stages\).*set stages: fused"):
                check_reservations(plans, cluster)
        else:
            check_reservations(plans, cluster)
    one_core = Cluster(cpus=1, gpus=0, memory=24 * 2**30, nodes=1, fixed_size=True)
    with pytest.raises(ConfigError, match="lower min_actors or num_cpus_per_actor"):
        check_reservations(plans_for(job(THREE_MODELS, {"min_actors": 2}), one_core, [90 * MB] * 3), one_core)


def test_a_small_run_is_cut_into_batches_enough_for_every_actor():
    """The first actor up takes two batches at once: 200 rows in 64-row batches would all go to it."""
    four_cores = Cluster(cpus=4, gpus=0, memory=24 * 2**30, nodes=1, fixed_size=True)
    config = job({"embedding": THREE_MODELS["embedding"]})
    groups = group_by_model(config.tasks)
    [large] = resolve_pools(config, groups, four_cores, [90 * MB], rows=100_000)
    [small] = resolve_pools(config, groups, four_cores, [90 * MB], rows=200)
    [one_row] = resolve_pools(config, groups, four_cores, [90 * MB], rows=1)
    assert (large.max_actors, large.batch_size) == (4, 64)
    assert (small.max_actors, small.batch_size) == (4, 13)  # 16 batches: at least 4 per actor
    assert one_row.batch_size == 1
    by_hand = job({"embedding": THREE_MODELS["embedding"]}, {"batch_size": 64})
    assert resolve_pools(by_hand, group_by_model(by_hand.tasks), four_cores, [90 * MB], rows=200)[0].batch_size == 64


def test_a_processor_runs_as_many_actors_as_the_job_and_leaves_its_user_a_cpu_unreserved():
    """build_processor's pools (Cluster.kept_free) keep the job's actors and threads; only what they reserve is
    less, so that the user's own read and write tasks (a CPU each) are never kept waiting."""
    config = job({"embedding": THREE_MODELS["embedding"]})
    for cores in (2, 16):
        node = Cluster(cpus=cores, gpus=0, memory=64 * 2**30, nodes=1, fixed_size=False)
        [the_job] = plans_for(config, node, [90 * MB])
        [processor] = plans_for(config, replace(node, kept_free=1.0), [90 * MB])
        assert (processor.max_actors, processor.torch_threads) == (the_job.max_actors, the_job.torch_threads) \
            == (cores, 1)
        assert processor.max_actors * processor.num_cpus_per_actor <= cores - 1.0 - CPU_RESERVE + 1e-9
        assert processor.num_cpus_per_actor < the_job.num_cpus_per_actor


def test_keys_set_by_hand_win_job_wide_and_per_task():
    config = job({**THREE_MODELS, "entities": {**THREE_MODELS["entities"], "compute": {"batch_size": 7}}},
                 {"num_cpus_per_actor": 0.25, "max_actors": 3})
    sentiment, entities, embedding = plans_for(config, Cluster(2, 0, 24 * 2**30, 1, True), [MB] * 3)
    assert [p.num_cpus_per_actor for p in (sentiment, entities, embedding)] == [0.25] * 3
    assert [p.max_actors for p in (sentiment, entities, embedding)] == [3] * 3
    assert (entities.batch_size, sentiment.batch_size) == (7, 64)


def test_tasks_sharing_a_pool_must_agree_on_its_compute():
    embedding = {"task": "feature-extraction", "model": "m"}
    topic = {"task": "embedding-classification", "model": "m", "candidate_labels": ["a"]}
    parse_config({"input": {"path": "i"}, "output": {"path": "o"},
                  "tasks": {"embedding": {**embedding, "compute": {"batch_size": 8}}, "topic": topic}})
    with pytest.raises(ConfigError, match="tasks.embedding.compute and tasks.topic.compute differ"):
        parse_config({"input": {"path": "i"}, "output": {"path": "o"}, "tasks": {
            "embedding": {**embedding, "compute": {"batch_size": 8}},
            "topic": {**topic, "compute": {"batch_size": 16}}}})


@pytest.mark.slow
def test_three_models_run_on_two_cpus_without_a_compute_section(ray_local, tmp_path, models):
    from jobs.annotate import main

    texts = tiny_models.sample_texts() * 4
    pq.write_table(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts}), tmp_path / "in.parquet")
    config = write_config(tmp_path, tmp_path / "in.parquet", {
        "sentiment": {"task": "sentiment-analysis", "model": str(models["text-classification"])},
        "entities": {"task": "ner", "model": str(models["token-classification"])},
        "embedding": {"task": "feature-extraction", "model": str(models["token-classification"])},
        "topic": {"task": "embedding-classification", "model": str(models["token-classification"]),
                  "candidate_labels": ["people", "places"]},
        "filled": {"task": "fill-mask", "model": str(models["fill-mask"])},
    }, compute=None)
    assert main(["--config", config]) == 0
    report = json.loads(next((tmp_path / "out" / "__reports").glob("*.json")).read_text())
    pools = report["compute"]
    assert len(pools) == 4 and {p["device"] for p in pools} == {"cpu"}
    assert sum(p["max_actors"] * p["num_cpus_per_actor"] for p in pools) <= 2
    # embedding and topic share one forward pass, and each is charged it: the same tokens, and actor time for both
    # (their seconds are milliseconds here, too few to compare without a machine's hiccups deciding)
    speeds = report["throughput"]
    assert speeds["embedding"]["tokens"] == speeds["topic"]["tokens"] > 0
    assert speeds["embedding"]["actor_seconds"] > 0 and speeds["topic"]["actor_seconds"] > 0


def test_ctranslate2_pools_take_a_node_each_and_their_workers_take_its_cores():
    tasks = {"summary": {"task": "summarization", "model": "s", "engine": "ctranslate2"},
             "sentiment": {"task": "sentiment-analysis", "model": "a"}}
    summary, sentiment = plans_for(job(tasks), Cluster(cpus=16, gpus=0, memory=64e9, nodes=2, fixed_size=True),
                                   [500 * MB, 100 * MB])
    assert (summary.engine, summary.max_actors, summary.inter_threads, summary.actor_concurrency) == (
        "ctranslate2", 2, 4, 2)
    assert summary.max_actors * summary.num_cpus_per_actor <= (16 - 2 * CPU_RESERVE) / 2
    assert (sentiment.engine, sentiment.max_actors, sentiment.inter_threads) == ("transformers", 8, 1)
    assert "CTranslate2 with 4 one-thread worker(s)" in summary.describe()
    [hand] = plans_for(job({"summary": tasks["summary"]}, {"num_cpus_per_actor": 1, "max_actors": 3}),
                       Cluster(cpus=16, gpus=0, memory=64e9, nodes=2, fixed_size=True), [500 * MB])
    assert (hand.max_actors, hand.inter_threads) == (3, 1)
    [gpu] = plans_for(job({"summary": tasks["summary"]}), Cluster(cpus=16, gpus=2, memory=64e9, nodes=2,
                                                                   fixed_size=True), [500 * MB])
    assert (gpu.device, gpu.dtype, gpu.inter_threads) == ("cuda", "float16", 1)


def test_a_small_run_on_ctranslate2_gets_one_call_per_worker():
    tasks = {"summary": {"task": "summarization", "model": "s", "engine": "ctranslate2"}}
    [settings] = resolve_pools(job(tasks), group_by_model(job(tasks).tasks),
                        Cluster(cpus=2, gpus=0, memory=24e9, nodes=1, fixed_size=True), [500 * MB], 48)
    assert (settings.max_actors, settings.inter_threads, settings.batch_size) == (1, 2, 24)


def test_a_run_of_many_small_files_writes_and_commits_them_as_it_goes():
    """The write stage gathers at most the rows of as many input files as the driver commits at once: a thousand
    files of three rows are written (and so committed) in groups of 64, not in halves of the run; big files keep
    their writes."""
    config = job({"embedding": THREE_MODELS["embedding"]})
    [one_actor] = plans_for(config, Cluster(cpus=1, gpus=0, memory=24 * 2**30, nodes=1, fixed_size=True), [MB])
    [two_actors] = plans_for(config, Cluster(cpus=2, gpus=0, memory=24 * 2**30, nodes=1, fixed_size=True), [MB])
    small = [Fragment(f"{index:016x}", f"in/{index}", f"in/{index}", None, 0, 3) for index in range(1000)]
    assert rows_per_write(100_000, small, [({}, one_actor)]) == COMMITTERS * 3
    big = [Fragment(f"{index:016x}", f"in/{index}", f"in/{index}", None, 0, 500) for index in range(4)]
    assert rows_per_write(100_000, big, [({}, two_actors)]) == 500
    assert rows_per_write(100, big, [({}, two_actors)]) == 100
