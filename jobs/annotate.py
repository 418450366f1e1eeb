"""Run the annotation job: `python -m jobs.annotate --config jobs/configs/demo.yaml`.

With no cluster address this starts an embedded local Ray; with RAY_ADDRESS set, or under
`ray job submit`, it joins that cluster. Exit 0 on success; on a bad config, input or model:
exit 2 with one line naming what is wrong, before any model is loaded.
"""

from __future__ import annotations

import argparse
import logging
import sys

from nlp_tasks.config import ConfigError, load_config
from nlp_tasks.io import InputError
from nlp_tasks.logs import dropping_known_ray_noise
from nlp_tasks.report import summary

EXIT_BAD_INPUT = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.annotate", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML job config")
    parser.add_argument("--input", help="override input.path")
    parser.add_argument("--output", help="override output.path")
    parser.add_argument("--show", type=int, default=0, metavar="N", help="print N enriched rows at the end")
    return parser.parse_args(argv)


def show_rows(path: str, count: int) -> None:
    import pyarrow.dataset as pads

    table = pads.dataset(path, format="parquet").head(count)
    for row in table.to_pylist():
        print("-" * 80)
        for key, value in row.items():
            text = repr(value)
            print(f"{key:>12}: {text[:200] + ' ...' if len(text) > 200 else text}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    overrides = {key: value for key, value in (("input.path", args.input), ("output.path", args.output)) if value}
    try:
        config = load_config(args.config, overrides)
        from nlp_tasks.job import run_job

        with dropping_known_ray_noise():
            result = run_job(config)
    except (ConfigError, InputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for column, reason in result.skipped.items():
        print(f"skipped task {column!r}: {reason}")
    print(summary(result.report))
    print(f"report: {result.report_path} (and .html)")
    print(f"processed {result.files_processed} input file(s) ({result.files_done_before} already committed); "
          f"output has {result.rows_out} of {result.rows_in} rows with {', '.join(result.tasks)} "
          f"after {result.seconds:.1f} s -> {result.output_path}")
    if args.show:
        show_rows(result.output_path, args.show)
    return 0


if __name__ == "__main__":
    sys.exit(main())
