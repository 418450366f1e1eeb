"""Labelled examples of `embedding-classification` tasks, read and checked on the driver before the run.

They are a few hundred to a few thousand short rows: the driver reads them once, so that their
content fingerprint enters the task's fingerprint (a changed example set is a changed task), and
hands them to the Ray task that fits the heads (`annotate.fit_heads`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from nlp_tasks.driver.inputs import InputError, redact
from nlp_tasks.tasks.embedding_classification import Examples
from nlp_tasks.workers.text_checks import as_text, text_problem


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
