"""The input is a folder as Parquet readers see it: what starts with `_` or `.` below input.path is not read, and
the run report says what was passed over; naming such a folder as input.path reads it."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as pads
import pytest
from helpers import last_report, output_table, sentiment, write_config, write_rows

from jobs.annotate import main
from nlp_tasks.config import InputConfig
from nlp_tasks.driver.inputs import inspect_input

READ = ["a.parquet", "sub/b.parquet", "sub/deeper/c.parquet", "k=v/d.parquet"]
PASSED_OVER = {
    "_temporary/": ["_temporary/0/task/t.parquet"],                 # Spark's
    ".ipynb_checkpoints/": [".ipynb_checkpoints/a-checkpoint.parquet"],
    "__staging/": ["__staging/run/0123456789abcdef-000000000000-deadbeef.parquet"],  # a killed run of this job
    "sub/.hidden/": ["sub/.hidden/h.parquet", "sub/.hidden/more/h2.parquet"],
    "sub/deeper/_tmp/": ["sub/deeper/_tmp/x.parquet"],
    "sub/deeper/.*": ["sub/deeper/.c.parquet"],
    "sub/_*": ["sub/_b.parquet"],
}


def tree(root: Path) -> Path:
    for index, name in enumerate(READ + [path for paths in PASSED_OVER.values() for path in paths]):
        write_rows(root / name, [f"{name}-{index}"])
    (root / "_SUCCESS").write_bytes(b"")
    (root / "sub" / ".b.parquet.crc").write_bytes(b"crc")
    return root


def names(root: Path, paths) -> set[str]:
    return {str(Path(path).relative_to(root)) for path in paths}


def test_discovery_reads_what_pyarrow_dataset_reads_at_every_depth(tmp_path):
    root = tree(tmp_path / "corpus")
    source = inspect_input(InputConfig(path=str(root), id_column="id"))
    found = names(root, (file.path for file in source.files))
    assert found == set(READ) == names(root, pads.dataset(root, format="parquet").files)
    assert set(source.skipped) == set(PASSED_OVER) | {"_*", "sub/.*"}
    for hidden, paths in PASSED_OVER.items():
        assert source.skipped[hidden].startswith(f"starts with '{hidden.rstrip('/').rsplit('/', 1)[-1][0]}'"), hidden
        assert source.skipped[hidden].endswith(f"{len(paths)} file(s) not read (name the folder as input.path to "
                                               "read it)"), hidden

    globbed = inspect_input(InputConfig(path=f"{root}/**/*.parquet", id_column="id"))
    assert names(root, (file.path for file in globbed.files)) == set(READ)


def test_a_skipped_folder_named_as_input_path_is_read(tmp_path):
    root = tree(tmp_path / "corpus")
    for folder in ("_temporary", "sub/.hidden", "sub/deeper/_tmp"):
        source = inspect_input(InputConfig(path=str(root / folder), id_column="id"))
        expected = {path for paths in PASSED_OVER.values() for path in paths if path.startswith(folder + "/")}
        assert names(root, (file.path for file in source.files)) == expected, folder
    single = inspect_input(InputConfig(path=str(root / "sub" / "_b.parquet"), id_column="id"))
    assert [file.path for file in single.files] == [str(root / "sub" / "_b.parquet")]


@pytest.mark.slow
def test_the_run_report_lists_what_was_not_read(ray_local, tmp_path, models, capsys):
    root = tree(tmp_path / "corpus")
    assert main(["--config", write_config(tmp_path, root, sentiment(models))]) == 0
    out = tmp_path / "out"
    expected = pads.dataset(root, format="parquet").to_table().column("id").to_pylist()
    assert sorted(output_table(out).column("id").to_pylist()) == sorted(expected) and len(expected) == len(READ)
    assert set(last_report(out)["skipped_inputs"]) == set(PASSED_OVER) | {"_*", "sub/.*"}
    assert "not read below input.path: sub/.hidden/ starts with '.'" in capsys.readouterr().out
