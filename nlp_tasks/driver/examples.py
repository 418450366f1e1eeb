"""Labelled examples of `embedding-classification` tasks: read and checked on the driver before the run, and the
heads fitted on them.

They are a few hundred to a few thousand short rows: the driver reads them once, so that their
content fingerprint enters the task's fingerprint (a changed example set is a changed task), and
hands them to the Ray task that fits the heads (`workers.heads.fit_heads`), unless the output keeps heads of
the same task fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from nlp_tasks.driver.compute import PoolSettings
from nlp_tasks.errors import InputError, UserError
from nlp_tasks.output.store import OutputStore
from nlp_tasks.secrets import redact
from nlp_tasks.tasks.embedding_classification import Examples
from nlp_tasks.text_checks import as_text, text_problem
from nlp_tasks.workers.heads import fit_heads


@dataclass(frozen=True)
class LabelledTexts:
    texts: list[str]
    labels: list[str]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps([self.texts, self.labels]).encode()).hexdigest()


def read_examples(column: str, examples: Examples) -> LabelledTexts:
    """The labelled texts of task `column`; a bad file, column or row fails in one line naming it."""
    import pyarrow.dataset as ds
    from fsspec.core import url_to_fs

    where = f"tasks.{column}.examples: {redact(examples.path)!r}"
    try:
        filesystem, root = url_to_fs(examples.path)
        dataset = ds.dataset(root, filesystem=filesystem, format="parquet")
        missing = [c for c in (examples.text_column, examples.label_column) if c not in dataset.schema.names]
        if missing:
            raise InputError(f"{where}: no column {missing[0]!r} (columns: {', '.join(dataset.schema.names)})")
        table = dataset.to_table(columns=[examples.text_column, examples.label_column])
    except (OSError, ValueError) as error:
        raise InputError(f"{where}: cannot read it ({type(error).__name__}: {redact(str(error))})") from None
    texts, labels = [], []
    for row, (text, label) in enumerate(zip(table.column(0).to_pylist(), table.column(1).to_pylist())):
        problem = text_problem(text) or (None if label is not None else "no label")
        if problem:
            raise InputError(f"{where}: row {row}: {problem}")
        texts.append(as_text(text))
        labels.append(str(label))
    if len(set(labels)) < 2:
        raise InputError(f"{where}: {len(texts)} rows with {len(set(labels))} label(s); a head needs at least two")
    return LabelledTexts(texts, labels)


def fitted_heads(store: OutputStore, pools: list[tuple[dict, PoolSettings]], examples: dict[str, LabelledTexts],
                 fingerprints: dict[str, str]) -> dict[str, dict]:
    """The heads of the pools' tasks with labelled examples: the output's own copy where it holds one of the same
    task fingerprint (a nightly rerun fits nothing), else fitted now (fit_now) and kept."""
    heads = {column: head for specs, _ in pools for column in specs if column in examples
             if (head := store.head(column, fingerprints[column])) is not None}
    fitted = fit_now([(specs, settings) for specs, settings in pools],
                     {column: labelled for column, labelled in examples.items() if column not in heads})
    for column, head in fitted.items():
        store.save_head(column, fingerprints[column], head)
    return {**heads, **fitted}


def fit_now(pools: list[tuple[dict, PoolSettings]], examples: dict[str, LabelledTexts]) -> dict[str, dict]:
    """The heads of the pools' tasks in `examples`, fitted now: one Ray task per pool, all at once (a bad example
    row raised there is the user's: UserError)."""
    import ray

    fitting = [ray.remote(fit_heads).options(num_cpus=settings.num_cpus_per_actor, num_gpus=settings.num_gpus_per_actor or None,
                                             max_retries=1).remote(specs, settings.compute, todo)
               for specs, settings in pools
               if (todo := {column: (examples[column].texts, examples[column].labels)
                            for column in specs if column in examples})]
    try:
        return {column: head for fitted in ray.get(fitting) for column, head in fitted.items()}
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, UserError):
            raise error.cause from None
        raise
