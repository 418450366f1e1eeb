"""What opening an output decides, as functions of what storage shows: recovery (output/recovery.py: markers,
listings and footers in, what to do out) and change detection (driver/changes.py: input files and markers in).
No store, no Ray, no model: each case is a few dicts."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pyarrow as pa

from nlp_tasks.driver.changes import compare
from nlp_tasks.driver.inputs import InputFile, InputFiles
from nlp_tasks.output.index import file_key
from nlp_tasks.output.layout import part_name
from nlp_tasks.output.recovery import (
    check_footer,
    check_listing,
    delta_part_problem,
    delta_recovery,
    markers_from_index,
    parse_markers,
    since_last_commit,
    staged_commits,
    strays,
)

UNIT = "8d01596c98f02153"


def marker(unit: str = UNIT, rows: tuple[int, ...] = (25, 25), **part_fields) -> dict:
    parts, first = [], 0
    for count in rows:
        parts.append({"file": part_name(unit, first), "first": first, "rows": count, "size": 100 + first,
                      "footer_sha256": f"sha-{first}", **part_fields})
        first += count
    return {"unit": unit, "source": f"in/{unit}.parquet", "rows": first, "tasks": {"topic": "fp"},
            "identity": {"size": 10, "version": "v", "footer_sha256": "x"}, "parts": parts}


def entry(name: str, size: int, version: str) -> dict:
    return {"name": name, "size": size, "mtime": version}


def listing_of(unit_marker: dict, version: str = "v1") -> dict[str, dict]:
    return {part["file"]: entry(part["file"], part["size"], version) for part in unit_marker["parts"]}


def test_the_index_answers_for_marker_files_listed_as_it_recorded_them_and_the_rest_are_read():
    kept, changed, new = marker("a" * 16), marker("b" * 16), marker("c" * 16)
    files = {m["unit"]: entry(f"out/__manifest/units/{m['unit']}.json", 500, "t1") for m in (kept, changed, new)}
    indexed = {kept["unit"]: {"file": file_key(files[kept["unit"]]), "marker": kept},
               changed["unit"]: {"file": [500, "t0"], "marker": changed}}
    markers, to_read, stale = markers_from_index(files, indexed)
    assert markers == {kept["unit"]: kept}
    assert sorted(to_read) == sorted(files[u]["name"] for u in (changed["unit"], new["unit"]))
    assert stale
    assert markers_from_index({kept["unit"]: files[kept["unit"]]}, {kept["unit"]: indexed[kept["unit"]]}) == \
        ({kept["unit"]: kept}, [], False)


def test_an_index_holding_a_marker_no_file_is_listed_for_is_stale():
    kept, deleted = marker("a" * 16), marker("b" * 16)
    listed = entry(f"out/__manifest/units/{kept['unit']}.json", 500, "t1")
    indexed = {kept["unit"]: {"file": file_key(listed), "marker": kept},
               deleted["unit"]: {"file": [500, "t1"], "marker": deleted}}
    assert markers_from_index({kept["unit"]: listed}, indexed) == ({kept["unit"]: kept}, [], True)


def test_an_index_entry_that_is_not_a_marker_of_its_unit_is_not_trusted():
    files = {UNIT: entry(f"out/__manifest/units/{UNIT}.json", 500, "t1")}
    foreign = marker("f" * 16)
    markers, to_read, stale = markers_from_index(files, {UNIT: {"file": file_key(files[UNIT]), "marker": foreign}})
    assert (markers, to_read, stale) == ({}, [files[UNIT]["name"]], True)


def test_marker_files_that_hold_no_marker_of_their_unit_are_named_with_why():
    good = marker()
    path = f"out/__manifest/units/{UNIT}.json"
    markers, torn = parse_markers({
        path: json.dumps(good).encode(),
        "out/__manifest/units/1111111111111111.json": b'{"unit": "11',
        "out/__manifest/units/2222222222222222.json": json.dumps(good).encode(),
        "out/__manifest/units/3333333333333333.json": FileNotFoundError("gone"),
    })
    assert markers == {UNIT: good}
    assert set(torn) == {f"out/__manifest/units/{n * 16}.json" for n in "123"}
    assert "not a unit marker" in torn["out/__manifest/units/2222222222222222.json"]
    assert all(why.startswith("unit marker unreadable") for why in torn.values())


def test_only_committed_parts_still_in_staging_are_moved_forward():
    committed = marker(staged="__staging/r/x.parquet.staged")
    committed["parts"][1]["staged"] = "__staging/r/y.parquet.staged"
    assert staged_commits({UNIT: committed}, {"__staging/r/y.parquet.staged", "__staging/r/z.parquet.staged"}) \
        == [committed["parts"][1]]
    assert staged_commits({UNIT: marker()}, {"__staging/r/x.parquet.staged"}) == []


def test_the_listing_alone_finds_missing_and_resized_parts_and_names_the_parts_whose_footer_to_read():
    verified = marker("a" * 16, version="v1")
    unverified = marker("b" * 16)
    missing = marker("c" * 16, version="v1")
    resized = marker("d" * 16, version="v1")
    touched = marker("e" * 16, version="v1")
    listing = {**listing_of(verified), **listing_of(unverified), **listing_of(missing), **listing_of(resized),
               **listing_of(touched, version="v2")}
    del listing[missing["parts"][1]["file"]]
    listing[resized["parts"][0]["file"]]["size"] += 1
    markers = {m["unit"]: m for m in (verified, unverified, missing, resized, touched)}
    problems, doubtful = check_listing(markers, listing)
    assert problems == {
        missing["unit"]: f"{missing['parts'][1]['file']} is missing",
        resized["unit"]: f"{resized['parts'][0]['file']} is 101 bytes, 100 when committed (truncated or replaced)"}
    assert [(unit, part["file"]) for unit, part in doubtful] == [
        (m["unit"], part["file"]) for m in (unverified, touched) for part in m["parts"]]


def test_a_footer_is_the_committed_one_by_checksum_and_rows_or_says_what_it_is():
    part = marker()["parts"][0]
    listed = entry(part["file"], part["size"], "v9")
    footer = SimpleNamespace(num_rows=25)
    assert check_footer(part, listed, (footer, "sha-0")) == (
        None, {"size": part["size"], "footer_sha256": "sha-0", "version": "v9"})
    assert check_footer(part, listed, (footer, "other"))[0] == f"{part['file']} is not the part committed " \
                                                                "(its footer differs)"
    for rows in (24, 26):
        assert check_footer(part, listed, (SimpleNamespace(num_rows=rows), "sha-0"))[0] == \
            f"{part['file']} holds {rows} rows, 25 when committed"
    assert check_footer(part, listed, OSError("Parquet magic bytes not found"))[0] == \
        f"{part['file']} is not readable Parquet (OSError: Parquet magic bytes not found)"


def test_strays_are_the_part_files_no_marker_lists_and_nothing_else():
    committed = marker()
    listing = {**listing_of(committed), part_name(UNIT, 50): {}, part_name("f" * 16, 0): {},
               "__manifest": {}, "notes.txt": {}, "part-x.parquet": {}}
    assert strays({UNIT: committed}, listing) == sorted([part_name(UNIT, 50), part_name("f" * 16, 0)])


def delta_marker(unit: str, txn: int, previous: dict | None = None) -> dict:
    base = marker(unit, rows=(25,))
    base["parts"][0]["file"] = f"part-{unit}-000000000000-{txn:08x}.parquet"
    return {**base, "txn": txn, "previous": previous}


def test_delta_markers_stand_roll_back_or_uncommit_as_the_log_says():
    standing = delta_marker("a" * 16, 3)
    earlier = delta_marker("b" * 16, 2)
    rolled_back = delta_marker("b" * 16, 5, previous=earlier)
    never = delta_marker("c" * 16, 5)
    resized = delta_marker("d" * 16, 1)
    logged = {m["unit"]: {m["parts"][0]["file"]: m["parts"][0]["size"]} for m in (standing, earlier, resized)}
    logged["e" * 16] = {f"part-{'e' * 16}-000000000000-00000001.parquet": 7}
    listing = {file: {"size": size} for parts in logged.values() for file, size in parts.items()}
    listing[resized["parts"][0]["file"]]["size"] += 1
    recovery = delta_recovery({m["unit"]: m for m in (standing, rolled_back, never, resized)}, logged, 4, listing)
    assert recovery.markers == {standing["unit"]: standing, earlier["unit"]: earlier}
    assert recovery.restore == {earlier["unit"]: earlier}
    assert sorted(recovery.drop) == [never["unit"], resized["unit"]]
    assert recovery.uncommit == {resized["unit"]: list(logged[resized["unit"]]), "e" * 16: list(logged["e" * 16])}
    assert "bytes" in recovery.why[resized["unit"]] and "without a marker" in recovery.why["e" * 16]


def test_a_previous_marker_is_put_back_only_where_the_log_holds_its_commit():
    ahead = delta_marker("b" * 16, 5)  # itself never committed: the log stops at 4
    torn = {**delta_marker("c" * 16, 2), "rows": "many"}  # not a marker: no count of its rows
    later = {unit: delta_marker(unit, 6, previous=previous) for unit, previous in (("b" * 16, ahead), ("c" * 16, torn))}
    logged = {torn["unit"]: {torn["parts"][0]["file"]: torn["parts"][0]["size"]}}  # its commit landed, torn or not
    recovery = delta_recovery(later, logged, 4, {file: {"size": size} for file, size in logged[torn["unit"]].items()})
    assert recovery.restore == {} and recovery.markers == {} and sorted(recovery.drop) == sorted(later)
    assert recovery.uncommit == {torn["unit"]: list(logged[torn["unit"]])}


def test_only_compactions_since_the_jobs_last_version_leave_its_rows_as_they_were():
    job = {"version": 3, "operation": "WRITE", "nlp_tasks": "{}"}
    compacted = [{"version": 6, "operation": "VACUUM END"}, {"version": 5, "operation": "VACUUM START"},
                 {"version": 4, "operation": "OPTIMIZE"}, job, {"version": 2, "operation": "WRITE"}]
    assert since_last_commit(compacted) == (3, True)
    appended = [{"version": 7, "operation": "WRITE"}, *compacted]
    assert since_last_commit(appended) == (3, False)
    assert since_last_commit([{"version": 1, "operation": "OPTIMIZE"}]) == (None, False)
    assert since_last_commit([job]) == (3, True)


def test_a_delta_marker_listing_other_parts_than_the_log_is_named():
    unit_marker = delta_marker("a" * 16, 1)
    other = {f"part-{'a' * 16}-000000000000-00000009.parquet": 100}
    assert delta_part_problem(unit_marker, other, {}).startswith("its marker lists other parts than the Delta log")
    logged = {unit_marker["parts"][0]["file"]: 100}
    assert delta_part_problem(unit_marker, logged, {}) == f"committed part {unit_marker['parts'][0]['file']} is missing"
    assert delta_part_problem(unit_marker, logged, {unit_marker["parts"][0]["file"]: {"size": 100}}) is None


def input_file(name: str, rows: int = 10, sha: str | None = None) -> InputFile:
    return InputFile(path=name, name=name, rows=rows, row_group_rows=(rows,), size=100 + rows, version="v",
                     footer_sha256=sha or f"sha-{name}")


def committed(file: InputFile, tasks: dict[str, str]) -> dict:
    return {"unit": file.unit, "source": file.name, "identity": file.identity, "rows": file.rows, "tasks": tasks,
            "parts": [{"file": part_name(file.unit, 0), "first": 0, "rows": file.rows}]}


def test_change_detection_is_a_function_of_the_input_files_and_the_markers():
    kept, grown, moved, gone, fresh = (input_file("in/kept"), input_file("in/grown"), input_file("in/old-name"),
                                       input_file("in/gone"), input_file("in/fresh"))
    markers = {f.unit: committed(f, {"topic": "fp1", "old": "fp0"}) for f in (kept, grown, moved, gone)}
    markers[kept.unit]["tasks"] = {"topic": "fp1"}
    now = [kept, input_file("in/grown", rows=11), input_file("in/new-name", sha=moved.footer_sha256), fresh]
    source = InputFiles(filesystem=None, root="in", files=now, schema=pa.schema([("text", pa.string())]))
    changes = compare(source, markers, {"topic": "fp1"}, drop_removed=True, skipped=set())
    assert [file.name for file in changes.todo] == ["in/grown", "in/new-name", "in/fresh"]
    assert (changes.new, changes.changed, changes.renamed) == (["in/fresh"], ["in/grown"],
                                                               {"in/new-name": "in/old-name"})
    assert (changes.vanished, changes.vanished_units, changes.unchanged) == (["in/gone"], [gone.unit], 1)
    assert changes.renamed_units == [moved.unit] and changes.refreshes == []
    markers[kept.unit]["tasks"] = {"topic": "fp0", "old": "fp0"}
    refresh, = compare(source, markers, {"topic": "fp1"}, drop_removed=True, skipped=set()).refreshes
    assert (refresh.file, refresh.recompute, refresh.drop) == (kept, ("topic",), ("old",))


def test_a_file_whose_identity_changed_is_annotated_again_even_with_as_many_rows():
    before = input_file("in/a")
    markers = {before.unit: committed(before, {"topic": "fp1"})}
    now = input_file("in/a", sha="another footer")
    source = InputFiles(filesystem=None, root="in", files=[now], schema=pa.schema([("text", pa.string())]))
    changes = compare(source, markers, {"topic": "fp1"}, drop_removed=False, skipped=set())
    assert (changes.todo, changes.changed, changes.unchanged) == ([now], ["in/a"], 0)


def test_a_marker_whose_rows_disagree_with_its_unchanged_file_is_not_trusted():
    file = input_file("in/a")
    markers = {file.unit: {**committed(file, {"topic": "fp1"}), "rows": file.rows - 1}}
    source = InputFiles(filesystem=None, root="in", files=[file], schema=pa.schema([("text", pa.string())]))
    changes = compare(source, markers, {"topic": "fp1"}, drop_removed=False, skipped=set())
    assert (changes.todo, changes.changed, changes.unchanged) == ([file], ["in/a"], 0)


def test_a_skipped_tasks_column_is_kept_even_where_removed_tasks_are_dropped():
    file = input_file("in/a")
    markers = {file.unit: committed(file, {"topic": "fp1", "entities": "fp2"})}
    source = InputFiles(filesystem=None, root="in", files=[file], schema=pa.schema([("text", pa.string())]))
    changes = compare(source, markers, {"topic": "fp1"}, drop_removed=True, skipped={"entities"})
    assert (changes.refreshes, changes.unchanged, changes.removed_kept) == ([], 1, [])
    dropped = compare(source, markers, {"topic": "fp1"}, drop_removed=True, skipped=set())
    assert [refresh.drop for refresh in dropped.refreshes] == [("entities",)]
