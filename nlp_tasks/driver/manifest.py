"""What produced an output: the job manifest (`__manifest/job.json`) and the fingerprints that say when a task's
column, or the whole output, is no longer what this config would compute."""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from typing import Any

from nlp_tasks.config import JobConfig, TaskSpec
from nlp_tasks.driver.examples import LabelledTexts
from nlp_tasks.models.loading import model_fingerprint
from nlp_tasks.secrets import redact


def fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def job_manifest(config: JobConfig, tasks: dict[str, TaskSpec], examples: dict[str, LabelledTexts]) -> dict:
    """What produced an output, and fingerprints of everything that changes its values: per task (its model,
    options and labelled examples) and for the whole job."""
    entries = {}
    for column, spec in tasks.items():
        entry = {
            "task": spec.task, "model": redact(spec.model), "revision": spec.revision,
            "options": json.loads(redact(json.dumps(spec.options.model_dump(mode="json")))),
            "model_fingerprint": model_fingerprint(spec.model, spec.revision),
        }
        if column in examples:
            entry["examples"] = {"rows": len(examples[column].texts), "sha256": examples[column].sha256}
        entries[column] = {**entry, "fingerprint": fingerprint([entry, config.input.text_column])}
    columns = {"text": config.input.text_column, "id": config.input.id_column or config.output.generated_id_column,
               "errors": config.output.errors_column, "partitioning": config.input.partitioning}
    return {
        "fingerprint": fingerprint([entries, columns]), "tasks": entries, "columns": columns,
        "versions": {name: version(name) for name in ("nlp-tasks", "ray", "transformers", "torch")},
    }


def job_change(previous: dict, job: dict) -> str | None:
    """Why an output made by `previous` cannot be resumed by `job` (None if it can). Tasks may differ: each
    committed file's marker says which tasks' columns it holds, and a run computes the missing ones."""
    before, now = previous.get("columns", {}), job["columns"]
    changed = sorted(key for key in set(before) | set(now) if before.get(key) != now.get(key))
    return f"was produced with other columns (changed: {', '.join(changed)})" if changed else None
