"""How a node's cores are best split for each CPU engine: one-thread processes, or one process of all the threads.

    python -m benchmarks.cpu_engine_threads [--rows 400] [--max-length 256] [--engines openvino onnxruntime]
                                            [--dtypes float32 int8] [--calibration 300]

MiniLM on BBC articles (../shared/corpora/bbc_news/train.parquet, else the bundled sample), through the job's own
engine classes (engines/encoders.load_encoder) and builds (static int8 calibrated on --calibration other articles,
300), fed as the job feeds them: sorted by length, cut into micro-batches of the CPU token budget (driver/compute.py).
Each shape splits the rows among its processes, each started fresh; rows/s are over the span from the first process's
first micro-batch to the last one's end. Shapes, with `cores` the machine's CPUs:

  <cores>x1          one-thread processes, one per core: the job's CPU pools (driver/compute.py)
  1x<cores>          one process of `cores` threads
  <cores>x1 pinned   OpenVINO only: one-thread processes with OpenVINO's default thread pinning, which the job
                     turns off (engines/openvino_models.py)

Results: benchmarks/results/cpu-engine-threads-<rows>.json.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

from benchmarks.common import corpus_rows, minilm_path, print_table, save
from benchmarks.cpu_engines import CALIBRATION, build

AUTO_CLASS = "AutoModel"


def run_share(args: tuple[str, str, str, int, bool, list[str], int, int]) -> tuple[float, float]:
    """One process's share of the rows on `engine`: the perf-counter span of its micro-batches."""
    engine, dtype, folder, threads, pinned, texts, max_length, budget = args
    import transformers

    from nlp_tasks.batching import MicroBatcher
    from nlp_tasks.engines.encoders import OUTPUT_NAMES, encoder_input_names, engine_class

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
    names = encoder_input_names(tokenizer)
    model = engine_class(engine)(Path(folder), dtype, threads, names, OUTPUT_NAMES[AUTO_CLASS])
    if pinned:
        import openvino

        model.compiled = openvino.Core().compile_model(f"{folder}/model.xml", "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    features = [{name: encoded[name][row] for name in names} for row in range(len(texts))]
    batcher = MicroBatcher(budget, {"input_ids": tokenizer.pad_token_id or 0})
    started = time.perf_counter()
    batcher.run(features, lambda batch: list(model(batch).last_hidden_state))
    return started, time.perf_counter()


def run_shape(engine: str, dtype: str, folder: str, processes: int, threads: int, pinned: bool, texts: list[str],
              max_length: int, budget: int) -> float:
    shares = [texts[index::processes] for index in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        spans = pool.map(run_share, [(engine, dtype, folder, threads, pinned, share, max_length, budget)
                                     for share in shares])
    return len(texts) / (max(end for _, end in spans) - min(start for start, _ in spans))


SMOKE_ARGS = ["--rows", "16", "--max-length", "32", "--calibration", "8"]
"""The smallest run that takes each path of this module (tests/bench/test_benchmarks.py runs it); its figures say nothing."""


def main(argv: list[str] | None = None) -> int:
    from nlp_tasks.batching import CPU_TOKEN_BUDGET

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--engines", nargs="+", default=["openvino", "onnxruntime"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "int8"])
    parser.add_argument("--calibration", type=int, default=CALIBRATION, help="articles static int8 is calibrated on")
    args = parser.parse_args(argv)

    cores = os.cpu_count() or 1
    table = corpus_rows(args.rows + args.calibration)
    texts, calibration = table.column("text").to_pylist()[:args.rows], table.column("text").to_pylist()[args.rows:]
    shapes = [(cores, 1, False), (1, cores, False), (cores, 1, True)]
    records, rows = [], []
    for engine in args.engines:
        for dtype in args.dtypes:
            folder = build(engine, dtype, calibration)
            for processes, threads, pinned in shapes:
                if pinned and engine != "openvino":
                    continue
                speed = run_shape(engine, dtype, folder, processes, threads, pinned, texts, args.max_length,
                                  CPU_TOKEN_BUDGET)
                shape = f"{processes}x{threads}" + (" pinned" if pinned else "")
                records.append({"engine": engine, "dtype": dtype, "shape": shape, "rows_per_s": round(speed, 1)})
                rows.append([engine, dtype, shape, round(speed, 1)])
                print(records[-1], flush=True)
    print_table(["engine", "dtype", "processes x threads", "rows/s"], rows)
    path = save(f"cpu-engine-threads-{args.rows}", {"rows": args.rows, "max_length": args.max_length,
                                                    "token_budget": CPU_TOKEN_BUDGET, "results": records})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
