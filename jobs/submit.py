"""Submit the annotation job to a running Ray cluster through the Ray Jobs API.

    python -m jobs.submit --config jobs/configs/nightly.yaml [--address URL] [--input URI] [--output URI] [--wait]

This repository is uploaded as the job's working_dir (without .venv, .git, outputs and caches)
and `python -m jobs.annotate` runs in it on the cluster, so a config inside the repository is
found there under the same relative path. The packages the job imports must already be
installed on the cluster's nodes (cluster.yaml's setup_commands do that; for a local head they
are in the venv it was started from). Data paths are resolved on the cluster: on more than
one node use URIs that every node reaches (s3://...), not local paths.

The config is validated here before anything is uploaded. Exit status: 0 submitted (with
--wait: succeeded), 1 the job failed or was stopped, 2 the config is invalid. A cluster with
token authentication needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN in the environment.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from nlp_tasks.config import ConfigError, load_config
from nlp_tasks.secrets import redact, register_secrets

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
POLL_S = 2
EXCLUDES = ["/.venv/", "/.git/", "/output/", "/.whl/", "__pycache__/", "*.egg-info/", ".pytest_cache/", ".cache/"]
"""gitignore-style patterns kept out of the upload: Ray caps a working_dir at a few hundred MB."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.submit", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML job config: in this repository, or a path on the head")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS,
                        help=f"the cluster's dashboard URL (default: $RAY_ADDRESS or {DEFAULT_ADDRESS})")
    parser.add_argument("--input", help="override input.path")
    parser.add_argument("--output", help="override output.path")
    parser.add_argument("--wait", action="store_true", help="wait for the job to end, then print its logs")
    return parser.parse_args(argv)


def config_on_cluster(config: str) -> str:
    """The config's path as the job sees it: relative to the uploaded repository when inside it."""
    path = Path(config).resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def entrypoint(args: argparse.Namespace) -> str:
    command = ["python", "-m", "jobs.annotate", "--config", config_on_cluster(args.config)]
    for flag, value in (("--input", args.input), ("--output", args.output)):
        if value:
            command += [flag, value]
    return shlex.join(command)


def runtime_env() -> dict:
    # PYTHONUNBUFFERED: the driver's prints reach `ray job logs --follow` as they happen.
    return {"working_dir": str(ROOT), "excludes": EXCLUDES, "env_vars": {"PYTHONUNBUFFERED": "1"}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    register_secrets(f"{args.input or ''} {args.output or ''} {args.address}")
    try:
        register_secrets(Path(args.config).read_text(errors="replace"))
    except OSError:
        pass  # load_config names the problem
    overrides = {key: value for key, value in (("input.path", args.input), ("output.path", args.output)) if value}
    try:
        load_config(args.config, overrides)
    except ConfigError as error:
        print(f"error: {redact(str(error))}", file=sys.stderr)
        return 2

    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(args.address)
    job_id = client.submit_job(entrypoint=entrypoint(args), runtime_env=runtime_env())
    print(f"submitted job {job_id} to {redact(args.address)}")
    print(f"follow its logs with: ray job logs --follow {job_id} --address {redact(args.address)}")
    if not args.wait:
        return 0

    # Polling needs nothing beyond `requests`; streaming the logs would need ray[default]'s aiohttp.
    while not (status := client.get_job_status(job_id)).is_terminal():
        time.sleep(POLL_S)
    print(redact(client.get_job_logs(job_id)), end="")
    print(f"job {job_id}: {status.value}")
    if status != JobStatus.SUCCEEDED:
        print(f"error: {redact(client.get_job_info(job_id).message)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
