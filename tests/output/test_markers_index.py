"""What a night costs follows what changed: an output opens from its markers' index and a listing, reading only
the markers and footers that changed since, and the input's unchanged files are taken as recorded. Store level,
on the local filesystem: no Ray, no model; reads are counted by a filesystem that counts what it is asked."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem
from helpers import REPO

from nlp_tasks.config import InputConfig
from nlp_tasks.driver.inputs import inspect_input
from nlp_tasks.output.layout import PartRecord
from nlp_tasks.output.store import OutputStore
from nlp_tasks.workers.write import footer_sha256

JOB = {"tasks": {"sentiment": {"fingerprint": "f" * 16}}, "columns": {"text": "text", "id": "id"}}


class CountingFileSystem(LocalFileSystem):
    """The local filesystem, counting the files it opens for reading (`cat_file` opens them too)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads: list[str] = []

    def _open(self, path, mode="rb", *args, **kwargs):
        if "r" in mode:
            self.reads.append(str(path))
        return super()._open(path, mode, *args, **kwargs)

    def take(self) -> list[str]:
        reads, self.reads = self.reads, []
        return reads


def opened(root: Path, filesystem: CountingFileSystem | None = None) -> OutputStore:
    store = OutputStore(filesystem or CountingFileSystem(skip_instance_cache=True), str(root))
    store.open(JOB, "resume", lambda previous, job: None)
    return store


def commit_units(store: OutputStore, units: list[str]) -> None:
    """Commit each unit as the driver does: a part written to staging as the workers write it, then its marker."""
    for unit in units:
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"id": ["a", "b"], "sentiment": ["x", "y"]}), sink)
        data = sink.getvalue()
        staged = f"{store.staging}/{unit}-{0:012d}-0000.parquet.staged"
        store.filesystem.pipe_file(staged, data.to_pybytes())
        store.commit({"unit": unit, "source": f"/corpus/{unit}.parquet", "rows": 2, "tasks": {"sentiment": "f" * 16},
                      "identity": {"size": 10, "version": "1", "footer_sha256": "0" * 64}},
                     [PartRecord(unit, 0, 2, staged, data.size, footer_sha256(data), "w", "{}", "{}")])


UNITS = [f"{index:016x}" for index in range(12)]


@pytest.fixture
def indexed(tmp_path) -> Path:
    """An output whose run committed UNITS and ended well (its index written)."""
    store = opened(tmp_path / "out")
    commit_units(store, UNITS)
    store.finish()
    store.close()
    return tmp_path / "out"


def test_a_quiet_night_reads_the_index_and_no_marker_or_footer(indexed):
    store = opened(indexed)
    reads = store.filesystem.take()
    assert sorted(store.markers) == UNITS
    assert all(part["version"] for marker in store.markers.values() for part in marker["parts"]), \
        "versions recorded at commit: the parts are verified from the listing"
    assert [Path(read).name for read in reads if "lease" not in read and "job.json" not in read] == \
        ["units.json.gz"], "one object read for every committed unit"
    stamp = (indexed / "__manifest" / "units.json.gz").stat().st_mtime_ns
    store.finish()
    store.close()
    assert (indexed / "__manifest" / "units.json.gz").stat().st_mtime_ns == stamp, "nothing changed: not rewritten"


def test_markers_committed_since_the_index_are_read_and_then_indexed(indexed):
    store = opened(indexed)
    commit_units(store, ["a" * 16])
    store.close()  # ended without `finish`, as a killed run: the index does not know the new unit

    store = opened(indexed)
    reads = [Path(read).name for read in store.filesystem.take()]
    assert sorted(store.markers) == sorted([*UNITS, "a" * 16])
    assert f"{'a' * 16}.json" in reads and not any(name.endswith(".json") and name[:16] in UNITS for name in reads)
    assert any(name.startswith(f"part-{'a' * 16}") for name in reads), "its part's footer is verified once"
    store.finish()
    store.close()
    store = opened(indexed)
    assert [Path(read).name for read in store.filesystem.take() if "units" in read] == ["units.json.gz"]
    store.close()


def test_a_marker_changed_or_removed_after_the_index_is_what_counts(indexed):
    store = opened(indexed)
    changed = store.markers[UNITS[0]]
    store.remove(UNITS[1])
    store.close()  # no `finish`: the index still lists UNITS[1] and the old UNITS[0]
    marker_file = indexed / "__manifest" / "units" / f"{UNITS[0]}.json"
    marker_file.write_text(json.dumps({**changed, "tasks": {"sentiment": "e" * 16}}))

    store = opened(indexed)
    assert UNITS[1] not in store.markers, "a marker file that is gone uncommits its unit, whatever the index says"
    assert store.markers[UNITS[0]]["tasks"] == {"sentiment": "e" * 16}, "the marker file wins over the index"
    assert store.redone == {}
    store.close()


@pytest.mark.parametrize("damage", ["torn", "foreign", "removed"])
def test_an_index_that_cannot_be_read_costs_reads_not_output(indexed, damage):
    index = indexed / "__manifest" / "units.json.gz"
    if damage == "torn":
        index.write_bytes(index.read_bytes()[:40])
    elif damage == "foreign":
        index.write_bytes(gzip.compress(json.dumps({"format": 99, "units": []}).encode()))
    else:
        index.unlink()
    store = opened(indexed)
    reads = [Path(read).name for read in store.filesystem.take()]
    assert sorted(store.markers) == UNITS and store.redone == {}
    assert sum(name.endswith(".json") and name[:16] in UNITS for name in reads) == len(UNITS)
    store.finish()
    store.close()
    assert sorted(json.loads(gzip.decompress(index.read_bytes()))["units"]) == UNITS, "written again"


def test_an_index_entry_of_another_shape_is_read_from_its_marker_file(indexed):
    index = indexed / "__manifest" / "units.json.gz"
    data = json.loads(gzip.decompress(index.read_bytes()))
    data["units"][UNITS[0]]["marker"]["parts"] = "all"
    index.write_bytes(gzip.compress(json.dumps(data).encode()))
    store = opened(indexed)
    assert f"{UNITS[0]}.json" in [Path(read).name for read in store.filesystem.take()]
    assert store.markers[UNITS[0]]["parts"][0]["rows"] == 2 and store.redone == {}
    store.close()


# The input: files whose listing entry is the one recorded are not read -----------------------------------------


def write_input(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        pq.write_table(pa.table({"id": [f"{index}-0", f"{index}-1"], "text": ["a", "b"]}), folder / f"{index:03d}.parquet",
                       row_group_size=1)


def as_recorded(folder: Path) -> dict[str, dict]:
    """What an output records of each input file (commits.Commits.marker), from a first inspection."""
    source = inspect_input(InputConfig(path=str(folder), id_column="id"))
    return {file.name: {"source": file.name, "identity": file.identity, "rows": file.rows, "layout": file.layout}
            for file in source.files}


def footers_read(folder: Path, recorded: dict[str, dict], monkeypatch) -> tuple[list[str], object]:
    from nlp_tasks.driver import inputs

    read = []
    original = inputs.read_footer

    def counted(filesystem, path, size):
        read.append(Path(path).name)
        return original(filesystem, path, size)

    monkeypatch.setattr(inputs, "read_footer", counted)
    return read, inspect_input(InputConfig(path=str(folder), id_column="id"), recorded)


def test_unchanged_input_files_are_taken_as_recorded_and_only_new_or_changed_ones_read(tmp_path, monkeypatch):
    folder = tmp_path / "corpus"
    write_input(folder, 6)
    recorded = as_recorded(folder)
    fresh = inspect_input(InputConfig(path=str(folder), id_column="id"))

    read, source = footers_read(folder, recorded, monkeypatch)
    assert read == ["000.parquet"], "the first file's footer, for the input's schema; no other"
    assert source.files == fresh.files and source.schema == fresh.schema

    pq.write_table(pa.table({"id": ["x"], "text": ["changed"]}), folder / "003.parquet")
    write_input(tmp_path / "more", 1)
    os.replace(tmp_path / "more" / "000.parquet", folder / "new.parquet")
    read, source = footers_read(folder, recorded, monkeypatch)
    assert sorted(read) == ["000.parquet", "003.parquet", "new.parquet"]
    assert {file.name.rsplit("/", 1)[-1]: file.rows for file in source.files}["003.parquet"] == 1


def test_a_recorded_file_whose_schema_is_not_the_inputs_is_read_and_refused_as_before(tmp_path, monkeypatch):
    folder = tmp_path / "corpus"
    write_input(folder, 3)
    recorded = as_recorded(folder)
    name = str(folder / "001.parquet")
    recorded[name] = {**recorded[name], "layout": {**recorded[name]["layout"], "schema": "another"}}
    read, source = footers_read(folder, recorded, monkeypatch)
    assert sorted(read) == ["000.parquet", "001.parquet"] and len(source.files) == 3

    pq.write_table(pa.table({"id": ["x"], "text": ["b"], "extra": [1]}), folder / "000.parquet")
    with pytest.raises(Exception, match="001.parquet.*schema differs"):
        footers_read(folder, as_recorded_without(folder, "000.parquet", recorded), monkeypatch)


def as_recorded_without(folder: Path, name: str, recorded: dict[str, dict]) -> dict[str, dict]:
    return {key: value for key, value in recorded.items() if not key.endswith(name)}


def test_the_driver_imports_ray_only_for_a_night_with_work():
    """A quiet night's process loads the CLI and the driver, and never Ray, Ray Data, pandas or torch."""
    import subprocess
    import sys

    probe = ("import sys, jobs.annotate, nlp_tasks.driver.job; "
             "print(sorted(m for m in ('ray', 'ray.data', 'pandas', 'torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            cwd=REPO)
    assert result.stdout.strip() == "[]", result.stdout
