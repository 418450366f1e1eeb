"""Summarization engines side by side: the job, CTranslate2 used directly, a transformers `generate` loop.

    python -m benchmarks.summarization [--docs 48] [--beams 4 1] [--dtypes float32 int8]
                                       [--variants job ctranslate2 transformers] [--max-new-tokens 64] [--model tiny]

The same BBC articles (../shared/corpora/bbc_news/train.parquet, else the bundled sample), inputs truncated to
512 tokens, exactly --max-new-tokens new tokens per article (min = max, so every engine does the same work), each
variant a fresh process timed from start to exit, and in steady state (docs over the engine's own span):

  job           `python -m jobs.annotate`, no compute section but the dtype; steady state: the actors' first call
                to their last call's end, from the run report
  ctranslate2   CTranslate2 as its docs advise on CPU: inter_threads = cores, intra_threads 1, sorted sub-batches
                of 8; the checkpoint converted beforehand (not timed: a user converts once); steady state: from
                the loaded model to the decoded summaries, tokenizing included
  transformers  `model.generate` in batches of 8, float32 only; steady state: the loop, from the loaded model

The model: a BART-base shape (d_model 768, 6+6 layers) with seeded random weights and a byte-level BPE tokenizer
trained on the articles (speed depends on shapes and lengths, not on what weights learned); `--model tiny`: the
tests' tiny BART, a smoke run whose figures say nothing. Results: benchmarks/results/cpu-summarization-<docs>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import REPO, corpus_path, corpus_rows, failed, print_table, save, write_files

SMOKE_ARGS = ["--model", "tiny", "--docs", "4", "--beams", "1", "--dtypes", "float32", "--max-new-tokens", "4"]
"""The smallest run that takes each path of this module (tests/bench/test_benchmarks.py runs it); its figures say nothing."""

MAX_INPUT = 512
SUB_BATCH = 8


def bart_base(target: Path, texts: list[str]) -> Path:
    """The BART-base-shaped checkpoint (see the module docstring), built once into `target`."""
    if (target / "config.json").exists():
        return target
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=30_000, special_tokens=specials,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                             show_progress=False))
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=False)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=1024, bos_token="<s>",
                                                pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                                mask_token="<mask>")
    ids = dict(bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2)
    torch.manual_seed(0)
    config = transformers.BartConfig(vocab_size=len(fast), d_model=768, encoder_layers=6, decoder_layers=6,
                                     encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
                                     decoder_ffn_dim=3072, max_position_embeddings=1024, **ids)
    model = transformers.BartForConditionalGeneration(config).eval()
    model.generation_config = transformers.GenerationConfig(**ids, forced_eos_token_id=2, early_stopping=True,
                                                            num_beams=4)
    partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".partial-"))
    model.save_pretrained(partial)
    fast.save_pretrained(partial)
    partial.rename(target)
    return target


def corpus_texts() -> list[str]:
    """Every article of the corpus (what the tokenizer is trained on)."""
    import pyarrow.parquet as pq

    return pq.read_table(corpus_path(), columns=["text"]).column("text").to_pylist()


def tiny_bart(target: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    import tiny_models

    return tiny_models.build_seq2seq(target)


# The peers, each in a process of its own (`python -m benchmarks.summarization --run NAME ...`) --------------------


def run_ctranslate2(model: str, converted: str, source: str, target: str, beams: int, new_tokens: int,
                    dtype: str) -> float:
    import ctranslate2
    import pyarrow as pa
    import pyarrow.parquet as pq
    import transformers

    texts = pq.read_table(source, columns=["text"]).column("text").to_pylist()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    translator = ctranslate2.Translator(converted, compute_type=dtype, inter_threads=os.cpu_count(), intra_threads=1)
    started = time.perf_counter()
    window = min(MAX_INPUT, tokenizer.model_max_length)
    source_tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in
                     tokenizer(texts, truncation=True, max_length=window)["input_ids"]]
    results = translator.translate_batch(source_tokens, max_batch_size=SUB_BATCH, beam_size=beams,
                                         max_decoding_length=new_tokens - 1, min_decoding_length=new_tokens - 1)
    summaries = [tokenizer.decode(tokenizer.convert_tokens_to_ids(r.hypotheses[0]), skip_special_tokens=True)
                 for r in results]
    seconds = time.perf_counter() - started
    pq.write_table(pa.table({"summary": summaries}), target)
    return seconds


def run_transformers(model: str, source: str, target: str, beams: int, new_tokens: int) -> float:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    import transformers

    texts = pq.read_table(source, columns=["text"]).column("text").to_pylist()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    network = transformers.AutoModelForSeq2SeqLM.from_pretrained(model).eval()
    started = time.perf_counter()
    summaries = []
    with torch.inference_mode():
        for start in range(0, len(texts), SUB_BATCH):
            inputs = tokenizer(texts[start:start + SUB_BATCH], truncation=True, padding=True, return_tensors="pt",
                               max_length=min(MAX_INPUT, tokenizer.model_max_length))
            output = network.generate(**inputs, num_beams=beams, max_new_tokens=new_tokens, min_length=new_tokens)
            summaries += tokenizer.batch_decode(output, skip_special_tokens=True)
    seconds = time.perf_counter() - started
    pq.write_table(pa.table({"summary": summaries}), target)
    return seconds


# The driver ---------------------------------------------------------------------------------------------------------


def run_job(model: str, source: Path, work: Path, beams: int, new_tokens: int, dtype: str) -> dict:
    config = work / "job.yaml"
    config.write_text(yaml.safe_dump({
        "input": {"path": str(source), "id_column": "id"}, "output": {"path": str(work / "out")},
        "tasks": {"summary": {"task": "summarization", "model": model, "max_length": MAX_INPUT, "num_beams": beams,
                              "max_new_tokens": new_tokens, "min_length": new_tokens}},
        **({"compute": {"dtype": dtype}} if dtype != "float32" else {}),
    }))
    seconds = process([sys.executable, "-m", "jobs.annotate", "--config", str(config)], work / "job.log")
    report = json.loads(next((work / "out" / "__reports").glob("*.json")).read_text())
    actors = [actor for actor in report["actors"] if actor["pool"] == "summary"]
    span = max(a["last_call_ended_after_s"] for a in actors) - min(a["first_call_after_s"] for a in actors)
    return {"process_s": seconds, "steady_docs_per_s": round(sum(a["rows"] for a in actors) / span, 3),
            "engine": [pool.get("engine") for pool in report["compute"]], "time_s": report["time_s"]}


def process(cmd: list[str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as output:
        result = subprocess.run(cmd, cwd=REPO, stdout=output, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)
    if result.returncode:
        raise failed(" ".join(cmd), result.returncode, log)
    return round(time.perf_counter() - started, 2)


def run_peer(variant: str, model: str, source: Path, work: Path, beams: int, new_tokens: int, dtype: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.summarization", "--run", variant, "--model", model,
           "--beams", str(beams), "--max-new-tokens", str(new_tokens), "--dtypes", dtype, "--source", str(source)]
    if variant == "ctranslate2":
        from nlp_tasks.engines.ctranslate2_models import converted
        from nlp_tasks.models.loading import model_fingerprint

        cmd += ["--converted", converted(model, model_fingerprint(model), dtype)]
    seconds = process(cmd + ["--target", str(work / "out.parquet")], work / f"{variant}.log")
    steady = json.loads((work / f"{variant}.log").read_text().strip().splitlines()[-1])["seconds"]
    docs = corpus_docs(source)
    return {"process_s": seconds, "steady_docs_per_s": round(docs / steady, 3)}


def corpus_docs(source: Path) -> int:
    import pyarrow.dataset as ds

    return ds.dataset(source, format="parquet").count_rows()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=48)
    parser.add_argument("--beams", type=int, nargs="+", default=[4, 1])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "int8"])
    parser.add_argument("--variants", nargs="+", default=["job", "ctranslate2", "transformers"])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--model", help="'tiny' (smoke run) or a checkpoint folder; default: the BART-base shape")
    parser.add_argument("--out", help="results file name (default cpu-summarization-<docs>)")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--converted", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        seconds = (run_ctranslate2(args.model, args.converted, args.source, args.target, args.beams[0],
                                   args.max_new_tokens, args.dtypes[0]) if args.run == "ctranslate2"
                   else run_transformers(args.model, args.source, args.target, args.beams[0], args.max_new_tokens))
        print(json.dumps({"seconds": seconds}))
        return 0

    table = corpus_rows(args.docs)
    cache = Path.home() / ".cache" / "nlp_tasks" / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    model = str(tiny_bart(cache) if args.model == "tiny" else Path(args.model) if args.model
                else bart_base(cache / "bart-base-bbc", corpus_texts()))
    records, rows = [], []
    with tempfile.TemporaryDirectory(prefix="bench-summarization-") as scratch:
        source = write_files(table, Path(scratch) / "in", 2)
        for beams in args.beams:
            for dtype in args.dtypes:
                for variant in args.variants:
                    if variant == "transformers" and dtype != "float32":
                        continue
                    work = Path(tempfile.mkdtemp(dir=scratch))
                    figures = (run_job(model, source, work, beams, args.max_new_tokens, dtype) if variant == "job"
                               else run_peer(variant, model, source, work, beams, args.max_new_tokens, dtype))
                    records.append({"variant": variant, "beams": beams, "dtype": dtype, **figures})
                    rows.append([variant, beams, dtype, figures["process_s"], figures["steady_docs_per_s"]])
                    print(json.dumps(records[-1]), flush=True)
    print_table(["variant", "beams", "dtype", "whole process s", "steady docs/s"], rows)
    path = save(args.out or f"cpu-summarization-{args.docs}", {
        "docs": args.docs, "max_input_tokens": MAX_INPUT, "new_tokens": args.max_new_tokens, "model": model,
        "results": records})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
