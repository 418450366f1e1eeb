"""What the output holds is checked, not assumed: damaged parts and markers are found at start and their files
redone once; the summary says what the output holds; nothing of a run's staging stays behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import last_report, output_table, recorded_markers, refusal, sentiment, write_config, write_rows

from jobs.annotate import main

pytestmark = pytest.mark.slow  # every test runs the job one to three times

FILES = 13
ROWS = 6
POSITIONS = ("first", "middle", "last")


def damage(path: Path, kind: str) -> None:
    """One kind of damage a committed part can take, each caught by another check: the listing (deleted,
    truncated, grown), the footer (garbage of the same size: unreadable; a footer byte changed: another part)."""
    data = path.read_bytes()
    if kind == "deleted":
        path.unlink()
    elif kind == "truncated":
        path.write_bytes(data[:100])
    elif kind == "grown":
        path.write_bytes(data + b"\0" * 10)
    elif kind == "garbage":
        path.write_bytes(bytes(len(data)))
    elif kind == "edited":
        version = data.rindex(b"parquet-cpp-arrow version ") + len(b"parquet-cpp-arrow version ")
        path.write_bytes(data[:version] + (b"9" if data[version:version + 1] != b"9" else b"8") + data[version + 1:])
        assert pq.read_metadata(path).num_rows, "still a readable Parquet file: only its footer tells it apart"
    else:
        raise ValueError(kind)


KINDS = ("deleted", "truncated", "grown", "garbage", "edited")
CASES = [(kind, position) for kind in KINDS for position in POSITIONS]


def markers(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "__manifest" / "units").glob("*.json")}


def by_source(out: Path) -> dict[str, dict]:
    return {Path(marker["source"]).name: marker for marker in markers(out).values()}


@pytest.fixture(scope="module")
def baseline(ray_local, tmp_path_factory, models):
    """An output of FILES input files of ROWS rows, each committed as three or more parts (the run records each
    part's version in the markers' index), made once for the module and copied aside; returns its folder (input,
    output, config), the copy and the input's ids."""
    folder = tmp_path_factory.mktemp("committed")
    corpus = folder / "corpus"
    ids = []
    for index in range(FILES):
        names = [f"f{index:02d}-{row}" for row in range(ROWS)]
        write_rows(corpus / f"f{index:02d}.parquet", names)
        ids += names
    config = write_config(folder, corpus, sentiment(models), output={"rows_per_file": 2}, compute={"batch_size": 2})
    assert main(["--config", config]) == 0
    assert all(len(marker["parts"]) >= 3 for marker in markers(folder / "out").values())
    recorded = recorded_markers(folder / "out")
    assert set(recorded) == set(markers(folder / "out"))
    assert all(part.get("version") for marker in recorded.values() for part in marker["parts"])
    pristine = tmp_path_factory.mktemp("pristine") / "copy"
    shutil.copytree(folder, pristine)
    return folder, pristine, sorted(ids)


@pytest.fixture
def committed(baseline):
    """The baseline as its run left it, at its own paths (markers name their input files by path), put back from
    the copy with the files' times (copytree keeps them: the files are the ones committed) for each test, which
    damages it; returns the config, the input's ids and the output's folder."""
    folder, pristine, ids = baseline
    shutil.rmtree(folder)
    shutil.copytree(pristine, folder)
    return str(folder / "job.yaml"), ids, folder / "out"


def test_a_damaged_part_redoes_its_file_once_whatever_the_damage_and_whichever_part(committed, capsys):
    config, ids, out = committed
    control = [*(out / "__manifest" / "units").glob("*.json"), out / "__manifest" / "units.json.gz"]
    stamps = {p.name: p.stat().st_mtime_ns for p in control}
    assert main(["--config", config]) == 0
    assert last_report(out)["input_changes"]["repaired"] == [] and last_report(out)["files_processed"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in control} == stamps, \
        "a run over a sound output rewrites no marker nor the index (and reads no footer: versions are as recorded)"

    committed_markers = by_source(out)
    hit = {}
    for index, (kind, position) in enumerate(CASES[:FILES - 1]):
        parts = committed_markers[f"f{index:02d}.parquet"]["parts"]
        part = parts[{"first": 0, "middle": len(parts) // 2, "last": -1}[position]]
        damage(out / part["file"], kind)
        hit[f"f{index:02d}.parquet"] = kind
    for part in committed_markers[f"f{FILES - 1:02d}.parquet"]["parts"]:  # every part of one file
        damage(out / part["file"], "deleted")
    hit[f"f{FILES - 1:02d}.parquet"] = "deleted"
    capsys.readouterr()

    assert main(["--config", config]) == 0
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err
    changes = last_report(out)["input_changes"]
    assert changes["new"] == [] and changes["changed"] == []
    expected_reason = {"deleted": "is missing", "truncated": "truncated or replaced", "grown": "truncated or replaced",
                       "garbage": "is not readable Parquet", "edited": "is not the part committed"}
    for name, kind in hit.items():
        notes = [note for note in changes["repaired"] if f"{name}'" in note]
        assert len(notes) == 1, (name, changes["repaired"])
        assert expected_reason[kind] in notes[0] and notes[0].endswith("its input file is annotated again"), notes
    assert len(changes["repaired"]) == FILES
    assert last_report(out)["files_processed"] == FILES
    assert sorted(output_table(out).column("id").to_pylist()) == ids

    assert main(["--config", config]) == 0
    assert last_report(out)["input_changes"]["repaired"] == [] and last_report(out)["files_processed"] == 0
    assert sorted(output_table(out).column("id").to_pylist()) == ids


WRONG_SHAPES = {
    "no identity": lambda m: {"parts": []},
    "rows edited": lambda m: {**m, "rows": m["rows"] + 1},
    "parts not a list": lambda m: {**m, "parts": "all of them"},
    "another unit's part": lambda m: {**m, "parts": [{**m["parts"][0], "file": "part-0000000000000000-000000000000."
                                                      "parquet"}, *m["parts"][1:]]},
    "a part skipped": lambda m: {**m, "parts": m["parts"][1:]},
    "identity of strings": lambda m: {**m, "identity": {"size": "big", "version": None, "footer_sha256": "x"}},
    "another unit": lambda m: {**m, "unit": "0123456789abcdef"},
    "tasks a list": lambda m: {**m, "tasks": ["sentiment"]},
    "a list": lambda m: [m],
    "a boolean row count": lambda m: {**m, "rows": True},
}


def test_markers_that_are_json_but_not_markers_are_torn_and_their_files_redone(committed, capsys):
    config, ids, out = committed
    shapes = list(WRONG_SHAPES.items())
    names = {}
    for index, (unit, marker) in enumerate(sorted(markers(out).items())[:len(shapes)]):
        what, reshape = shapes[index]
        (out / "__manifest" / "units" / f"{unit}.json").write_text(json.dumps(reshape(marker)))
        names[f"{unit}.json"] = what
    consistent = sorted(markers(out).items())[len(shapes)]  # rows and parts edited alike: its part's footer differs
    unit, marker = consistent
    edited = {**marker, "rows": marker["rows"] + 1, "parts": [*marker["parts"][:-1], {
        **marker["parts"][-1], "rows": marker["parts"][-1]["rows"] + 1}]}
    (out / "__manifest" / "units" / f"{unit}.json").write_text(json.dumps(edited))
    capsys.readouterr()

    assert main(["--config", config]) == 0
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err
    changes = last_report(out)["input_changes"]
    for name, what in names.items():
        notes = [note for note in changes["repaired"] if name in note]
        assert len(notes) == 1 and ("is not a unit marker" in notes[0] or "does not hold a JSON object" in notes[0]), \
            (what, changes["repaired"])
    edited_note = [note for note in changes["repaired"] if Path(marker["source"]).name in note]
    last = marker["parts"][-1]["rows"]
    assert len(edited_note) == 1 and f"holds {last} rows, {last + 1} when committed" in edited_note[0], \
        "a marker file that differs from the index's has its parts' footers checked again"
    assert len(changes["repaired"]) == len(names) + 1 and changes["new"] == changes["changed"] == []
    assert last_report(out)["files_processed"] == len(names) + 1
    assert sorted(output_table(out).column("id").to_pylist()) == ids

    assert main(["--config", config]) == 0
    assert last_report(out)["input_changes"]["repaired"] == [] and last_report(out)["files_processed"] == 0


def test_a_damaged_part_of_a_vanished_input_says_its_rows_are_gone(ray_local, tmp_path, models, capsys):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_rows(corpus / "a.parquet", ["a0", "a1"])
    write_rows(corpus / "b.parquet", ["b0", "b1", "b2"])
    config = write_config(tmp_path, corpus, sentiment(models))
    assert main(["--config", config]) == 0
    assert not (out / "__staging").exists(), "a successful run leaves no staging folder"
    (corpus / "b.parquet").unlink()
    capsys.readouterr()
    assert main(["--config", config]) == 0
    assert "output holds 5 rows: 2 of the input's 2 and 3 kept from vanished input files" in capsys.readouterr().out
    assert last_report(out)["rows_kept_from_vanished_inputs"] == 3

    damage(out / by_source(out)["b.parquet"]["parts"][0]["file"], "truncated")
    assert main(["--config", config]) == 0
    assert "output holds 2 rows: 2 of the input's 2 with" in capsys.readouterr().out
    [note] = last_report(out)["input_changes"]["repaired"]
    assert "b.parquet" in note and note.endswith("its input file is gone: its rows are no longer in the output")
    assert sorted(output_table(out).column("id").to_pylist()) == ["a0", "a1"]


def test_a_job_manifest_of_the_wrong_shape_is_named(ray_local, tmp_path, models, capsys):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_rows(corpus / "a.parquet", ["a0"])
    config = write_config(tmp_path, corpus, sentiment(models))
    assert main(["--config", config]) == 0
    for wrong in ({"tasks": []}, {"columns": "text"}, {"tasks": {"sentiment": "x"}, "columns": {}}):
        (out / "__manifest" / "job.json").write_text(json.dumps(wrong))
        assert "job.json is not a job manifest" in refusal(capsys, config)
