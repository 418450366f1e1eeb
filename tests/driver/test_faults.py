"""Faults mid-run: a killed inference actor, a lost node. The job completes with every row exactly once."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from helpers import FILES, corpus_and_config, run_job

pytestmark = pytest.mark.slow  # jobs killed mid-run, a cluster of three nodes

MARKERS = "????????????????.json"


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (the job's own Ray processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_for_first_commit(out: Path, alive) -> None:
    deadline = time.monotonic() + 240
    while not list((out / "__manifest" / "units").glob(MARKERS)):
        assert alive(), "the job ended before committing anything"
        assert time.monotonic() < deadline, "no file was committed in time"
        time.sleep(0.05)


def assert_exactly_once(out: Path, ids: list[str]) -> None:
    table = pads.dataset(out, format="parquet").to_table(columns=["id", "embedding"])
    assert sorted(table.column("id").to_pylist()) == sorted(ids)
    assert table.column("embedding").null_count == 0


def test_killed_inference_actor_is_replaced(tmp_path, minilm):
    config, ids = corpus_and_config(tmp_path, minilm, {"batch_size": 5})
    job = run_job(config)
    wait_for_first_commit(tmp_path / "out", lambda: job.poll() is None)
    actors = [pid for pid in descendants(job.pid) if command_line(pid).startswith("ray::MapWorker")]
    assert actors, "no inference actor found to kill"
    for pid in actors:
        os.kill(pid, signal.SIGKILL)
    committed_at_kill = len(list((tmp_path / "out" / "__manifest" / "units").glob(MARKERS)))
    output = job.communicate(timeout=300)[0].decode()
    assert job.returncode == 0, output[-3000:]
    assert committed_at_kill < FILES, "the kill should land before the last commit"
    assert_exactly_once(tmp_path / "out", ids)


def test_lost_worker_node(own_ray, tmp_path, minilm):
    import ray
    from ray.cluster_utils import Cluster

    from jobs.annotate import main

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        config, ids = corpus_and_config(tmp_path, minilm, {
            "batch_size": 5, "min_actors": 1, "max_actors": 2, "num_cpus_per_actor": 2,
        })
        exit_code = []
        driver = threading.Thread(target=lambda: exit_code.append(main(["--config", str(config)])))
        driver.start()
        wait_for_first_commit(tmp_path / "out", driver.is_alive)
        victim = next(w for w in workers if any(command_line(p).startswith("ray::MapWorker")
                                                for p in descendants(w.all_processes["raylet"][0].process.pid)))
        cluster.remove_node(victim, allow_graceful=False)
        assert len(list((tmp_path / "out" / "__manifest" / "units").glob(MARKERS))) < FILES
        driver.join(timeout=400)
        assert exit_code == [0]
        assert_exactly_once(tmp_path / "out", ids)
    finally:
        ray.shutdown()
        cluster.shutdown()
