"""What a nightly run costs as the history grows: the job three nights running over N input files.

    python -m benchmarks.nights [--files 200 1000] [--store local s3] [--format parquet delta] [--new 10]
                                [--repo PATH] [--calm LOAD SECONDS] [--out NAME]

For each store (a folder on local disk; S3: moto's server on loopback behind the counting proxy of
benchmarks/s3.py), each output format and each N: N tiny Parquet input files (3 short BBC texts each, an `id`
and a `text` column), then the real job, `python -m jobs.annotate --config job.yaml`, three times, each a process
of its own ("nights"):

  first   everything is new
  quiet   nothing is new: what the job's fixed cost and its checks of what is committed come to
  new     after --new more input files (10)

One cheap task (feature-extraction on a one-layer BERT with random weights and MiniLM's tokenizer, engine
transformers, one actor), input.path and output.path on the store. Per night: the whole process's wall seconds, the
driver's peak RSS (its process alone, polled with psutil every 0.1 s; Ray's processes are not counted), the
report's phases (`time_s` of the night's `__reports/run-*.json`), on S3 the HTTP requests through the proxy by
method and by what they asked (benchmarks/s3.py `shape`: `GET bench/parquet-#/out/__manifest/units/#.json`; every
process of the night: the driver, Ray's workers), and for delta the table's version after the night.
What the benchmark itself reads or writes on S3 goes to moto directly, uncounted.
Before each night it waits for the machine's 1-minute load average to fall under --calm LOAD (other work), and a
night whose embedded Ray failed to start in Ray's 30 s (a loaded machine) is run again; each record says how long it
waited, its load before and after, and its attempts.

`--repo PATH` runs the job from another checkout (the process's working directory is PATH, so that
`python -m jobs.annotate` imports that tree's `jobs` and `nlp_tasks` before the installed ones): a baseline on an
older commit, e.g. `git worktree add ../base <commit>`. Results: benchmarks/results/cpu-nights-<stores>-<formats>-
<sizes>.json, or --out NAME.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from benchmarks.common import REPO, corpus_rows, failed, print_table, random_bert, save

SMOKE_ARGS = ["--files", "4", "--new", "2", "--store", "s3", "--format", "parquet", "delta", "--calm", "1000", "0"]
"""The smallest run that takes each path of this module but the local store's few lines (tests/bench/test_benchmarks.py
runs it): S3 alone, the store with the counting proxy; its figures say nothing."""

ROWS_PER_FILE = 3
TEXT_CHARS = 160
NIGHTS = ("first", "quiet", "new")
TIMEOUT_S = 3600
RAY_START_TIMEOUT = "The current node timed out during startup"
"""Ray's embedded node gives its raylet 30 s to register (not configurable); on a machine loaded by other work it
may not, and the job exits before annotating: such a night is run again (at most ATTEMPTS times), and says so."""
ATTEMPTS = 3


def texts(count: int) -> list[str]:
    """`count` short texts: the corpus's articles cut to their first TEXT_CHARS characters."""
    return [text[:TEXT_CHARS] for text in corpus_rows(count).column("text").to_pylist()]


class Store:
    """Where one configuration's input and output live: a local folder, or a prefix of the S3 bucket."""

    def __init__(self, kind: str, scratch: Path, name: str, upstream: str | None):
        self.kind = kind
        self.local = scratch / name
        self.local.mkdir(parents=True)
        if kind == "local":
            self.input, self.output = str(self.local / "in"), str(self.local / "out")
            (self.local / "in").mkdir()
            self.filesystem = None
        else:
            import s3fs

            from benchmarks.s3 import BUCKET, CREDENTIALS

            self.input, self.output = f"s3://{BUCKET}/{name}/in", f"s3://{BUCKET}/{name}/out"
            # moto directly, not through the proxy: what the benchmark reads and writes is not counted
            self.filesystem = s3fs.S3FileSystem(endpoint_url=upstream, key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                                secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                                                client_kwargs={"region_name": "us-east-1"}, skip_instance_cache=True)
            self.delta_options = {"AWS_ALLOW_HTTP": "true", "AWS_ENDPOINT_URL": upstream, "AWS_REGION": "us-east-1",
                                  "AWS_ACCESS_KEY_ID": CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                  "AWS_SECRET_ACCESS_KEY": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}

    def write_inputs(self, first: int, count: int) -> None:
        """Input files first .. first+count-1, ROWS_PER_FILE rows each, ids unique across files."""
        rows = texts((first + count) * ROWS_PER_FILE)
        staging = self.local / f"staging-{first}"
        staging.mkdir()
        for index in range(first, first + count):
            ids = [f"{index:06d}-{row}" for row in range(ROWS_PER_FILE)]
            table = pa.table({"id": ids, "text": rows[index * ROWS_PER_FILE:(index + 1) * ROWS_PER_FILE]})
            pq.write_table(table, staging / f"part-{index:06d}.parquet")
        for path in sorted(staging.iterdir()):
            if self.filesystem is None:
                path.rename(Path(self.input) / path.name)
            else:
                self.filesystem.put_file(str(path), f"{self.input.removeprefix('s3://')}/{path.name}")
                path.unlink()
        staging.rmdir()

    def reports(self) -> list[str]:
        """The output's run reports (JSON), oldest first."""
        folder = f"{self.output}/__reports"
        if self.filesystem is None:
            return sorted(str(path) for path in Path(folder).glob("run-*.json"))
        self.filesystem.invalidate_cache()
        try:
            return sorted(path for path in self.filesystem.ls(folder.removeprefix("s3://"), detail=False)
                          if path.rsplit("/", 1)[-1].startswith("run-") and path.endswith(".json"))
        except FileNotFoundError:
            return []

    def read(self, path: str) -> dict:
        if self.filesystem is None:
            return json.loads(Path(path).read_text())
        return json.loads(self.filesystem.cat_file(path))

    def delta_version(self) -> int | None:
        import deltalake

        if self.filesystem is None:
            return deltalake.DeltaTable(self.output).version()
        return deltalake.DeltaTable(self.output, storage_options=self.delta_options).version()


def run_night(cmd: list[str], cwd: Path, log: Path) -> tuple[float, int]:
    """Run one night's process; its wall seconds and the driver's peak RSS in bytes (polled every 0.1 s)."""
    import psutil

    peak = 0
    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(cmd, cwd=cwd, stdout=output, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        driver = psutil.Process(process.pid)
        done = threading.Event()

        def poll() -> None:
            nonlocal peak
            while not done.is_set():
                try:
                    peak = max(peak, driver.memory_info().rss)
                except psutil.Error:
                    return
                done.wait(0.1)

        sampler = threading.Thread(target=poll, daemon=True)
        sampler.start()
        try:
            returncode = process.wait(timeout=TIMEOUT_S)
        finally:
            done.set()
            sampler.join()
            if process.poll() is None:
                process.kill()
    seconds = round(time.perf_counter() - started, 2)
    if returncode:
        raise failed(" ".join(cmd), returncode, log)
    return seconds, peak


def unphased(report: dict) -> float | None:
    """The report's seconds that none of its phases holds (`*_after` entries are moments, not phases)."""
    if "seconds" not in report:
        return None
    phases = sum(seconds for phase, seconds in (report.get("time_s") or {}).items() if not phase.endswith("_after"))
    return round(report["seconds"] - phases, 2)


def wait_for_calm(load: float, limit_s: float) -> float:
    """Wait until the 1-minute load average is under `load` (other work on the machine), at most `limit_s` seconds;
    the seconds waited."""
    started = time.monotonic()
    while os.getloadavg()[0] >= load and time.monotonic() - started < limit_s:
        time.sleep(5)
    return round(time.monotonic() - started, 1)


def job_config(store: Store, output_format: str, model: str, path: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "input": {"path": store.input, "id_column": "id"},
        "output": {"path": store.output, "format": output_format},
        "tasks": {"embedding": {"task": "feature-extraction", "model": model, "max_length": 32,
                                "engine": "transformers"}},
        "compute": {"min_actors": 1, "max_actors": 1, "num_cpus_per_actor": 1, "torch_threads": 1,
                    "batch_size": 64},
    }))
    return path


def measure(kind: str, output_format: str, files: int, new: int, model: str, repo: Path, scratch: Path,
            proxy, calm: tuple[float, float]) -> list[dict]:
    """The three nights of one configuration: one record each."""
    name = f"{output_format}-{files}"
    store = Store(kind, scratch / kind, name, proxy.upstream if proxy else None)
    store.write_inputs(0, files)
    config = job_config(store, output_format, model, store.local / "job.yaml")
    records = []
    for night in NIGHTS:
        if night == "new":
            store.write_inputs(files, new)
        before = set(store.reports())
        for attempt in range(1, ATTEMPTS + 1):
            waited = wait_for_calm(*calm)
            load = os.getloadavg()[0]
            if proxy:
                proxy.take()
            log = store.local / f"{night}-{attempt}.log"
            try:
                seconds, peak = run_night([sys.executable, "-m", "jobs.annotate", "--config", str(config)], repo, log)
                break
            except SystemExit:
                if attempt == ATTEMPTS or RAY_START_TIMEOUT not in log.read_text(errors="replace"):
                    raise
                print(f"{night} night: Ray did not start in time (load {os.getloadavg()[0]:.1f}); again",
                      flush=True)
        methods, shapes = proxy.take_shapes() if proxy else (None, None)
        requests = dict(sorted(methods.items())) if proxy else None
        reports = [path for path in store.reports() if path not in before]
        report = store.read(reports[-1]) if reports else {}
        record = {
            "store": kind, "format": output_format, "files": files, "night": night,
            "input_files": files + (new if night == "new" else 0),
            "wall_s": seconds, "driver_peak_rss_mb": round(peak / 2**20, 1),
            "requests": sum(requests.values()) if requests is not None else None,
            "requests_by_method": requests,
            "requests_by_shape": dict(shapes.most_common()) if proxy else None,
            "delta_version": store.delta_version() if output_format == "delta" else None,
            "files_processed": report.get("files_processed"),
            "files_already_committed": report.get("files_already_committed"),
            "report_seconds": report.get("seconds"), "time_s": report.get("time_s"),
            "report_unphased_s": unphased(report),
            "load_1m_before": round(load, 2), "load_1m_after": round(os.getloadavg()[0], 2),
            "waited_for_calm_s": waited, "attempts": attempt,
        }
        records.append(record)
        print(json.dumps(record), flush=True)
    return records


def checkout(repo: Path) -> dict:
    """The commit the job runs from, whether its tree differs from it, and where the job's packages come from."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              check=False).stdout.rstrip("\n")

    imported = subprocess.run([sys.executable, "-c", "import jobs, nlp_tasks; print(nlp_tasks.__file__)"], cwd=repo,
                              capture_output=True, text=True, check=True).stdout.strip()
    if not Path(imported).resolve().is_relative_to(repo.resolve()):
        raise SystemExit(f"run from {repo}, the job would import nlp_tasks from {imported}")
    changed = git("status", "--porcelain", "--", "nlp_tasks", "jobs").splitlines()
    return {"path": str(repo), "commit": git("rev-parse", "HEAD"), "subject": git("log", "-1", "--format=%s")[:200],
            "uncommitted_changes": changed, "nlp_tasks_imported_from": imported}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--store", nargs="+", choices=["local", "s3"], default=["local", "s3"])
    parser.add_argument("--format", nargs="+", choices=["parquet", "delta"], default=["parquet"])
    parser.add_argument("--new", type=int, default=10, help="input files added before the third night")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout the job runs from")
    parser.add_argument("--calm", type=float, nargs=2, default=[1.5 * (os.cpu_count() or 1), 600],
                        metavar=("LOAD", "SECONDS"), help="before each night, wait until the 1-minute load average "
                        "is under LOAD, at most SECONDS (default: 1.5 per core, 600 s)")
    parser.add_argument("--out", help="results file name (default cpu-nights-<stores>-<formats>-<sizes>)")
    args = parser.parse_args(argv)

    source = checkout(args.repo)
    print(f"the job from {source['path']} at {source['commit'][:7]}"
          + (f" with {len(source['uncommitted_changes'])} uncommitted change(s)" if source["uncommitted_changes"]
             else ""), flush=True)
    records: list[dict] = []
    name = args.out or f"cpu-nights-{'-'.join(args.store)}-{'-'.join(args.format)}-{'-'.join(map(str, args.files))}"

    def write(complete: bool) -> Path:
        """The results so far (after each configuration, so that a long run stopped keeps what it measured)."""
        return save(name, {
            "parameters": {"files": args.files, "stores": args.store, "formats": args.format, "new_files": args.new,
                           "rows_per_file": ROWS_PER_FILE, "text_chars": TEXT_CHARS, "calm": args.calm},
            "job": source,
            "storage": {"local": "a temporary folder on local disk",
                        "s3": "moto's server on loopback through a counting proxy (benchmarks/s3.py)"},
            "complete": complete,
            "results": records,
        })

    with tempfile.TemporaryDirectory(prefix="bench-nights-") as folder:
        scratch = Path(folder)
        model = str(random_bert(scratch / "model", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_length=32))
        for kind in args.store:
            processes, proxy = [], None
            if kind == "s3":
                from benchmarks.s3 import start_s3

                processes, proxy = start_s3()
            try:
                for output_format in args.format:
                    for files in args.files:
                        records += measure(kind, output_format, files, args.new, model, args.repo, scratch, proxy,
                                           tuple(args.calm))
                        write(complete=False)
            finally:
                if processes:
                    from benchmarks.s3 import stop

                    stop(processes)
    print_table(["store", "format", "files", "night", "wall s", "driver RSS MB", "requests", "by method",
                 "delta version", "processed/committed", "phases s (the report's, over 0)", "unphased s"],
                [[r["store"], r["format"], r["files"], r["night"], r["wall_s"], r["driver_peak_rss_mb"],
                  "-" if r["requests"] is None else r["requests"],
                  " ".join(f"{m}:{c}" for m, c in (r["requests_by_method"] or {}).items()) or "-",
                  "-" if r["delta_version"] is None else r["delta_version"],
                  f"{r['files_processed']}/{r['files_already_committed']}",
                  " ".join(f"{phase}:{seconds}" for phase, seconds in (r["time_s"] or {}).items() if seconds),
                  r["report_unphased_s"]]
                 for r in records])
    for r in records:
        if r["requests_by_shape"]:
            print(f"\n{r['store']} {r['format']} {r['files']} files, {r['night']} night: the most frequent requests")
            for label, count in list(r["requests_by_shape"].items())[:6]:
                print(f"  {count:6d}  {label}")
    path = write(complete=True)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
