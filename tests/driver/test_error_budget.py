"""A night the model cannot do fails loudly: rows a task fails on are counted against its error budget
(`max_error_share`); a file over it is not committed, a run clearly over it stops and exits 1 naming the task, the
share and the reason; rows whose text is null or empty are the user's data and never count."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import last_report, output_table, write_config
from transformers import AutoTokenizer

from jobs.annotate import main
from nlp_tasks.config import ConfigError, parse_config
from nlp_tasks.driver.budget import ErrorBudget, lower_bound, part_tallies

UNSEEN = "<unseen>"
"""A token the broken model's tokenizer has and its embeddings do not: the model raises on every row holding it."""


def broken_model(models, folder):
    """The tiny text classifier with UNSEEN added to its tokenizer and not to its embeddings (a real model failure,
    as tests/cli/test_hostile_input.py makes it)."""
    shutil.copytree(models["text-classification"], folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens([UNSEEN])
    tokenizer.save_pretrained(folder)
    return folder


def write_file(path, name: str, texts: list) -> None:
    path.mkdir(exist_ok=True)
    pq.write_table(pa.table({"id": [f"{name}-{i}" for i in range(len(texts))], "text": pa.array(texts, pa.string())}),
                   path / f"{name}.parquet")


def test_a_sound_models_first_failures_do_not_stop_a_run_and_every_row_failing_does():
    assert lower_bound(0, 1000) == 0.0 and lower_bound(3, 1000) < 0.01
    assert lower_bound(2, 20) < 0.1 < lower_bound(8, 8)  # 2 of 20 is no proof; 8 of 8 is
    assert lower_bound(30, 100) > 0.1 and lower_bound(100, 100) < 1


def test_a_run_stops_on_proof_that_a_budget_is_blown_not_on_its_first_failures():
    failed = "model failed on this row: IndexError: x"
    budget = ErrorBudget({"s": 0.1})
    budget.count(20, {"errors": [["s", failed, 3, []]]}, ("s",))  # 15% of 20 rows: no proof of more than 10%
    assert budget.stopped is None
    budget.count(20, {"errors": [["s", failed, 10, []]]}, ("s",))  # 13 of 40
    assert budget.stopped is not None and budget.stopped.task == "s"


def test_rows_refused_for_their_own_data_count_neither_way():
    counts = {"errors": [["s", "text is null", 3, []], ["s", "model failed on this row: IndexError: x", 2, []],
                         ["other", "model failed on this row: IndexError: x", 5, []]]}
    tally = part_tallies(10, counts, ("s",))["s"]
    assert (tally.taken, tally.failed, dict(tally.reasons)) == (7, 2, {"model failed on this row: IndexError: x": 2})


@pytest.mark.parametrize("value", [-0.1, 1.5, "0.1", True, None])
def test_max_error_share_is_a_share(value):
    task = {"task": "sentiment-analysis", "model": "m", "max_error_share": value}
    with pytest.raises(ConfigError, match=r"tasks\.s\.max_error_share"):
        parse_config({"input": {"path": "in"}, "output": {"path": "out"}, "tasks": {"s": task}}, "job.yaml")


def test_a_night_the_model_cannot_do_stops_and_keeps_what_was_committed(ray_local, tmp_path, models, capsys):
    model = broken_model(models, tmp_path / "broken")
    corpus = tmp_path / "corpus"
    write_file(corpus, "good", ["Paris is big."] * 4 + [None, "", "  "] * 4)  # most rows are the user's: no text
    config = write_config(tmp_path, corpus, {"s": {"task": "sentiment-analysis", "model": str(model)}})
    assert main(["--config", config]) == 0
    committed = {path.name for path in (tmp_path / "out" / "__manifest" / "units").iterdir()}
    for name in ("bad-0", "bad-1", "bad-2", "bad-3"):
        write_file(corpus, name, [f"Paris {UNSEEN} {i}" for i in range(31)] + [None])
    capsys.readouterr()

    assert main(["--config", config]) == 1
    out, err = capsys.readouterr()
    line = next(line for line in err.splitlines() if line.startswith("error: "))
    assert line.startswith("error: task 's' failed on ") and "(100.0%; max_error_share 0.1)" in line, line
    assert "most often: model failed on this row: IndexError" in line and "the run stopped" in line, line
    assert line.removeprefix("error: ") in out  # the printed summary says the same
    report = last_report(tmp_path / "out")
    assert report["error_budget"]["stopped"] and report["error_budget"]["blown"]["task"] == "s"
    assert (report["rows_in"], report["rows_out"]) == (16 + 4 * 32, 16), "out: what the committed parts hold"
    assert report["run"]["written"][-1][1] < 4 * 32, "the run went on after the budget was clearly blown"
    page = max((tmp_path / "out" / "__reports").glob("run-*.html")).read_text()
    assert "error budget blown: task &#x27;s&#x27; failed on" in page
    assert {path.name for path in (tmp_path / "out" / "__manifest" / "units").iterdir()} == committed
    assert sorted(output_table(tmp_path / "out").column("id").to_pylist()) == sorted(f"good-{i}" for i in range(16))

    config = write_config(tmp_path, corpus, {"s": {"task": "sentiment-analysis", "model": str(model),
                                                   "max_error_share": 1}})
    assert main(["--config", config]) == 0, "the next run annotates the files not committed"
    rows = output_table(tmp_path / "out").to_pylist()
    assert len(rows) == 16 + 4 * 32
    assert last_report(tmp_path / "out")["input_changes"]["repaired"] == [], "what was committed before is intact"


def test_a_file_over_its_budget_is_not_committed(ray_local, tmp_path, models, capsys):
    """One failure in 12 rows taken: within the default budget, over a budget of 0.05, and no proof for a stop."""
    model = broken_model(models, tmp_path / "broken")
    corpus = tmp_path / "corpus"
    write_file(corpus, "one-failure", ["Paris is big."] * 11 + [f"Paris {UNSEEN}"] + [None] * 4)
    write_file(corpus, "clean", ["Paris is big."] * 16)
    task = {"task": "sentiment-analysis", "model": str(model)}
    assert main(["--config", write_config(tmp_path, corpus, {"s": task})]) == 0
    assert last_report(tmp_path / "out")["error_budget"]["tasks"]["s"] == {
        "taken": 28, "failed": 1, "share": round(1 / 28, 4), "max_error_share": 0.1}

    (tmp_path / "strict").mkdir()
    strict = write_config(tmp_path / "strict", corpus, {"s": {**task, "max_error_share": 0.05}})
    capsys.readouterr()
    assert main(["--config", strict]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "one-failure.parquet' (8.3%; max_error_share 0.05)" in line, line
    assert "the run stopped" not in line and "1 input file(s) not committed" in line, line
    out = tmp_path / "strict" / "out"
    assert sorted(output_table(out).column("id").to_pylist()) == sorted(f"clean-{i}" for i in range(16))
    assert [name.rsplit("/", 1)[-1] for name in last_report(out)["error_budget"]["files_over"]] == [
        "one-failure.parquet"]
