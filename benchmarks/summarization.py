"""Summarization throughput of one actor: documents/s and generated tokens/s, truncate vs map-reduce.

    python -m benchmarks.summarization [--model PATH_OR_HUB_ID] [--docs 32] [--long-text chunk truncate]
                                       [--max-new-tokens 60] [--num-beams 1] [--device auto] [--token-budget 16384]

Runs the job's actor class (`Annotator`, model loading included, no Ray) on the first `--docs`
articles of the BBC corpus (../shared/corpora/bbc_news/train.parquet, else the bundled sample),
in batches of `--batch-size` rows as Ray would hand them over, once per `--long-text` mode.
Generated tokens are counted at the adapter's forward: every position after the decoder start
token that is not padding, over all map-reduce levels. Without `--model` it uses the tiny BART
of tests/tiny_models.py: an offline smoke run whose numbers say nothing about real checkpoints.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
CORPORA = (REPO.parent / "shared/corpora/bbc_news/train.parquet", REPO / "data/bbc_sample.parquet")
COLUMN = "summary"


def tiny_bart() -> str:
    sys.path.insert(0, str(REPO / "tests"))
    import tiny_models

    return str(tiny_models.build_seq2seq(Path(tempfile.mkdtemp(prefix="bench-bart-"))))


def run(model: str, mode: str, texts: list[str], args: argparse.Namespace) -> dict:
    """Summarize `texts` in batches of args.batch_size; throughput and what map-reduce did."""
    import pyarrow as pa

    from nlp_tasks.annotate import Annotator
    from nlp_tasks.config import ComputeConfig, TaskSpec

    spec = TaskSpec.model_validate({"task": "summarization", "model": model, "long_text": mode,
                                    "max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams})
    compute = ComputeConfig(device=args.device, token_budget=args.token_budget, num_cpus_per_actor=args.threads)
    annotator = Annotator({COLUMN: spec}, compute, "text", "errors")
    adapter = annotator.adapters[COLUMN]
    pad, forward = adapter.tokenizer.pad_token_id, adapter.forward
    counts = Counter()

    def counting_forward(inputs):
        sequences = forward(inputs)
        counts["windows"] += len(sequences)
        counts["generated_tokens"] += sum(int((sequence[1:] != pad).sum()) for sequence in sequences)
        return sequences

    adapter.forward = counting_forward
    started = time.perf_counter()
    values = []
    for start in range(0, len(texts), args.batch_size):
        values += annotator(pa.table({"text": texts[start:start + args.batch_size]})).column(COLUMN).to_pylist()
    seconds = time.perf_counter() - started
    levels = Counter(value["levels"] if isinstance(value, dict) else 1 for value in values if value is not None)
    return {
        "long_text": mode, "docs": len(texts), "seconds": round(seconds, 2),
        "docs_per_s": round(len(texts) / seconds, 2),
        "generated_tokens_per_s": round(counts["generated_tokens"] / seconds, 1),
        "windows_summarized": counts["windows"], "levels": dict(sorted(levels.items())),
        "row_errors": sum(value is None for value in values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint path or hub id (default: the tests' tiny BART)")
    parser.add_argument("--docs", type=int, default=32)
    parser.add_argument("--long-text", nargs="+", default=["truncate", "chunk"], choices=["truncate", "chunk"])
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--token-budget", type=int, default=16384)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the actor (as num_cpus_per_actor)")
    args = parser.parse_args()

    corpus = next(path for path in CORPORA if path.exists())
    texts = pq.read_table(corpus, columns=["text"]).column("text").to_pylist()[:args.docs]
    model = args.model or tiny_bart()
    words = sorted(len(text.split()) for text in texts)
    print(json.dumps({"corpus": str(corpus), "model": model, "words_median": words[len(words) // 2],
                      "words_max": words[-1]}))
    for mode in args.long_text:
        print(json.dumps(run(model, mode, texts, args)))


if __name__ == "__main__":
    main()
