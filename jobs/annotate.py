"""Run the annotation job: `python -m jobs.annotate --config jobs/configs/demo.yaml`.

With no cluster address this starts an embedded local Ray; with RAY_ADDRESS set, or under
`ray job submit`, it joins that cluster. Exit 0 on success; on a bad config, input, model or
output path: exit 2 with one line naming what is wrong, before any model is loaded; when the run
cannot make the output whole: exit 1 with one line saying what to do. Nothing printed carries a
credential: every message, log line and traceback is redacted (secrets.redact).
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path

from nlp_tasks.config import load_config
from nlp_tasks.driver.commits import JobFailed
from nlp_tasks.driver.display import display_for_stderr
from nlp_tasks.driver.job import run_job
from nlp_tasks.driver.logs import dropping_known_ray_noise, quiet_ray_console, redact_logging
from nlp_tasks.driver.report import holds, index_path, summary
from nlp_tasks.errors import UserError
from nlp_tasks.secrets import redact, register_secrets

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.annotate", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML job config")
    parser.add_argument("--input", help="override input.path")
    parser.add_argument("--output", help="override output.path")
    parser.add_argument("--show", type=int, default=0, metavar="N", help="print N enriched rows at the end")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="also print Ray's own INFO and WARNING lines (its execution plan, ...)")
    return parser.parse_args(argv)


def show_rows(path: str, count: int) -> None:
    import pyarrow.dataset as pads

    table = pads.dataset(path, format="parquet").head(count)
    for row in table.to_pylist():
        print("-" * 80)
        for key, value in row.items():
            text = repr(value)
            print(f"{key:>12}: {text[:200] + ' ...' if len(text) > 200 else text}")


def how_to_read(output_format: str, path: str) -> str:
    """The readers' way in, printed after every run: DuckDB and Polars read every file below a folder (Polars refuses
    one holding more than Parquet), so they take the parts' glob; pandas, pyarrow, Spark and Ray Data skip the output's
    `__` folders and take the folder."""
    if output_format == "delta":
        return f"read it as a Delta table: {path}"
    return f"read it: {path} (pandas, pyarrow, Spark, Ray Data); {path.rstrip('/')}/*.parquet (DuckDB, Polars)"


def register_config_secrets(args: argparse.Namespace) -> None:
    """Learn the credentials of every URL on the command line and in the config file, before anything can fail."""
    register_secrets(f"{args.input or ''} {args.output or ''}")
    try:
        register_secrets(Path(args.config).read_text(errors="replace"))
    except OSError:
        pass  # load_config names the problem


def print_report(result) -> None:
    """The run's summary, and where its report and the index of all runs are."""
    for column, reason in result.skipped.items():
        print(f"skipped task {column!r}: {redact(reason)}")
    print(redact(summary(result.report)))
    print(redact(f"report of this run: {result.report_path.removesuffix('.json')}.html (data: .json)"))
    print(redact(f"all runs of this output: {index_path(result.report_path)}"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    redact_logging()
    register_config_secrets(args)
    overrides = {key: value for key, value in (("input.path", args.input), ("output.path", args.output)) if value}
    try:
        config = load_config(args.config, overrides)
        if not args.verbose:
            quiet_ray_console()
        display = display_for_stderr()  # asked before the filter puts a pipe on stderr
        with dropping_known_ray_noise(), display:
            try:
                result = run_job(config, progress=display)
            except JobFailed as error:
                if error.result is not None:  # it got as far as its report (an error budget blown)
                    print_report(error.result)
                print(f"error: {redact(str(error))}", file=sys.stderr)
                return EXIT_FAILED
    except UserError as error:
        print(f"error: {redact(str(error))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception:  # noqa: BLE001 - a bug or a storage failure: its traceback, without credentials
        print(redact(traceback.format_exc()), end="", file=sys.stderr)
        return EXIT_FAILED
    print_report(result)
    print(redact(f"processed {result.files_processed} input file(s) ({result.files_done_before} already committed); "
                 f"{holds(result.report)} with {', '.join(result.tasks)} after {result.seconds:.1f} s -> "
                 f"{result.output_path}"))
    print(redact(how_to_read(config.output.format, result.output_path)))
    if args.show:
        show_rows(result.output_path, args.show)
    return 0


if __name__ == "__main__":
    sys.exit(main())
