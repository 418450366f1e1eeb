"""Hugging Face datasets as input: a `save_to_disk` folder (Arrow stream files), Arrow IPC files, hf:// paths."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as pads
import pytest
import tiny_models
from helpers import last_report, sentiment, write_config

from jobs.annotate import main


def run(tmp_path, input_path, models) -> dict:
    config = write_config(tmp_path, input_path, sentiment(models), input={"id_column": None},
                          compute={"batch_size": 16})
    assert main(["--config", config]) == 0
    return last_report(tmp_path / "out")


@pytest.mark.slow
def test_a_dataset_saved_to_disk_is_annotated_with_stable_ids_and_resumes(ray_local, tmp_path, models):
    import datasets

    texts = tiny_models.sample_texts() * 40
    dataset = datasets.Dataset.from_dict({"text": texts, "n": list(range(len(texts)))})
    dataset.save_to_disk(str(tmp_path / "saved"), num_shards=2)  # two Arrow stream files, record batches in each
    report = run(tmp_path, tmp_path / "saved", models)
    assert report["rows_in"] == report["rows_out"] == len(texts)
    output = pads.dataset(tmp_path / "out", format="parquet").to_table()
    assert sorted(output.column("n").to_pylist()) == list(range(len(texts)))
    assert output.column("sentiment").null_count == 0
    for row_id, n in zip(output.column("row_id").to_pylist(), output.column("n").to_pylist()):
        name, position = row_id.rsplit(":", 1)
        shard = int(name.rsplit("data-", 1)[1][:5])  # data-0000k-of-00002.arrow holds a contiguous half
        assert n == shard * len(texts) // 2 + int(position)
    assert run(tmp_path, tmp_path / "saved", models)["files_processed"] == 0


@pytest.mark.slow
def test_a_dataset_dict_folder_and_arrow_ipc_files(ray_local, tmp_path, models):
    import datasets

    texts = tiny_models.sample_texts()
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": texts}),
        "test": datasets.Dataset.from_dict({"text": texts[:5]}),
    }).save_to_disk(str(tmp_path / "dict"))
    with (pa.OSFile(str(tmp_path / "dict" / "extra.arrow"), "wb") as sink,  # the IPC file format (Feather v2)
          pa.ipc.new_file(sink, pa.schema([("text", pa.large_string())])) as writer):
        writer.write_table(pa.table({"text": pa.array(texts[:3], pa.large_string())}), max_chunksize=2)
    report = run(tmp_path, tmp_path / "dict", models)
    assert report["rows_out"] == len(texts) + 5 + 3


def test_hub_paths_go_through_huggingface_hub_file_system():
    from fsspec.core import url_to_fs

    filesystem, path = url_to_fs("hf://datasets/SetFit/bbc-news")
    assert type(filesystem).__name__ == "HfFileSystem" and path == "datasets/SetFit/bbc-news"


def test_an_unreadable_arrow_file_fails_in_one_line_naming_it(tmp_path, models, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data-00000-of-00001.arrow").write_bytes(b"not arrow at all")
    config = write_config(tmp_path, tmp_path / "in", sentiment(models), input={"id_column": None}, compute=None)
    assert main(["--config", config]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "data-00000-of-00001.arrow': not a readable Arrow file" in lines[0], lines
