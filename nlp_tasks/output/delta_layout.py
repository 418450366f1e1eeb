"""A Delta output's names and checks: its parts' names, the job's application transaction, its markers'
validation, the storage options delta-rs needs, and the check that deltalake is installed."""

from __future__ import annotations

import os
import re

from nlp_tasks.errors import UserError
from nlp_tasks.output.layout import marker_problem, part_name

DELTA_LOG = "_delta_log"
PART_NAMES = "part-{unit}-{first:012d}-{nonce}.parquet"
DELTA_PART = re.compile(r"^part-([0-9a-f]{16})-(\d{12})-([0-9a-f]{8})\.parquet$")
"""The names of this job's parts in a table: nothing else in the folder is ever deleted."""


class DeltaUnavailable(UserError):
    """A Delta table was asked for and the deltalake package is not installed."""


def require_deltalake(key: str) -> None:
    try:
        import deltalake  # noqa: F401
    except ImportError:
        raise DeltaUnavailable(f"{key} names a Delta Lake table, which needs the deltalake package: "
                               "pip install 'nlp-tasks[delta]'") from None


def storage_options(uri: str) -> dict[str, str]:
    """delta-rs's options for `uri`: credentials and endpoint come from the environment (AWS_*), as for s3fs. On
    S3 a commit is made safe against a concurrent writer by a conditional PUT (`If-None-Match`, which AWS S3,
    R2, MinIO and moto honour), unless a locking provider (DynamoDB, AWS_S3_LOCKING_PROVIDER) is configured."""
    if not uri.startswith(("s3://", "s3a://")):
        return {}
    options = {} if os.environ.get("AWS_S3_LOCKING_PROVIDER") else {"aws_conditional_put": "etag"}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    if endpoint.startswith("http://"):
        options["AWS_ALLOW_HTTP"] = "true"
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
    return options


APP_ID = "nlp-tasks"
"""The Delta application transaction that numbers this job's commits to a table."""


def delta_marker_problem(unit: str, marker: dict) -> str | None:
    """What makes parsed JSON not a Delta unit marker: a marker (layout.marker_problem) whose parts are this
    unit's Delta parts, with its transaction number."""
    if not (isinstance(marker.get("txn"), int) and marker["txn"] >= 0):
        return "no commit number"
    parts = marker.get("parts")
    if isinstance(parts, list):
        named = []
        for part in parts:
            match = DELTA_PART.match(str(part.get("file"))) if isinstance(part, dict) else None
            if not match or match.group(1) != unit or int(match.group(2)) != part.get("first"):
                return f"part {part!r} is not one of this unit's parts"
            named.append({**part, "file": part_name(unit, part["first"])})
        marker = {**marker, "parts": named}
    return marker_problem(unit, marker)
