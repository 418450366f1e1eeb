"""What the job is measured against, in this process: `pipeline()` loops and the model's forward-only ceiling."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.scenarios import Scenario

PIPELINE_BATCH = 32


def pipeline_rows_per_s(scenario: Scenario, model: Path, texts: list[str], batch_size: int | None,
                        device: str = "cpu", dtype: str = "float32") -> float:
    """`pipeline(task)` over `texts`: one call per text (`batch_size` None), or one call batched by the pipeline.

    feature-extraction returns per-token states (as tensors, which skips a costly `.tolist()`), mean-pooled here
    as the job's column is; the pipeline does not return the attention mask, so a row padded inside a batch is
    averaged over pad positions too (same work, approximate values).
    """
    import torch
    from transformers import pipeline
    from transformers.utils import logging

    logging.disable_progress_bar()
    window = {"truncation": True, "max_length": scenario.max_length}
    build = {"tokenize_kwargs": window} if scenario.task == "feature-extraction" else {}
    pipe = pipeline(scenario.task, model=str(model), device=device, dtype=getattr(torch, dtype),
                    **build, **scenario.pipeline_kwargs)
    call = {"return_tensors": True} if scenario.task == "feature-extraction" else \
        window if scenario.task == "text-classification" else {}
    pipe(texts[:4], **call)  # warm-up
    started = time.perf_counter()
    with torch.inference_mode():
        if batch_size is None:
            for text in texts:
                pipe(text, **call)
        else:
            for _ in pipe(texts, batch_size=batch_size, **call):
                pass
    return len(texts) / (time.perf_counter() - started)


def ceiling_rows_per_s(scenario: Scenario, model: Path, texts: list[str], processes: int, device: str = "cpu",
                       dtype: str = "float32", packed: bool = True, heap_kept: bool = True) -> float:
    """Rows/s of the forward passes alone, on pre-tokenized batches of 32 sorted by length, already on the device:
    a bound for any variant that runs the same model at that batch shape.

    On CPU the batches are dealt to `processes` one-thread processes started together (the job's layout, one
    actor per core, beats one process of as many threads here). `packed`: the model as the job loads it (linear
    layers packed for oneDNN, nlp_tasks/cpu_linear.py); otherwise as transformers loads it, as the peers run it.
    `heap_kept`: freed memory kept in the heap as the job's actors keep it (nlp_tasks/models/cpu_memory.py).
    """
    if device != "cpu" or processes == 1:
        started, finished = forward_span(scenario, model, texts, 1 if device == "cpu" else 0, device, dtype, packed,
                                         heap_kept)
        return len(texts) / (finished - started)
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(processes) as pool:
        ready = manager.Barrier(processes)
        spans = pool.starmap(forward_span, [(scenario, model, texts[i::processes], 1, device, dtype, packed, heap_kept,
                                             ready)
                                            for i in range(processes)])
    return len(texts) / (max(end for _, end in spans) - min(start for start, _ in spans))


def forward_span(scenario: Scenario, model: Path, texts: list[str], threads: int, device: str, dtype: str,
                 packed: bool, heap_kept: bool, ready=None) -> tuple[float, float]:
    """When this process's forward passes over `texts` started and finished (after a warm-up batch, and after
    every process passed `ready`); `threads` 0 leaves torch's default."""
    import torch
    import transformers

    from nlp_tasks.models.cpu_linear import pack_linears
    from nlp_tasks.models.cpu_memory import keep_freed_memory

    if heap_kept:
        keep_freed_memory()
    transformers.utils.logging.disable_progress_bar()
    if threads:
        torch.set_num_threads(threads)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    network = getattr(transformers, scenario.auto_class).from_pretrained(model, dtype=getattr(torch, dtype))
    network = network.to(device).eval()
    if packed:
        pack_linears(network)
    encoded = tokenizer(texts, truncation=True, max_length=scenario.max_length)
    order = sorted(range(len(texts)), key=lambda i: -len(encoded["input_ids"][i]))
    batches = [{key: value.to(device) for key, value in tokenizer.pad(
        {key: [encoded[key][i] for i in order[start:start + PIPELINE_BATCH]] for key in ("input_ids", "attention_mask")},
        return_tensors="pt").items()} for start in range(0, len(texts), PIPELINE_BATCH)]
    with torch.inference_mode():
        network(**batches[0])
        if device == "cuda":
            torch.cuda.synchronize()
        if ready is not None:
            ready.wait()
        started = time.perf_counter()
        for batch in batches:
            network(**batch)
        if device == "cuda":
            torch.cuda.synchronize()
    return started, time.perf_counter()
