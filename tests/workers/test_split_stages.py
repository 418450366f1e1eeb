"""Split stages: CPU tasks tokenize and postprocess, the actors only run the model, and the output is the fused one."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import tiny_models
from helpers import write_config

from jobs.annotate import main
from nlp_tasks.config import ComputeConfig, TaskSpec
from nlp_tasks.driver.compute import group_by_model
from nlp_tasks.workers.annotator import Annotator
from nlp_tasks.workers.columns import CALLS_COLUMN, INPUTS_PREFIX, RESULTS_PREFIX, SEGMENTS_PREFIX
from nlp_tasks.workers.stages import ModelStage, postprocess, tokenize


def tasks_of(models) -> dict:
    return {
        "sentiment": {"task": "sentiment-analysis", "model": str(models["text-classification"]), "top_k": 2},
        "entities": {"task": "ner", "model": str(models["token-classification"])},
        "embedding": {"task": "feature-extraction", "model": str(models["token-classification"])},
        "topics": {"task": "zero-shot-classification", "model": str(models["zero-shot-classification"]),
                   "candidate_labels": ["sports", "politics"]},
        "summary": {"task": "summarization", "model": str(models["seq2seq"]), "max_new_tokens": 6},
    }


@pytest.mark.slow
def test_split_stages_write_what_the_fused_actors_write(ray_local, tmp_path, models):
    """Three pools, as a job runs them: tokens shared by two pools of one model, a head fitted on examples (which
    the postprocess stage takes), generation; unusable rows. Pairs and tasks of several models on one tokenizer
    are the next test's, in-process."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    texts = tiny_models.sample_texts() + [None, "", "\u200b"]
    for part in range(2):  # distinct usable texts: the fused actors and the split stages compute every one
        part_texts = [f"{text} ({part})" if text and text.strip("\u200b") else text for text in texts]
        pq.write_table(pa.table({"id": [f"{part}-{i}" for i in range(len(texts))], "text": part_texts}),
                       folder / f"part-{part}.parquet")
    examples = tmp_path / "examples.parquet"
    pq.write_table(pa.table({"text": texts[:8], "label": ["a", "b"] * 4}), examples)
    tasks = {**{column: task for column, task in tasks_of(models).items() if column in ("entities", "embedding",
                                                                                        "summary")},
             "labelled": {"task": "embedding-classification", "head": "logistic",
                          "model": str(models["token-classification"]), "examples": {"path": str(examples)}}}
    outputs, reports = {}, {}
    for stages in ("fused", "split"):
        (tmp_path / stages).mkdir()
        config = write_config(tmp_path / stages, folder, tasks, input={"text_column": "text"},
                              compute={"token_budget": 512, "actor_concurrency": 2, "stages": stages})
        assert main(["--config", config]) == 0
        outputs[stages] = pads.dataset(tmp_path / stages / "out", format="parquet").to_table().sort_by("id")
        [report] = (tmp_path / stages / "out" / "__reports").glob("*.json")
        reports[stages] = json.loads(report.read_text())
    assert outputs["split"].num_rows == 2 * len(texts)
    assert outputs["split"].equals(outputs["fused"])
    assert not [name for name in outputs["split"].column_names if name.startswith("__")]
    pools = {actor["pool"] for actor in reports["split"]["actors"]}
    assert {"tokenize", "entities", "embedding+labelled", "embedding+labelled postprocess", "summary",
            "summary postprocess"} <= pools
    assert outputs["split"].column("labelled").drop_null().to_pylist()[0]["labels"][0] in ("a", "b")
    for task in ("entities", "embedding", "summary", "labelled"):
        assert reports["split"]["throughput"][task]["rows"] == reports["fused"]["throughput"][task]["rows"] > 0
        assert reports["split"]["throughput"][task]["tokens"] == reports["fused"]["throughput"][task]["tokens"]


def test_tasks_of_several_models_on_one_tokenizer_share_their_tokens(models):
    """The tiny BERTs share one tokenizer: sentiment, NER and embeddings read one segments column (tokenized with
    NER's offsets), zero-shot pairs each text with hypotheses and keeps its own. Each postprocess keeps exactly the
    segments a later pool reads (the last keeps none), and the rows come out in their order with the values and
    errors the fused actors give them."""
    compute = ComputeConfig(device="cpu", token_budget=256)
    specs = {column: TaskSpec.model_validate(task) for column, task in tasks_of(models).items() if column != "summary"}
    pools = [(group, compute) for group in group_by_model(specs)]
    texts = tiny_models.sample_texts()[:6] + [None, "", "\u200b"]
    ids = [f"row-{i}" for i in range(len(texts))]
    rows = pa.table({"id": ids, "text": texts})
    table = tokenize(rows, pools=pools, text_column="text")
    segments = [name for name in table.column_names if name.startswith(SEGMENTS_PREFIX)]
    [shared] = [name for name in segments if name != SEGMENTS_PREFIX + "topics"]
    assert segments == [shared, SEGMENTS_PREFIX + "topics"]

    def read_by(group) -> str:
        return SEGMENTS_PREFIX + "topics" if "topics" in group else shared

    for index, (group, _) in enumerate(pools):
        table = ModelStage(group, compute, "text", "errors")(table)
        table = postprocess(table, specs=group, compute=compute, fitted={}, text_column="text",
                            errors_column="errors", later=pools[index + 1:])
        still_read = {read_by(later) for later, _ in pools[index + 1:]}
        kept = [name for name in table.column_names if name.startswith(SEGMENTS_PREFIX)]
        assert kept == [name for name in segments if name in still_read], f"after pool {index} ({'+'.join(group)})"
        inputs = [name for name in table.column_names if name.startswith(INPUTS_PREFIX)]
        assert inputs == [INPUTS_PREFIX + name[len(SEGMENTS_PREFIX):] for name in kept]
        assert not [name for name in table.column_names if name.startswith(RESULTS_PREFIX)]
    split = table.drop_columns([CALLS_COLUMN])  # the CPU stages record their calls, as in a job
    fused = rows
    for group, _ in pools:
        fused = Annotator(group, compute, "text", "errors")(fused)
    assert split.column("id").to_pylist() == ids, "the rows should come out in their order"
    assert split.schema.equals(fused.schema, check_metadata=True)
    for row, (ours, theirs) in enumerate(zip(split.to_pylist(), fused.to_pylist(), strict=True)):
        assert ours == theirs, ids[row]
    errors = split.column("errors").to_pylist()
    for row in range(len(texts)):
        usable = row < 6  # the sample sentences; then None, "" and a zero-width space
        assert all((split.column(column)[row].as_py() is not None) == usable for column in specs), ids[row]
        assert sorted(error["task"] for error in errors[row]) == ([] if usable else sorted(specs)), ids[row]
