"""How many CPU cores it takes to feed a GPU: the split stages' CPU work, per core, on BBC rows.

    python -m benchmarks.cpu_stages [--rows 4096] [--batch-size 512] [--max-length 512]

With `stages: split` the tokenize stage (CPU tasks) turns text into units for a classifier and an
NER model on one tokenizer (one tokenization, with NER's offsets), and the GPU actor's Python per
batch is reading their model inputs (Arrow lists of int32) and padding its micro-batches (under the GIL, while its other
batches run on the GPU). This times both, one core, with MiniLM's WordPiece tokenizer (BERT-base's
vocabulary) on model skeletons: rows/s and tokens/s per core, and the actor's milliseconds per
batch. Entity grouping, the NER postprocess stage's work, is `ner_grouping.py`'s. Results:
benchmarks/results/cpu-stages.json.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import corpus_rows, minilm_path, print_table, save

SMOKE_ARGS = ["--rows", "8", "--batch-size", "4", "--max-length", "64"]
"""The smallest run that takes each path of this module (tests/bench/test_benchmarks.py runs it); its figures say nothing."""


def main(argv: list[str] | None = None) -> int:
    from nlp_tasks.batching import group_micro_batches, pad_features
    from nlp_tasks.config import ComputeConfig, TaskSpec
    from nlp_tasks.workers.columns import INPUTS_PREFIX
    from nlp_tasks.workers.stages import SKELETONS, pending_from_inputs, tokenize

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--token-budget", type=int, default=65536, help="padded tokens per GPU micro-batch")
    args = parser.parse_args(argv)
    model, compute = minilm_path(), ComputeConfig(device="cpu")
    pools = [({"label": TaskSpec.model_validate({"task": "text-classification", "model": model,
                                                 "max_length": args.max_length})}, compute),
             ({"entities": TaskSpec.model_validate({"task": "ner", "model": model,
                                                    "max_length": args.max_length})}, compute)]
    for pool in pools:
        SKELETONS.get(*pool)  # loaded once per worker process: not what a batch costs
    table = corpus_rows(args.rows)
    batches = [table.slice(start, args.batch_size) for start in range(0, table.num_rows, args.batch_size)]
    started = time.perf_counter()
    tokenized = [tokenize(batch, pools=pools, text_column="text") for batch in batches]
    tokenize_s = time.perf_counter() - started
    [inputs] = [name for name in tokenized[0].column_names if name.startswith(INPUTS_PREFIX)]
    read_s = pad_s = 0.0
    tokens = padded = 0
    for batch in tokenized:
        started = time.perf_counter()
        features = [unit for row in pending_from_inputs(batch.column(inputs)) for unit in row]
        read_s += time.perf_counter() - started
        lengths = [len(unit["input_ids"]) for unit in features]
        started = time.perf_counter()
        for group in group_micro_batches(lengths, args.token_budget):
            pad_features([features[i] for i in group], {"input_ids": 0})
            padded += len(group) * lengths[group[0]]
        pad_s += time.perf_counter() - started
        tokens += sum(lengths)
    bytes_per_row = tokenized[0].column(inputs).nbytes / batches[0].num_rows
    results = {
        "tokenize_rows_per_s_per_core": round(table.num_rows / tokenize_s),
        "tokenize_tokens_per_s_per_core": round(tokens / tokenize_s),
        "tokens_per_row": round(tokens / table.num_rows, 1),
        "inputs_bytes_per_row": round(bytes_per_row),
        "actor_read_inputs_ms_per_batch": round(1000 * read_s / len(batches), 2),
        "actor_pad_ms_per_batch": round(1000 * pad_s / len(batches), 2),
        "padding_share": round(1 - tokens / padded, 4),
    }
    print_table(["figure", "value"], [[key, value] for key, value in results.items()])
    print(f"wrote {save('cpu-stages', {'parameters': vars(args), 'results': results})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
