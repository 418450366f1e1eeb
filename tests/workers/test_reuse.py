"""Annotations follow the text: a value the output holds for the same inputs is taken, not computed again.

The store-level tests run the keys, the cache and its merges on a local folder, without Ray or a model; the job
tests compact and repeat an annotated corpus and count the rows that reached the model (the run report's
`rows`, its `reused`), and check the output against the values the model computed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import SAMPLE, assert_close, last_report, output_table, write_config

from jobs.annotate import main
from nlp_tasks.driver import execute
from nlp_tasks.models.loading import weights_sample
from nlp_tasks.tasks.question_answering import QuestionAnsweringOptions
from nlp_tasks.tasks.seq2seq import SummarizationOptions
from nlp_tasks.tasks.text_generation import TextGenerationOptions
from nlp_tasks.workers import reuse
from nlp_tasks.workers.annotator import Reused, Rows, postprocess_rows
from nlp_tasks.workers.columns import DEFERRED_PREFIX, HELD_PREFIX, KEY_PREFIX
from nlp_tasks.workers.reuse import (
    MERGE_AT,
    Cache,
    Claims,
    Reusable,
    content_keys,
    list_cache,
    look_up,
    merge_files,
    merge_plan,
    read_cache,
    settle_deferred,
    store_computed,
)

LOCAL = fsspec.filesystem("file")
TASK = Reusable("sentiment", "0123456789abcdef")


# keys and the cache, at the store level ---------------------------------------------------------------------------


def test_a_key_is_of_the_text_the_second_input_and_the_fingerprint():
    texts = ["Rain in Paris.", "Rain in Paris.", "Sun in Rome.", None, "  "]
    keys = content_keys(TASK, texts, None).to_pylist()
    assert keys[0] == keys[1] != keys[2] and keys[3] is None and keys[4] is None
    other = Reusable("sentiment", "fedcba9876543210")
    assert content_keys(other, texts[:1], None).to_pylist() != keys[:1]
    questions = content_keys(TASK, texts[:2], ["Where?", "When?"]).to_pylist()
    assert questions[0] != questions[1] and keys[0] not in questions


def test_a_binary_question_keys_as_its_text_and_weights_retrained_in_place_key_apart(tmp_path, models):
    keys = content_keys(TASK, ["Rain."] * 4, ["What?", b"What?", "b'What?'", None]).to_pylist()
    assert keys[0] == keys[1] and len({keys[0], keys[2], keys[3]}) == 3

    copy = tmp_path / "model"
    shutil.copytree(models["text-classification"], copy)
    weights = copy / "model.safetensors"
    before = weights_sample(str(copy))
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(255 - byte for byte in data[-8:])  # retrained in place: same name, same size
    weights.write_bytes(bytes(data))
    assert weights_sample(str(copy)) != before


def test_tasks_that_sample_are_never_reused_and_a_question_column_is_their_second_input():
    assert SummarizationOptions().reusable() and not SummarizationOptions(do_sample=True).reusable()
    assert not TextGenerationOptions(do_sample=True, seed=3).reusable()
    assert QuestionAnsweringOptions(question_column="q").second_input() == "q"
    assert QuestionAnsweringOptions(question="Who?").second_input() is None


def batch_of(texts: list[str], values: list | None = None) -> pa.Table:
    """A batch as the write stage sees it: texts, keys, and the task's computed values."""
    table = pa.table({"text": texts})
    table = table.append_column(KEY_PREFIX + TASK.column, content_keys(TASK, texts, None))
    return table.append_column(TASK.column, pa.array(values or [{"label": t[:3], "score": 0.5} for t in texts]))


def test_values_stored_by_one_run_are_looked_up_by_the_next_and_only_computed_ones_are_stored(tmp_path):
    root = str(tmp_path)
    cache = Cache(root, [TASK], {})
    store_computed(batch_of(["a text", "b text", "a text"]), LOCAL, cache)
    files = list_cache(LOCAL, root, [TASK])["sentiment"]
    assert sum(len(found) for found in files.values()) <= 2
    assert read_cache(LOCAL, [path for found in files.values() for path, _ in found]).num_rows == 2

    looked = look_up(pa.table({"text": ["b text", "new text", None, "a text"]}), filesystem=LOCAL,
                     cache=Cache(root, [TASK], list_cache(LOCAL, root, [TASK])), text_column="text")
    held = looked.column(HELD_PREFIX + TASK.column).to_pylist()
    assert [value and value["label"] for value in held] == ["b t", None, None, "a t"]

    computed = looked.append_column(TASK.column, pa.array([held[0], {"label": "new", "score": 0.1}, None, held[3]]))
    store_computed(computed, LOCAL, Cache(root, [TASK], {}))
    after = list_cache(LOCAL, root, [TASK])["sentiment"]
    stored = read_cache(LOCAL, [path for found in after.values() for path, _ in found])
    assert stored.num_rows == 3, "only the computed value is added; held ones are not stored twice"


def test_a_shard_keeps_a_few_files_and_merging_keeps_every_key_once(tmp_path, monkeypatch):
    assert merge_plan([(f"f{i}", 10) for i in range(MERGE_AT)]) == []
    plan = merge_plan([("big", 10_000)] + [(f"f{i}", 10) for i in range(MERGE_AT + 3)])
    assert "big" not in plan and len(plan) == MERGE_AT + 3, "the small files merge, the big one waits"
    assert len(merge_plan([(f"f{i}", 10) for i in range(MERGE_AT + 1)])) == MERGE_AT + 1
    root = str(tmp_path)
    for round_ in range(3):  # the same texts stored three times (three killed runs), then merged
        store_computed(batch_of([f"text {i}" for i in range(40)]), LOCAL, Cache(root, [TASK], {}))
    shards = list_cache(LOCAL, root, [TASK])["sentiment"]
    monkeypatch.setattr(reuse, "MERGE_BYTES", 64)  # a few rows' values at once: a merge of many key ranges
    for shard, files in shards.items():
        merge_files(LOCAL, f"{root}/{TASK.folder}/{shard}", [path for path, _ in files])
    merged = list_cache(LOCAL, root, [TASK])["sentiment"]
    assert all(len(files) == 1 for files in merged.values())
    rows = read_cache(LOCAL, [path for files in merged.values() for path, _ in files])
    assert rows.num_rows == 40 and len(set(rows.column("key").to_pylist())) == 40
    (largest, _), = max(merged.values(), key=lambda files: files[0][1])
    keys = pq.read_table(largest).column("key").to_pylist()
    assert pq.ParquetFile(largest).metadata.num_row_groups > 1 and keys == sorted(keys), "range by range, in order"


def test_after_a_run_no_shard_holds_more_than_a_few_files_and_every_key_is_still_held(ray_local, tmp_path):
    from nlp_tasks.driver.execute import merge_cache

    root = str(tmp_path)
    for night in range(MERGE_AT + 3):  # nights of one write each: a file per shard each night
        store_computed(batch_of([f"night {night} text {i}" for i in range(64)]), LOCAL, Cache(root, [TASK], {}))
    assert max(len(files) for files in list_cache(LOCAL, root, [TASK])["sentiment"].values()) > MERGE_AT
    merge_cache(LOCAL, Cache(root, [TASK], {}))
    shards = list_cache(LOCAL, root, [TASK])["sentiment"]
    assert max(len(files) for files in shards.values()) <= MERGE_AT
    held = read_cache(LOCAL, [path for files in shards.values() for path, _ in files])
    assert held.num_rows == 64 * (MERGE_AT + 3) == len(set(held.column("key").to_pylist()))


def test_a_torn_cache_file_is_passed_over_and_its_rows_are_computed(tmp_path):
    root = str(tmp_path)
    store_computed(batch_of(["a text"]), LOCAL, Cache(root, [TASK], {}))
    (path, _), = [file for files in list_cache(LOCAL, root, [TASK])["sentiment"].values() for file in files]
    torn = Path(path)
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    looked = look_up(pa.table({"text": ["a text"]}), filesystem=LOCAL,
                     cache=Cache(root, [TASK], list_cache(LOCAL, root, [TASK])), text_column="text")
    assert HELD_PREFIX + TASK.column not in looked.column_names


def test_cache_files_of_another_shape_are_passed_over_and_merged_away(tmp_path):
    root = str(tmp_path)
    texts = [f"text {i}" for i in range(8)]
    store_computed(batch_of(texts), LOCAL, Cache(root, [TASK], {}))
    keys = content_keys(TASK, texts, None)
    folder = tmp_path / TASK.folder / "x"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"key": keys.slice(0, 2), "value": pa.array([1, 2])}), folder / "other-type.keys")
    pq.write_table(pa.table({"key": pa.array([b"k"]), "value": pa.array([1])}), folder / "binary-key.keys")
    files = [path for found in list_cache(LOCAL, root, [TASK])["sentiment"].values() for path, _ in found]
    held = read_cache(LOCAL, files, keys)
    assert held.num_rows == 8 and held.schema.field("value").type != pa.int64(), "the type most rows have"
    merge_files(LOCAL, str(folder), files)
    (merged, _), = [file for found in list_cache(LOCAL, root, [TASK])["sentiment"].values() for file in found]
    assert read_cache(LOCAL, [merged]).num_rows == 8


def test_the_first_batch_to_miss_a_key_claims_it_and_later_ones_learn_where_it_was_stored():
    claims = Claims()
    assert claims.claim([b"a", b"b"]) == [True, True]
    assert claims.claim([b"a", b"c"]) == [False, True], "a: claimed, not stored yet"
    claims.stored([([b"a", b"z"], "cache/1.keys")])
    assert claims.claim([b"a", b"b"]) == ["cache/1.keys", False]
    assert claims.where([b"a", b"b", b"z"]) == ["cache/1.keys", None, None], "z was never claimed"


def test_an_input_column_named_as_a_stage_column_is_refused(tmp_path, models, capsys):
    (tmp_path / "corpus").mkdir()
    pq.write_table(pa.table({"id": ["a"], "text": ["Rain."], "__held.sentiment": ["HACKED"]}),
                   tmp_path / "corpus" / "part.parquet")
    config = write_config(tmp_path, tmp_path / "corpus", {"sentiment": {"task": "sentiment-analysis",
                                                                        "model": str(models["text-classification"])}})
    assert main(["--config", config]) == 2
    assert "input column '__held.sentiment' has the name of a column the job's stages add" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_held_and_repeated_rows_need_no_forward_pass_and_take_their_values():
    texts = ["one", "two", "one", "three", None]
    batch = pa.table({"text": texts}).append_column(KEY_PREFIX + "sentiment", content_keys(TASK, texts, None))
    held = pa.array([None, None, None, {"label": "x", "score": 1.0}, None],
                    pa.struct([("label", pa.string()), ("score", pa.float64())]))
    batch = batch.append_column(HELD_PREFIX + "sentiment", held)
    settled = Rows(batch, "text").settled({"sentiment": held.type})
    assert sorted(settled) == [2, 3] and settled[2].same_as == 0 and settled[3].values["sentiment"]["label"] == "x"
    assert Rows(batch.drop_columns([KEY_PREFIX + "sentiment"]), "text").settled({"sentiment": held.type}) == {}
    mistyped = Rows(batch, "text").settled({"sentiment": pa.string()})
    assert sorted(mistyped) == [2] and mistyped[2].same_as == 0, "a held value of another type is not taken"

    class Adapter:
        def postprocess(self, text, segments, outputs):
            return {"label": text, "score": 0.0}

    results = [([], []), ([], []), settled[2], settled[3], Reused(same_as=None)]
    values, errors = postprocess_rows(Adapter(), "sentiment", results, texts)
    assert [value and value["label"] for value in values] == ["one", "two", "one", "x", None]
    assert errors == [None] * 5


def test_a_row_waits_for_another_only_where_each_of_its_columns_is_held_or_deferred():
    texts = ["one", "two", "three"]
    kind = pa.struct([("label", pa.string()), ("score", pa.float64())])
    batch = pa.table({"text": texts})
    for column in ("a", "b"):
        batch = batch.append_column(KEY_PREFIX + column, content_keys(Reusable(column, "f" * 16), texts, None))
    batch = batch.append_column(HELD_PREFIX + "b", pa.array([None, {"label": "x", "score": 1.0}, None], kind))
    batch = batch.append_column(DEFERRED_PREFIX + "a", pa.array([True, True, False]))
    settled = Rows(batch, "text").settled({"a": kind, "b": kind})
    assert sorted(settled) == [1], "row 0: b neither held nor deferred, so the row runs; row 2 runs"
    assert settled[1].deferred and settled[1].values == {"b": {"label": "x", "score": 1.0}}


def test_the_write_stage_leaves_waiting_only_the_rows_still_without_a_value():
    texts = ["one", "one", "two"]
    batch = pa.table({"text": texts, "sentiment": pa.array([1.0, 1.0, None])})
    batch = batch.append_column(KEY_PREFIX + TASK.column, content_keys(TASK, texts, None))
    batch = batch.append_column(DEFERRED_PREFIX + TASK.column, pa.array([False, True, True]))
    settled = settle_deferred(batch, LOCAL, Cache("unused", [TASK], {}))
    assert settled.column(DEFERRED_PREFIX + TASK.column).to_pylist() == [False, False, True], \
        "row 1 took its batch's first row's value in the pool: no second pass for it"


# the job ------------------------------------------------------------------------------------------------------------


def sample_corpus(folder, files: int = 3, rows: int = 20) -> pa.Table:
    """`files` Parquet files of `rows` BBC articles each (distinct texts) in folder/corpus; returns their rows."""
    sample = pq.read_table(SAMPLE, columns=["id", "text"])
    sample = sample.take(sorted({text: row for row, text in enumerate(sample.column("text").to_pylist())}.values()))
    corpus = folder / "corpus"
    corpus.mkdir()
    for index in range(files):
        pq.write_table(sample.slice(index * rows, rows), corpus / f"part-{index}.parquet")
    return sample.slice(0, files * rows)


def two_tasks(models) -> dict:
    return {"sentiment": {"task": "sentiment-analysis", "model": str(models["text-classification"])},
            "embedding": {"task": "feature-extraction", "model": str(models["token-classification"])}}


def run(folder, models, stages: str = "fused", **output) -> dict:
    config = write_config(folder, folder / "corpus", two_tasks(models), keep_order=True,
                          output={"vanished_inputs": "remove", **output}, compute={"stages": stages})
    assert main(["--config", config]) == 0
    return last_report(folder / "out")


def values(out) -> pa.Table:
    return output_table(out).select(["id", "sentiment", "embedding"]).sort_by("id")


@pytest.mark.parametrize("stages", ["fused", "split"])
def test_a_compacted_parquet_input_runs_the_model_on_no_row_and_equals_a_fresh_run(ray_local, tmp_path, models,
                                                                                 capsys, stages):
    rows = sample_corpus(tmp_path)
    first = run(tmp_path, models, stages)
    assert {task: first["throughput"][task]["rows"] for task in ("sentiment", "embedding")} == {
        "sentiment": 60, "embedding": 60}
    before = values(tmp_path / "out")

    for path in sorted((tmp_path / "corpus").glob("part-*.parquet")):  # compacted: one file, the others removed
        path.unlink()
    pq.write_table(rows, tmp_path / "corpus" / "compacted.parquet")
    capsys.readouterr()
    second = run(tmp_path, models, stages)
    printed = capsys.readouterr().out
    for task in ("sentiment", "embedding"):
        assert second["throughput"][task]["rows"] == 0 and second["throughput"][task]["reused"] == 60
        assert f"{task}: 0 rows computed, 60 reused" in printed
    index = (tmp_path / "out" / "__reports" / "index.html").read_text()
    assert "sentiment: 0 computed, 60 reused" in index and "sentiment: 60 computed, 0 reused" in index
    assert "rows reused" in max((tmp_path / "out" / "__reports").glob("run-*.html")).read_text()
    after = values(tmp_path / "out")
    assert after.equals(before), "the reused values are the ones the model computed, value for value"
    if stages == "split":
        return

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "corpus").mkdir()
    pq.write_table(rows, fresh / "corpus" / "compacted.parquet")
    run(fresh, models, reuse=False)
    theirs = values(fresh / "out")
    assert after.column("id").equals(theirs.column("id"))
    assert [row["label"] for row in after.column("sentiment").to_pylist()] == \
        [row["label"] for row in theirs.column("sentiment").to_pylist()]
    assert_close(after.column("embedding").to_pylist(), theirs.column("embedding").to_pylist())


def test_a_new_file_of_repeated_texts_runs_the_model_on_the_unseen_ones_only(ray_local, tmp_path, models):
    rows = sample_corpus(tmp_path, files=1, rows=24)
    run(tmp_path, models)
    texts = rows.column("text").to_pylist()
    seen, unseen = texts[:10], [f"A new article, number {i}." for i in range(4)]
    repeated = seen + [text for text in unseen for _ in range(2)]  # each unseen text twice, side by side
    pq.write_table(pa.table({"id": [f"new-{i}" for i in range(len(repeated))], "text": repeated}),
                   tmp_path / "corpus" / "new.parquet")
    report = run(tmp_path, models)
    for task in ("sentiment", "embedding"):
        assert report["throughput"][task]["rows"] == 4 and report["throughput"][task]["reused"] == 14
    by_text: dict[str, list] = {}
    for row in output_table(tmp_path / "out").select(["text", "embedding"]).to_pylist():
        by_text.setdefault(row["text"], []).append(row["embedding"])
    assert len(by_text) == 24 + 4 and sum(map(len, by_text.values())) == 24 + 18
    assert all(embedding == embeddings[0] for embeddings in by_text.values() for embedding in embeddings)


def night_of_repeats(folder) -> None:
    """Three files of one night, 42 rows of 12 distinct texts, repeated within files and across them."""
    sample = sample_corpus(folder, files=1, rows=12)
    (folder / "corpus" / "part-0.parquet").unlink()
    texts = sample.column("text").to_pylist()
    for index, file_texts in enumerate([texts + texts[:6], texts[6:] + texts[::-1], texts[::2]]):
        pq.write_table(pa.table({"id": [f"{index}-{row}" for row in range(len(file_texts))], "text": file_texts}),
                       folder / "corpus" / f"part-{index}.parquet")


def annotated_night(folder, models, stages: str = "fused", **output) -> tuple[dict, pa.Table]:
    config = write_config(folder, folder / "corpus", two_tasks(models), keep_order=True,
                          compute={"batch_size": 4, "stages": stages}, output=output)
    assert main(["--config", config]) == 0
    return last_report(folder / "out"), output_table(folder / "out").select(
        ["id", "text", "sentiment", "embedding"]).sort_by("id")


def test_repeats_across_batches_and_files_of_one_night_run_the_model_once_each(ray_local, tmp_path, models,
                                                                                monkeypatch):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    night_of_repeats(fresh)
    _, theirs = annotated_night(fresh, models, reuse=False)
    assert theirs.num_rows == 42

    class Unheard(Claims):
        """Claims never told where values were stored: every repeat waits for the run's second pass."""

        def stored(self, files):
            pass

    for name, claims, stages in [("told", Claims, "fused"), ("unheard", Unheard, "fused"), ("split", Claims, "split")]:
        monkeypatch.setattr(execute, "Claims", claims)
        folder = tmp_path / name
        folder.mkdir()
        night_of_repeats(folder)
        report, ours = annotated_night(folder, models, stages)
        for task in ("sentiment", "embedding"):
            assert (report["throughput"][task]["rows"], report["throughput"][task]["reused"]) == (12, 30), name
        assert ("annotate_again" in report["time_s"]) == (name == "unheard")
        assert ours.select(["id", "text"]).equals(theirs.select(["id", "text"]))
        assert ours.column("sentiment").to_pylist() == theirs.column("sentiment").to_pylist()
        assert_close(ours.column("embedding").to_pylist(), theirs.column("embedding").to_pylist())
