"""What a CPU engine's static int8 is calibrated on: the task's labelled examples, or a sample of the run's input.

Static int8 (OpenVINO with NNCF) fixes each activation's scale from sample inputs, so the sample should look like
the rows the run annotates: a pool with a task that has `examples` takes those texts (the head is fitted on them
too), any other pool a few hundred rows spread over the run's input files, read by a Ray task like any other
(the driver never reads row data). The sample is recorded in the run report, and names the engine's build in the
node cache (encoders.calibration_key): the same sample reuses the same build.
"""

from __future__ import annotations

from typing import Any

from nlp_tasks.engines.encoders import engine_dtype
from nlp_tasks.errors import InputError
from nlp_tasks.text_checks import as_text, text_problem

CALIBRATION_ROWS = 300
"""Texts a static int8 build is calibrated on (NNCF's default subset size is 300)."""
CALIBRATION_FILES = 30
"""Fragments the input sample is spread over, evenly, so that a run over many files opens only a few."""


def needs_calibration(engine: str, dtype: str) -> bool:
    return engine == "openvino" and engine_dtype(dtype) == "int8"


def spread(items: list[Any]) -> list[Any]:
    """At most CALIBRATION_FILES of `items`, spread evenly over them."""
    return items[::max(1, len(items) // CALIBRATION_FILES)][:CALIBRATION_FILES]


def input_sample(filesystem: Any, fragments: list[Any], text_column: str, rows: int = CALIBRATION_ROWS) -> list[str]:
    """Up to `rows` usable texts from the start of fragments spread evenly over `fragments`."""
    from nlp_tasks.workers.read import record_batches  # Ray Data: imported in the Ray task only

    chosen = spread(fragments)
    texts: list[str] = []
    for index, fragment in enumerate(chosen):
        wanted = -(-(rows - len(texts)) // (len(chosen) - index))
        taken = 0
        for batch in record_batches(filesystem, fragment, wanted):
            for value in batch.column(text_column).to_pylist():
                if taken < wanted and text_problem(value) is None:
                    texts.append(as_text(value))
                    taken += 1
            if taken >= wanted:
                break
    return texts


def sample_and_size(filesystem: Any, fragments: list[Any], text_column: str,
                    everything: list[Any] | None = None) -> tuple[list[str], int]:
    """The input sample and its size: a Ray task's two returns, so that the driver fetches the size alone. Where
    the run's own `fragments` hold no usable text (a night whose new files are all empty texts), the sample is
    drawn from `everything` the input holds, committed files included: null and empty rows never stop a night."""
    texts = input_sample(filesystem, fragments, text_column) or input_sample(filesystem, everything or [], text_column)
    return texts, len(texts)


def pool_samples(pools: list[tuple[dict, Any]], examples: dict[str, Any], filesystem: Any, fragments: list[Any],
                 text_column: str, input_name: str, everything: list[Any]) -> dict[int, tuple[Any, str]]:
    """For each pool (by index) that runs static int8: its calibration texts as a Ray object (the actors fetch it;
    an input sample stays out of the driver, which gets its size alone), and what they are: from the run's
    `fragments`, else from `everything` the input holds. An input without a usable text anywhere is the user's to
    fix (InputError)."""
    import ray

    samples, reading = {}, []
    for index, (specs, settings) in enumerate(pools):
        if not needs_calibration(settings.engine, settings.dtype):
            continue
        labelled = next((column for column in specs if column in examples), None)
        if labelled is not None:
            texts = list(examples[labelled].texts)
            samples[index] = (ray.put(texts), f"the examples of tasks.{labelled} ({len(texts)} rows)")
        else:
            reading.append(index)
    if reading:
        texts, size = ray.remote(sample_and_size).options(num_cpus=0.25, num_returns=2).remote(
            filesystem, fragments, text_column, everything)
        rows = ray.get(size)
        if not rows:
            columns = ", ".join(f"tasks.{column}" for index in reading for column in pools[index][0])
            raise InputError(f"input.path {input_name!r}: no usable text in column {text_column!r} among the rows "
                             f"sampled to calibrate int8 for {columns}; give the task examples, or set "
                             "compute.dtype to float32")
        for index in reading:
            samples[index] = (texts, f"{rows} rows of the input")
    return samples
