"""Entity grouping after the forward pass: the job's token-classification postprocessing against the pipeline's.

    python -m benchmarks.ner_grouping [--rows 400] [--o-share 0.85] [--max-length 512]

On a GPU, BERT-base's forward pass runs thousands of 512-token rows per second, so the per-row
Python that turns logits into entities sets the pace of an NER job. This times that step alone,
on one core, for the same rows and logits: the job's adapter (`postprocess`) and the
token-classification pipeline's own `postprocess`, per aggregation strategy, and checks that
both give the same entities. Logits are random with the "O" logit raised until --o-share of the
tokens are "O" (entities then come scattered, more groups per row than real NER output has).
Rows are BBC articles tokenized by MiniLM's tokenizer (BERT uncased WordPiece); no download.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from benchmarks.common import RESULTS, corpus_path, machine, minilm_path
from benchmarks.scenarios import NER_LABELS

SMOKE_ARGS = ["--rows", "4", "--max-length", "64"]
"""The smallest run that takes each path of this module (tests/bench/test_benchmarks.py runs it); its figures say nothing."""

TEXT = "text"

STRATEGIES = ("none", "simple", "first", "average", "max")


def random_logits(units: list[list[dict]], o_share: float, seed: int = 0) -> list[list[np.ndarray]]:
    """Per unit, seeded normal logits over NER_LABELS with the "O" logit raised so that o_share of tokens are O."""
    rng = np.random.default_rng(seed)
    logits = [[rng.normal(size=(len(unit["input_ids"]), len(NER_LABELS))).astype(np.float32) for unit in row]
              for row in units]
    flat = np.concatenate([unit for row in logits for unit in row])
    margin = np.delete(flat, 0, axis=1).max(axis=1) - flat[:, 0]
    bias = np.float32(np.quantile(margin, o_share))
    for row in logits:
        for unit in row:
            unit[:, 0] += bias
    return logits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ner_grouping", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--o-share", type=float, default=0.85)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--minilm-path")
    parser.add_argument("--out", default=str(RESULTS / "cpu-ner-grouping.json"))
    args = parser.parse_args(argv)

    import torch
    import transformers

    from nlp_tasks.tasks.base import LoadedModel
    from nlp_tasks.tasks.token_classification import TokenClassification, TokenClassificationOptions, pipeline_entities

    torch.set_num_threads(1)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.minilm_path or minilm_path())
    tokenizer.model_max_length = args.max_length
    config = transformers.BertConfig(  # postprocessing needs only the labels; the weights never run
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        num_labels=len(NER_LABELS), id2label=dict(enumerate(NER_LABELS)),
        label2id={label: i for i, label in enumerate(NER_LABELS)},
    )
    loaded = LoadedModel(tokenizer, transformers.BertForTokenClassification(config).eval(), torch.device("cpu"))
    pipeline = transformers.TokenClassificationPipeline(model=loaded.model, tokenizer=tokenizer, device="cpu")
    corpus = corpus_path()
    texts = pq.read_table(corpus, columns=[TEXT]).column(TEXT).to_pylist()[:args.rows]

    results = []
    for strategy in STRATEGIES:
        options = TokenClassificationOptions(aggregation_strategy=strategy, max_length=args.max_length)
        adapter = TokenClassification(loaded, options)
        units = adapter.preprocess(texts, None)
        logits = random_logits(units, args.o_share)
        start = time.perf_counter()
        ours = [adapter.postprocess(text, u, o) for text, u, o in zip(texts, units, logits)]
        job_seconds = time.perf_counter() - start
        start = time.perf_counter()
        theirs = [pipeline_entities(pipeline, text, u, o, strategy, ["O"]) for text, u, o in zip(texts, units, logits)]
        pipeline_seconds = time.perf_counter() - start
        same = all(
            [(e["entity_group"], e["word"], e["start"], e["end"]) for e in a]
            == [(e.get("entity_group", e.get("entity")), e["word"], e["start"], e["end"]) for e in b]
            and np.allclose([e["score"] for e in a], [e["score"] for e in b], atol=1e-5)
            for a, b in zip(ours, theirs)
        )
        results.append({
            "strategy": strategy, "rows": len(texts), "entities_per_row": float(np.mean([len(a) for a in ours])),
            "job_rows_per_s": len(texts) / job_seconds, "pipeline_rows_per_s": len(texts) / pipeline_seconds,
            "speedup": pipeline_seconds / job_seconds, "same_entities": same,
        })
        r = results[-1]
        print(f"{strategy:8} job {r['job_rows_per_s']:7.0f} rows/s   pipeline {r['pipeline_rows_per_s']:5.0f} rows/s   "
              f"{r['speedup']:5.1f}x   {r['entities_per_row']:.0f} entities/row   same entities: {same}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine(), "benchmark": "ner_grouping", "parameters": vars(args),
                                          "corpus": str(corpus), "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["same_entities"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
