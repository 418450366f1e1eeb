"""Group commit of a Delta output, at the store (no Ray, no model): the files handed to `DeltaStore.commit` by the
driver's commit threads while a transaction is in flight land together in the next version, each exactly once;
a group stopped between its markers and its transaction is undone by the next open, and committed once by a rerun.

Real deltalake, real files: the parts are Parquet files written into the table's folder as the workers write them.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nlp_tasks.output.delta import DeltaStore
from nlp_tasks.output.layout import PartRecord
from nlp_tasks.workers.write import footer_sha256

deltalake = pytest.importorskip("deltalake")

JOB = {"tasks": {"sentiment": {"fingerprint": "f" * 16}},
       "columns": {"text": "text", "id": "id", "errors": "errors", "partitioning": "none"}}
ROWS = 5
"""Rows of a part."""


def open_store(out: Path) -> DeltaStore:
    from fsspec.core import url_to_fs

    store = DeltaStore(*url_to_fs(str(out)), name="out", uri=str(out))
    store.open(JOB, "resume", lambda previous, job: None)
    return store


def unit_of(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def write_parts(store: DeltaStore, unit: str, tag: str, parts: int = 2) -> list[PartRecord]:
    """`parts` parts of ROWS rows for `unit`, written under their final names as the workers write them; the ids
    are `<tag>-<unit>-<row>`."""
    records = []
    for index in range(parts):
        first = index * ROWS
        table = pa.table({"id": [f"{tag}-{unit}-{first + i}" for i in range(ROWS)], "text": ["some text"] * ROWS,
                          "sentiment": ["positive"] * ROWS})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data = sink.getvalue()
        path = store.path(store.part_names.format(unit=unit, first=first, nonce=os.urandom(4).hex()))
        store.filesystem.pipe_file(path, data.to_pybytes())
        records.append(PartRecord(unit, first, ROWS, path, data.size, footer_sha256(data), "test", "{}", "{}"))
    return records


def marker_of(unit: str, parts: int = 2) -> dict:
    return {"unit": unit, "source": f"corpus/file-{unit}.parquet", "rows": ROWS * parts,
            "identity": {"size": 1, "version": "v", "footer_sha256": "0" * 64}, "tasks": {"sentiment": "f" * 16}}


def expected_ids(unit: str, tag: str, parts: int = 2) -> list[str]:
    return [f"{tag}-{unit}-{row}" for row in range(ROWS * parts)]


def log_entries(out: Path) -> list[tuple[int, dict]]:
    """Every action of every version of the table's log, with its version."""
    return [(int(file.stem), json.loads(line)) for file in sorted((out / "_delta_log").glob("*.json"))
            for line in file.read_text().splitlines() if line.strip()]


def commits_of(out: Path) -> list[dict]:
    """The custom metadata of the job's commit versions (those with its application transaction), oldest first."""
    return [entry["commitInfo"]["nlp_tasks"] for _, entry in log_entries(out)
            if "commitInfo" in entry and "commit" in entry["commitInfo"].get("nlp_tasks", {})]


def snapshot_ids(out: Path) -> list[str]:
    return sorted(pa.table(deltalake.DeltaTable(str(out)).to_pyarrow_table()).column("id").to_pylist())


def assert_each_added_once(out: Path) -> None:
    added = [entry["add"]["path"] for _, entry in log_entries(out) if "add" in entry]
    assert len(added) == len(set(added)), "a part was added to the log twice"


def commit_from_threads(store: DeltaStore, work: list[tuple[dict, list[PartRecord]]], threads: int = 16,
                        queued: bool = False) -> list[BaseException | None]:
    """Commit each (marker, parts) from its own thread, as the driver's commit threads do; what each raised. With
    `queued`, a transaction is held in flight (the store's commit lock taken) until every file is handed over:
    they are then one group."""
    with ThreadPoolExecutor(threads) as pool:
        if queued:
            store.commit_lock.acquire()
        try:
            futures = [pool.submit(store.commit, marker, parts) for marker, parts in work]
            if queued:
                deadline = time.monotonic() + 30
                while len(store.pending) < len(work):
                    assert time.monotonic() < deadline, f"{len(store.pending)} of {len(work)} files handed over"
                    time.sleep(0.001)
        finally:
            if queued:
                store.commit_lock.release()
        wait(futures)
    return [future.exception() for future in futures]


def test_files_committed_from_threads_land_in_fewer_versions_each_once(tmp_path):
    """48 files (4 of them empty) committed from 16 threads: fewer versions than files, the job's transaction
    numbers consecutive, every file's parts added once, each row once in the snapshot; the next open finds every
    file committed as its marker says."""
    out = tmp_path / "out"
    store = open_store(out)
    work, ids = [], []
    for index in range(48):
        unit = unit_of(f"file-{index}")
        parts = 0 if index % 12 == 5 else 2
        work.append((marker_of(unit, parts), write_parts(store, unit, "a", parts)))
        ids += expected_ids(unit, "a", parts)
    try:
        assert commit_from_threads(store, work) == [None] * len(work)
        store.finish()
    finally:
        store.close()

    commits = commits_of(out)
    assert 1 <= len(commits) < 44, f"{len(commits)} versions for 44 files with parts"
    assert [commit["commit"] for commit in commits] == list(range(1, len(commits) + 1))
    assert deltalake.DeltaTable(str(out)).transaction_version("nlp-tasks") == len(commits)
    committed = [unit for commit in commits for unit in commit["units"]]
    assert sorted(committed) == sorted(marker["unit"] for marker, parts in work if parts), "each file once"
    assert all(len(commit["units"]) == len(commit["sources"]) for commit in commits)
    assert_each_added_once(out)
    assert snapshot_ids(out) == sorted(ids)

    again = open_store(out)
    try:
        assert set(again.markers) == {marker["unit"] for marker, _ in work} and not again.redone
        numbers = {unit: marker["txn"] for unit, marker in again.markers.items()}
        for marker, parts in work:
            assert (numbers[marker["unit"]] == 0) == (not parts)
        assert sorted(set(numbers.values()) - {0}) == list(range(1, len(commits) + 1))
    finally:
        again.close()


def test_the_files_handed_over_during_a_transaction_are_its_next_version(tmp_path):
    """The files handed over while a transaction is in flight: one version after it, whose markers all carry its
    number and name their previous commit, and whose metadata names their units and sources; a refreshed file's old
    parts leave the log in the same version."""
    out = tmp_path / "out"
    store = open_store(out)
    units = [unit_of(f"file-{index}") for index in range(12)]
    try:
        first = [(marker_of(unit), write_parts(store, unit, "a")) for unit in units[:6]]
        assert commit_from_threads(store, first, queued=True) == [None] * 6
        version = deltalake.DeltaTable(str(out)).version()
        old = {unit: store.markers[unit] for unit in units[:6]}
        refreshed = [(marker_of(unit), write_parts(store, unit, "b")) for unit in units[:3]]
        new = [(marker_of(unit), write_parts(store, unit, "a")) for unit in units[6:]]
        assert commit_from_threads(store, refreshed + new, queued=True) == [None] * 9
        store.finish()
    finally:
        store.close()

    commits = commits_of(out)
    assert [len(commit["units"]) for commit in commits] == [6, 9]
    assert commits[1]["sources"] == [marker["source"] for marker, _ in refreshed + new]
    assert deltalake.DeltaTable(str(out)).version() == version + 1, "one version for the 9 files"
    last = [entry for number, entry in log_entries(out) if number == version + 1]
    removed = {entry["remove"]["path"] for entry in last if "remove" in entry}
    assert removed == {part["file"] for unit in units[:3] for part in old[unit]["parts"]}
    assert_each_added_once(out)
    assert snapshot_ids(out) == sorted([i for unit in units[:3] for i in expected_ids(unit, "b")]
                                       + [i for unit in units[3:] for i in expected_ids(unit, "a")])
    for unit in units[6:] + units[:3]:
        marker = json.loads((out / "__manifest" / "units" / f"{unit}.json").read_text())
        assert marker["txn"] == 2
        assert (marker["previous"] or {}).get("txn") == (1 if unit in units[:3] else None)


def without_previous(marker: dict) -> dict:
    return {key: value for key, value in marker.items() if key != "previous"}


def break_log(out: Path) -> Path:
    """The table's log made unwritable, for root too: its folder moved away and a file put in its place; every
    write of a transaction fails (ENOTDIR), as if the driver died before its transaction. Returns where it went."""
    away = out.parent / "delta_log_away"
    (out / "_delta_log").rename(away)
    (out / "_delta_log").write_text("not a folder")
    return away


def mend_log(out: Path, away: Path) -> None:
    (out / "_delta_log").unlink()
    away.rename(out / "_delta_log")


def test_a_group_stopped_between_its_markers_and_its_transaction_is_undone_then_committed_once(tmp_path):
    """A group of 3 refreshed and 3 new files whose transaction fails after their markers (all numbered one past
    the log's last commit) are written: every file's thread raises, nothing more is committed; the next open counts
    none of them as committed (the refreshed files' markers back to their previous ones, the new ones' gone, their
    parts deleted as strays, the table as before); a rerun commits each once."""
    out = tmp_path / "out"
    units = [unit_of(f"file-{index}") for index in range(9)]
    store = open_store(out)
    try:
        assert commit_from_threads(store, [(marker_of(u), write_parts(store, u, "a")) for u in units[:6]]) \
            == [None] * 6
        store.finish()
    finally:
        store.close()
    before_ids, before_version = snapshot_ids(out), deltalake.DeltaTable(str(out)).version()
    logged = deltalake.DeltaTable(str(out)).transaction_version("nlp-tasks")
    markers = {unit: json.loads((out / "__manifest" / "units" / f"{unit}.json").read_text()) for unit in units[:6]}

    store = open_store(out)
    group = [(marker_of(unit), write_parts(store, unit, "b")) for unit in units[:3] + units[6:]]
    away = break_log(out)
    try:
        errors = commit_from_threads(store, group, queued=True)
        assert all(error is not None for error in errors), errors
        assert store.failed is not None
        late = [(marker_of(units[3]), write_parts(store, units[3], "c"))]
        assert commit_from_threads(store, late) == [store.failed], "nothing is committed after a failed transaction"
        store.finish()  # the driver's end: the index is left for the next open to rebuild
    finally:
        store.close()
        mend_log(out, away)
    for unit in units[:3] + units[6:]:  # what a driver killed between the two steps leaves
        assert json.loads((out / "__manifest" / "units" / f"{unit}.json").read_text())["txn"] == logged + 1
    group_parts = {Path(part.staged).name for _, parts in group for part in parts}
    assert group_parts <= {path.name for path in out.glob("part-*.parquet")}

    store = open_store(out)
    try:
        assert store.logged == logged and not store.redone
        assert set(store.markers) == set(units[:6]), "none of the group's new files is committed"
        for unit in units[:6]:
            as_before = without_previous(markers[unit])
            on_disk = json.loads((out / "__manifest" / "units" / f"{unit}.json").read_text())
            assert without_previous(store.markers[unit]) == without_previous(on_disk) == as_before, \
                "a refreshed file's previous marker is back"
        assert not any((out / "__manifest" / "units" / f"{unit}.json").exists() for unit in units[6:])
        assert not group_parts & {path.name for path in out.glob("part-*.parquet")}, "the group's parts are strays"
        assert snapshot_ids(out) == before_ids and deltalake.DeltaTable(str(out)).version() == before_version

        rerun = [(marker_of(unit), write_parts(store, unit, "b")) for unit in units[:3] + units[6:]]
        assert commit_from_threads(store, rerun) == [None] * 6
        store.finish()
    finally:
        store.close()
    assert_each_added_once(out)
    assert snapshot_ids(out) == sorted([i for unit in units[:3] + units[6:] for i in expected_ids(unit, "b")]
                                       + [i for unit in units[3:6] for i in expected_ids(unit, "a")])
    assert deltalake.DeltaTable(str(out)).transaction_version("nlp-tasks") > logged
    again = open_store(out)
    try:
        assert set(again.markers) == set(units) and not again.redone
    finally:
        again.close()


def test_retired_files_leave_with_the_new_ones_in_one_version_beside_grouped_refreshes(tmp_path):
    """A run that uncommits a file (its input vanished) holds its new files until all have arrived, then commits
    them with the retirement in one version; a refreshed file (not new) is committed in its group meanwhile."""
    out = tmp_path / "out"
    units = [unit_of(f"file-{index}") for index in range(6)]
    store = open_store(out)
    try:
        assert commit_from_threads(store, [(marker_of(u), write_parts(store, u, "a")) for u in units[:3]]) \
            == [None] * 3
        store.finish()
    finally:
        store.close()
    gone = json.loads((out / "__manifest" / "units" / f"{units[2]}.json").read_text())

    store = open_store(out)
    try:
        store.expect(set(units[:2] + units[3:]))  # units[2]'s input vanished; units[3:] are new
        store.remove(units[2])
        before = deltalake.DeltaTable(str(out)).version()
        work = [(marker_of(unit), write_parts(store, unit, "b")) for unit in [units[0]] + units[3:]]
        assert commit_from_threads(store, work) == [None] * 4
        assert not store.retiring and not store.held
        store.finish()
    finally:
        store.close()
    table = deltalake.DeltaTable(str(out))
    entries = [(number, entry) for number, entry in log_entries(out) if number > before]
    retired = [number for number, entry in entries if "remove" in entry
               and entry["remove"]["path"] in {part["file"] for part in gone["parts"]}]
    added = {entry["add"]["path"].split("-")[1]: number for number, entry in entries if "add" in entry}
    assert len(set(retired)) == 1 and {added[unit] for unit in units[3:]} == set(retired), \
        "the retirement and the new files are one version"
    assert table.version() - before <= 2
    assert not (out / "__manifest" / "units" / f"{units[2]}.json").exists()
    assert_each_added_once(out)
    assert snapshot_ids(out) == sorted(expected_ids(units[0], "b") + expected_ids(units[1], "a")
                                       + [i for unit in units[3:] for i in expected_ids(unit, "b")])


def test_a_thread_whose_file_another_committed_returns_once_it_is_committed(tmp_path, monkeypatch):
    """More files handed over than a group holds: every thread returns only once its own file is in the log."""
    from nlp_tasks.output import delta

    out = tmp_path / "out"
    store = open_store(out)
    seen: dict[str, bool] = {}
    lock = threading.Lock()

    def commit(marker: dict, parts: list[PartRecord]) -> None:
        store.commit(marker, parts)
        with lock:
            seen[marker["unit"]] = marker["unit"] in store.markers and store.markers[marker["unit"]]["txn"] <= \
                store.logged

    units = [unit_of(f"file-{index}") for index in range(10)]
    work = [(marker_of(unit, 1), write_parts(store, unit, "a", 1)) for unit in units]
    monkeypatch.setattr(delta, "GROUP", 3)  # a group's cap, as 1,000 files would meet it
    try:
        store.commit_lock.acquire()
        with ThreadPoolExecutor(10) as pool:
            try:
                futures = [pool.submit(commit, marker, parts) for marker, parts in work]
                while len(store.pending) < len(work):
                    time.sleep(0.001)
            finally:
                store.commit_lock.release()
        assert [future.exception() for future in futures] == [None] * len(work)
    finally:
        store.close()
    assert seen == dict.fromkeys(units, True)
    assert [len(commit["units"]) for commit in commits_of(out)] == [3, 3, 3, 1]


def test_a_failed_version_of_held_files_and_retirements_raises_in_their_threads_and_is_undone(tmp_path):
    """The version that would commit the run's new files with a retirement fails: the threads of the files in its
    group raise; the next open finds the retired file still committed, the new ones not, the table as before."""
    out = tmp_path / "out"
    units = [unit_of(f"file-{index}") for index in range(4)]
    store = open_store(out)
    try:
        assert commit_from_threads(store, [(marker_of(u), write_parts(store, u, "a")) for u in units[:2]]) \
            == [None] * 2
        store.finish()
    finally:
        store.close()
    before = snapshot_ids(out)

    store = open_store(out)
    away = break_log(out)
    try:
        store.expect({units[0], *units[2:]})
        store.remove(units[1])  # held back: it leaves with the new files
        errors = commit_from_threads(store, [(marker_of(u), write_parts(store, u, "b")) for u in units[2:]],
                                     queued=True)
        assert all(error is not None for error in errors) and store.failed is not None, errors
    finally:
        store.close()
        mend_log(out, away)

    store = open_store(out)
    try:
        assert set(store.markers) == set(units[:2]) and not store.redone
        assert snapshot_ids(out) == before
    finally:
        store.close()
