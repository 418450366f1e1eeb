"""Object storage for real: a moto S3 server on loopback, reached through s3fs like any bucket."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import cli, moto_server, sentiment, write_config


def ray_with_s3() -> None:
    """A local Ray whose workers reach the moto endpoint with the test's credentials."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {
        key: os.environ[key] for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                         "AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL")}})


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """A standalone moto server process with bucket `corpus`; credentials and endpoint set for every client in
    this process."""
    with moto_server("corpus") as settings:
        previous = {key: os.environ.get(key) for key in settings}
        os.environ.update(settings)
        yield settings["AWS_ENDPOINT_URL"]
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_model_from_s3_is_copied_once_per_node(s3_endpoint, models, tmp_path, monkeypatch):
    import s3fs

    from nlp_tasks.models.loading import check_available, local_copy_dir, resolve_model

    monkeypatch.setenv("NLP_TASKS_MODEL_CACHE", str(tmp_path / "cache"))
    fs = s3fs.S3FileSystem()
    fs.put(str(models["text-classification"]) + "/", "corpus/models/sentiment/", recursive=True)
    ref = "s3://corpus/models/sentiment"
    assert check_available(ref) == ref
    local = resolve_model(ref)
    assert local == str(local_copy_dir(ref))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()) == [local_copy_dir(ref).name]
    marker = tmp_path / "cache" / local_copy_dir(ref).name / "config.json"
    stamp = marker.stat().st_mtime_ns
    assert resolve_model(ref) == local and marker.stat().st_mtime_ns == stamp  # second actor: no second copy

    from transformers import pipeline

    assert pipeline("text-classification", model=local)("Paris is big.")[0]["label"] in {"negative", "neutral", "positive"}


def test_missing_model_on_s3_is_unavailable(s3_endpoint):
    from nlp_tasks.models.loading import ModelUnavailable, check_available

    with pytest.raises(ModelUnavailable, match="no config.json"):
        check_available("s3://corpus/models/none")


@pytest.mark.slow
def test_job_reads_and_writes_s3(own_ray, s3_endpoint, models, tmp_path):
    import ray
    import s3fs

    from jobs.annotate import main

    fs = s3fs.S3FileSystem()
    texts = ["Alice Johnson moved to Paris.", None, "Bob Smith works for Globex in London."]
    for part in range(2):
        with fs.open(f"corpus/in/part-{part}.parquet", "wb") as handle:
            pq.write_table(pa.table({"id": [f"{part}-{i}" for i in range(3)], "text": texts}), handle)
    config = write_config(tmp_path, "s3://corpus/in/", sentiment(models), output={"path": "s3://corpus/out/"},
                          compute={"num_cpus_per_actor": 0.5, "batch_size": 4})
    ray_with_s3()
    try:
        assert main(["--config", str(config)]) == 0
    finally:
        ray.shutdown()
    fs.invalidate_cache()
    files = [p for p in fs.find("corpus/out/") if p.endswith(".parquet")]
    table = pa.concat_tables([pq.read_table(fs.open(p, "rb")) for p in files])
    assert sorted(table.column("id").to_pylist()) == sorted(f"{p}-{i}" for p in range(2) for i in range(3))
    assert table.column("sentiment").null_count == 2


def test_exclusive_create_on_s3_lets_one_writer_in(s3_endpoint):
    """The lease's primitive on object storage: a conditional PUT (If-None-Match: *) creates a key once."""
    import s3fs

    from nlp_tasks.output.storage import create_exclusive

    fs = s3fs.S3FileSystem()
    assert create_exclusive(fs, "corpus/out/__manifest/lease-00000001.json", b'{"run": "a"}')
    assert not create_exclusive(fs, "corpus/out/__manifest/lease-00000001.json", b'{"run": "b"}')
    assert fs.cat_file("corpus/out/__manifest/lease-00000001.json") == b'{"run": "a"}'


SECRET = "AKIAEXAMPLEKEYID:wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRET"


@pytest.mark.slow
def test_credentials_in_s3_urls_are_a_one_line_error_without_them(s3_endpoint, models, tmp_path):
    """s3:// reads no credentials from a URL (s3fs would take `KEY:SECRET@bucket` for a bucket name and print it in a
    botocore error): in input, output, model or examples, the job stops in one line naming the URL without them."""
    import s3fs

    fs = s3fs.S3FileSystem()
    with fs.open("corpus/creds/in/a.parquet", "wb") as handle:
        pq.write_table(pa.table({"id": ["a0"], "text": ["Paris is big."]}), handle)
    url = f"s3://{SECRET}@corpus/creds"
    model = str(models["text-classification"])
    sentiment = {"task": "sentiment-analysis", "model": model}
    cases = {
        "input.path": ({"path": f"{url}/in/"}, {"path": "s3://corpus/creds/out/"}, sentiment),
        "output.path": ({"path": "s3://corpus/creds/in/"}, {"path": f"{url}/out/"}, sentiment),
        "tasks.s.model": ({"path": "s3://corpus/creds/in/"}, {"path": "s3://corpus/creds/out/"},
                          {**sentiment, "model": f"{url}/models/sentiment"}),
        "tasks.s.examples": ({"path": "s3://corpus/creds/in/"}, {"path": "s3://corpus/creds/out/"},
                             {"task": "embedding-classification", "model": str(models["token-classification"]),
                              "examples": {"path": f"{url}/examples.parquet"}}),
    }
    for key, (source, output, task) in cases.items():
        config = write_config(tmp_path, source["path"], {"s": task}, output=output, compute=None)
        result = cli(config)
        printed = result.stdout + result.stderr
        for piece in SECRET.replace(":", "/").split("/"):
            assert piece not in printed, (key, printed[-3000:])
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (key, printed[-3000:])
        assert lines[0].startswith(f"error: {key} 's3://corpus/creds/") and "does not take credentials" in lines[0]
    fs.invalidate_cache()
    assert not fs.exists("corpus/creds/out"), "nothing was written"


@pytest.mark.slow
def test_a_storage_error_on_s3_is_one_line_without_the_secret_of_another_url(s3_endpoint, models, tmp_path):
    """A bucket that does not exist, with a secret in another URL on the command line: one line, no secret."""

    config = write_config(tmp_path, "s3://no-such-bucket/in/", sentiment(models, "s"),
                          output={"path": "s3://corpus/out-missing/"}, compute=None)
    result = cli(config, "--output", f"https://user:{SECRET.split(':')[1]}@example.invalid/out")
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("INFO ")]
    assert result.returncode == 2 and len(lines) == 1 and "'s3://no-such-bucket/in/'" in lines[0], result.stderr[-3000:]
    assert "wJalr" not in result.stdout + result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_damaged_parts_on_s3_are_found_from_the_listing_and_footers(own_ray, s3_endpoint, models, tmp_path):
    """On object storage too: a deleted part, a truncated one and one rewritten with another footer but the same
    size (its ETag changes) are each found at start; their files are redone once, every row ends up there once."""
    import json

    import ray
    import s3fs

    from jobs.annotate import main
    from nlp_tasks.output.index import read_index

    fs = s3fs.S3FileSystem()
    for index in range(3):
        with fs.open(f"corpus/damage/in/f{index}.parquet", "wb") as handle:
            pq.write_table(pa.table({"id": [f"{index}-{i}" for i in range(4)], "text": ["Paris is big."] * 4}), handle)
    config = write_config(tmp_path, "s3://corpus/damage/in/", sentiment(models),
                          output={"path": "s3://corpus/damage/out/", "rows_per_file": 2},
                          compute={"num_cpus_per_actor": 0.5, "batch_size": 2})
    ray_with_s3()
    try:
        assert main(["--config", str(config)]) == 0  # records each part's ETag in the markers' index
        fs.invalidate_cache()
        markers = {entry["marker"]["source"].rsplit("/", 1)[-1]: entry["marker"]
                   for entry in read_index(fs, "corpus/damage/out/__manifest/units.json.gz").values()}
        assert len(markers) == 3
        assert all(part.get("version") for marker in markers.values() for part in marker["parts"])
        parts = {name: f"corpus/damage/out/{marker['parts'][-1]['file']}" for name, marker in markers.items()}
        fs.rm(parts["f0.parquet"])
        fs.pipe_file(parts["f1.parquet"], fs.cat_file(parts["f1.parquet"])[:50])
        data = fs.cat_file(parts["f2.parquet"])
        at = data.rindex(b"parquet-cpp-arrow version ") + len(b"parquet-cpp-arrow version ")
        fs.pipe_file(parts["f2.parquet"], data[:at] + b"9" + data[at + 1:])
        assert main(["--config", str(config)]) == 0
        assert main(["--config", str(config)]) == 0
    finally:
        ray.shutdown()
    fs.invalidate_cache()
    reports = sorted(fs.find("corpus/damage/out/__reports/"))
    repaired = json.loads(fs.cat_file([p for p in reports if p.endswith(".json")][-2]))["input_changes"]["repaired"]
    reasons = {"f0.parquet": "is missing", "f1.parquet": "truncated or replaced", "f2.parquet": "not the part committed"}
    assert len(repaired) == 3
    for name, reason in reasons.items():
        assert [note for note in repaired if f"{name}'" in note and reason in note], (name, repaired)
    last = json.loads(fs.cat_file([p for p in reports if p.endswith(".json")][-1]))
    assert last["input_changes"]["repaired"] == [] and last["files_processed"] == 0
    files = [p for p in fs.find("corpus/damage/out/") if p.endswith(".parquet") and "/__" not in p]
    table = pa.concat_tables([pq.read_table(fs.open(p, "rb")) for p in files])
    assert sorted(table.column("id").to_pylist()) == sorted(f"{f}-{i}" for f in range(3) for i in range(4))
