"""On a real multi-node Ray cluster the workers read and write the rows; the driver only commits small records."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import tiny_models
from helpers import sentiment, write_config

pytestmark = pytest.mark.slow  # a cluster of three nodes

FILES = 6


def test_parts_are_written_by_workers_on_other_nodes(own_ray, tmp_path, models, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    from jobs.annotate import main

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        head = ray.get_runtime_context().get_node_id()
        worker_nodes = {node["NodeID"][:12] for node in ray.nodes() if node["NodeID"] != head}
        assert len(worker_nodes) == len(workers)
        folder = tmp_path / "corpus"
        folder.mkdir()
        texts = tiny_models.sample_texts() * 3
        for index in range(FILES):
            pq.write_table(pa.table({"text": texts}), folder / f"part-{index}.parquet")
        config = write_config(tmp_path, folder, sentiment(models), input={"id_column": None},
                              output={"rows_per_file": 16},
                              compute={"num_cpus_per_actor": 0.5, "min_actors": 2, "max_actors": 2})
        assert main(["--config", config]) == 0
    finally:
        ray.shutdown()
        cluster.shutdown()

    table = pads.dataset(tmp_path / "out", format="parquet").to_table()
    expected = sorted(f"{folder}/part-{index}.parquet:{row}" for index in range(FILES) for row in range(len(texts)))
    assert sorted(table.column("row_id").to_pylist()) == expected
    report = json.loads(next((tmp_path / "out" / "__reports").glob("*.json")).read_text())
    writers = report["rows_by_writer"]
    assert sum(writers.values()) == FILES * len(texts)
    for writer in writers:
        _, node, pid = writer.split("/")
        assert node.removeprefix("node ") in worker_nodes and pid != f"pid {os.getpid()}", writer
