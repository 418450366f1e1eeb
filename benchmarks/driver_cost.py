"""The driver's own CPU per 1,000 rows: the job against Ray Data's plain read -> map_batches -> write_parquet.

    python -m benchmarks.driver_cost [--rows 20000] [--files 8]

One process, one embedded local Ray, the same Parquet files, the same model in the same actor pool:
the driver's CPU time (RUSAGE_SELF: the process with all its threads, Ray Data's executor included)
is measured around each run, after a warm-up run of each on one file. The model is a one-layer BERT
with random weights and MiniLM's tokenizer (mean-pooled embeddings of --max-length tokens), so that
inference is cheap and rows reach the driver as fast as the pipeline can move them: the driver's
CPU per row then bounds how many rows per second one job can coordinate, whatever the cluster size.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from benchmarks.common import corpus_rows, print_table, random_bert, save, write_files

SMOKE_ARGS = ["--rows", "64", "--files", "2", "--repeats", "1", "--batch-size", "16", "--max-length", "16"]
"""The smallest run that takes each path of this module (tests/bench/test_benchmarks.py runs it); its figures say nothing."""

ACTORS = 2


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Embed:
    """The documented Ray Data pattern: a callable class that loads the model once and embeds each batch."""

    def __init__(self, model: str, max_length: int):
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(1)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModel.from_pretrained(model).eval()
        self.max_length = max_length

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        inputs = self.tokenizer(batch.column("text").to_pylist(), truncation=True, max_length=self.max_length,
                                padding=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1)
        pooled = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
        return batch.append_column("embedding", pa.array(list(pooled), pa.list_(pa.float32(), pooled.shape[1])))


def run_plain(folder: Path, out: Path, model: str, max_length: int, batch: int) -> None:
    import ray

    dataset = ray.data.read_parquet(str(folder)).map_batches(
        Embed, fn_constructor_kwargs={"model": model, "max_length": max_length}, batch_format="pyarrow",
        batch_size=batch, num_cpus=0.5, compute=ray.data.ActorPoolStrategy(min_size=ACTORS, max_size=ACTORS))
    dataset.write_parquet(str(out))


def run_job(folder: Path, out: Path, model: str, max_length: int, batch: int) -> None:
    from nlp_tasks.config import parse_config
    from nlp_tasks.driver.job import run_job as job

    job(parse_config({
        "input": {"path": str(folder), "id_column": "id"},
        "output": {"path": str(out)},
        "tasks": {"embedding": {"task": "feature-extraction", "model": model, "max_length": max_length}},
        "compute": {"min_actors": ACTORS, "max_actors": ACTORS, "num_cpus_per_actor": 0.5, "torch_threads": 1,
                    "batch_size": batch, "token_budget": batch * max_length},
    }))


VARIANTS = {"ray-plain": run_plain, "job": run_job}


def measure(variant: str, folder: Path, out: Path, model: str, args: argparse.Namespace) -> tuple[float, float]:
    """Driver CPU seconds and wall seconds of one run."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    VARIANTS[variant](folder, out, model, args.max_length, args.batch_size)
    return cpu_seconds() - cpu, time.perf_counter() - wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256, help="rows per batch (and block) in both plans")
    parser.add_argument("--repeats", type=int, default=2, help="measured runs of each variant, alternating")
    args = parser.parse_args(argv)

    import ray

    ray.init(address="local", include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    measured: dict[str, list[tuple[float, float]]] = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        model = str(random_bert(work / "model", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64))
        table = corpus_rows(args.rows)
        folder = write_files(table, work / "corpus", args.files)
        warmup = write_files(table.slice(0, 512), work / "warmup", 1)
        for variant in VARIANTS:
            measure(variant, warmup, work / f"warmup-{variant}", model, args)
        for repeat in range(args.repeats):
            for variant in VARIANTS:
                measured[variant].append(measure(variant, folder, work / f"{variant}-{repeat}", model, args))
    ray.shutdown()

    per_1000 = {variant: min(cpu for cpu, _ in runs) / args.rows * 1000 for variant, runs in measured.items()}
    rows = [[variant, f"{per_1000[variant] * 1000:.1f}", f"{1000 / per_1000[variant]:,.0f}",
             f"{min(wall for _, wall in runs):.1f}"] for variant, runs in measured.items()]
    print_table(["variant", "driver CPU ms / 1,000 rows", "rows/s one driver core can coordinate", "wall s"], rows)
    ratio = per_1000["job"] / per_1000["ray-plain"]
    allowed = 1.5 * per_1000["ray-plain"] + 0.010
    print(f"job / plain: {ratio:.2f} (target: at most 1.5x plain + 10 ms per 1,000 rows = {allowed * 1000:.1f} ms)")
    path = save(f"cpu-driver-cost-batch{args.batch_size}", {
        "parameters": vars(args) | {"actors": ACTORS},
        "driver_cpu_ms_per_1000_rows": {variant: round(value * 1000, 2) for variant, value in per_1000.items()},
        "runs": {variant: [{"driver_cpu_s": round(cpu, 3), "wall_s": round(wall, 2)} for cpu, wall in runs]
                 for variant, runs in measured.items()},
        "job_over_plain": round(ratio, 3), "target_met": per_1000["job"] <= allowed,
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
