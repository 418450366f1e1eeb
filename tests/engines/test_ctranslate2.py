"""CTranslate2 for the generation tasks: each row equal to transformers' `generate`, or a near tie under its model;
conversion once per node; `engine: auto` falls back where it must, and `ctranslate2` says why in one line."""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiny_models
import torch
from helpers import write_config
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, CTRLConfig, CTRLLMHeadModel

from jobs.annotate import main
from nlp_tasks.config import ComputeConfig, ConfigError, TaskSpec
from nlp_tasks.engines.choice import choose_engine
from nlp_tasks.engines.ctranslate2_models import CONVERSION
from nlp_tasks.engines.decoding import Unsupported, ctranslate2_decoding, generation_settings
from nlp_tasks.workers.annotator import Annotator

TEXTS = tiny_models.sample_texts()
NEAR_TIE = 0.15
"""Most a row's CTranslate2 output may score below transformers' own, in mean log-probability per text token under
the transformers model (measured here: at most 0.104). The two beam searches differ in when they stop (transformers'
early_stopping: false searches on) and in how they score tokens they forbid (min_length, no_repeat_ngram_size); the
tiny model's flat distributions make such near ties common."""

CASES = [
    ("summarization", {"max_new_tokens": 12}),
    ("summarization", {"max_new_tokens": 12, "num_beams": 3, "no_repeat_ngram_size": 2}),
    ("summarization", {"max_new_tokens": 10, "min_length": 8, "num_beams": 4, "early_stopping": True,
                       "length_penalty": 2.0}),
    ("translation", {"max_new_tokens": 10, "prefix": "translate English to French: "}),
    ("translation", {"max_new_tokens": 10, "tgt_lang": "The"}),
    ("text-generation", {"max_new_tokens": 10}),
    ("text-generation", {"max_new_tokens": 8, "num_beams": 2, "return_full_text": True}),
    ("text-generation", {"max_new_tokens": 6, "min_new_tokens": 6}),
]


def reference(path, task, options):
    """transformers' model and tokenizer, and one text's `generate` ids (new tokens, specials dropped)."""
    seq2seq = task != "text-generation"
    model = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    kwargs = {k: v for k, v in options.items() if k not in ("prefix", "tgt_lang", "return_full_text")}
    if "tgt_lang" in options:
        kwargs["forced_bos_token_id"] = tokenizer.convert_tokens_to_ids(options["tgt_lang"])

    def generate(text):
        inputs = tokenizer(options.get("prefix", "") + text, return_tensors="pt", truncation=True,
                           max_length=None if seq2seq else 128 - options["max_new_tokens"])
        with torch.inference_mode():
            ids = model.generate(**inputs, **kwargs, pad_token_id=tokenizer.pad_token_id)[0].tolist()
        return inputs, ids[1:] if seq2seq else ids[inputs["input_ids"].shape[1]:]

    return model, tokenizer, generate


FLOAT_TIE = 1e-2
"""Most two greedy tokens may differ in log-probability at the step where CTranslate2 and transformers part: their
kernels sum in other orders (on an AVX2-only CPU, another vector width), so a tiny model's exact-looking tie can
fall either way; past that step the two continuations are free to differ."""


def greedy_gap(model, inputs, ours: list[int], theirs: list[int], seq2seq: bool, start: int) -> float:
    """At the first step where two greedy continuations differ, how far apart transformers scores their tokens."""
    step = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
    prefix = [start] + theirs[:step] if seq2seq else inputs["input_ids"][0].tolist() + theirs[:step]
    with torch.inference_mode():
        logits = (model(**inputs, decoder_input_ids=torch.tensor([prefix])) if seq2seq
                  else model(torch.tensor([prefix]))).logits[0, -1].log_softmax(-1)
    return abs(float(logits[ours[step]] - logits[theirs[step]]))


def mean_log_prob(model, inputs, new_ids, specials, seq2seq) -> float:
    """Mean log-probability of the text tokens of `new_ids` under `model`, after the input."""
    content = [i for i in new_ids if i not in specials or i == new_ids[0]]
    start = [model.generation_config.decoder_start_token_id] if seq2seq else inputs["input_ids"][0].tolist()
    ids = torch.tensor([start + content])
    with torch.inference_mode():
        logits = (model(**inputs, decoder_input_ids=ids[:, :-1]) if seq2seq else model(ids[:, :-1])).logits
    log_probs = logits.log_softmax(-1)[0, len(start) - 1:]
    return float(log_probs.gather(1, ids[0, len(start):, None]).mean())


@pytest.mark.parametrize("task, options", CASES)
def test_each_row_equals_generate_or_is_a_near_tie(models, annotate, task, options):
    path = str(models["text-generation" if task == "text-generation" else "seq2seq"])
    spec = {"task": task, "model": path, **options}
    ours = annotate({"gen": {**spec, "engine": "ctranslate2"}}, TEXTS).column("gen").to_pylist()
    theirs = annotate({"gen": {**spec, "engine": "transformers"}}, TEXTS).column("gen").to_pylist()
    engine = Annotator({"gen": TaskSpec.model_validate({**spec, "engine": "ctranslate2"})},
                       ComputeConfig(device="cpu"), "text", "errors")
    adapter = engine.adapters["gen"]
    model, tokenizer, generate = reference(path, task, options)
    specials = set(tokenizer.all_special_ids)
    ties = 0
    for text, mine, other in zip(TEXTS, ours, theirs):
        inputs, expected = generate(text)
        assert other == adapter.postprocess(text, adapter.preprocess([text], None)[0], [expected])
        if mine == other:
            continue
        ties += 1
        assert options.get("num_beams", 1) > 1, f"greedy decoding differs on {text!r}: {mine!r} != {other!r}"
        [segments] = adapter.preprocess([text], None)
        [generated] = adapter.run(segments, engine.batcher)
        assert adapter.postprocess(text, segments, [generated]) == mine
        seq2seq = task != "text-generation"
        assert (mean_log_prob(model, inputs, generated.tolist(), specials, seq2seq)
                >= mean_log_prob(model, inputs, expected, specials, seq2seq) - NEAR_TIE), text
    assert ties <= len(TEXTS) // 4, f"{ties} of {len(TEXTS)} rows differ"
    assert any(ours)


def test_sampling_on_ctranslate2_is_seeded(models, annotate):
    task = {"task": "text-generation", "model": str(models["text-generation"]), "engine": "ctranslate2",
            "max_new_tokens": 12, "do_sample": True, "top_k": 20, "temperature": 1.5}
    first, again = (annotate({"g": {**task, "seed": 1}}, TEXTS).column("g").to_pylist() for _ in range(2))
    other = annotate({"g": {**task, "seed": 2}}, TEXTS).column("g").to_pylist()
    assert first == again and first != other


def test_map_reduce_runs_every_level_through_ctranslate2(models, annotate):
    texts = [" ".join(TEXTS)] * 2 + TEXTS[:2]
    task = {"task": "summarization", "model": str(models["seq2seq"]), "long_text": "chunk", "stride": 8,
            "max_new_tokens": 20}
    ours = annotate({"s": {**task, "engine": "ctranslate2"}}, texts, token_budget=300).column("s").to_pylist()
    theirs = annotate({"s": {**task, "engine": "transformers"}}, texts, token_budget=300).column("s").to_pylist()
    assert ours == theirs
    assert max(row["levels"] for row in ours) >= 2


def _convert(args):
    import os

    from nlp_tasks.engines.ctranslate2_models import converted

    os.environ["NLP_TASKS_MODEL_CACHE"] = args[1]
    return converted(args[0], "sha256:test", "float32")


@pytest.mark.slow
def test_two_actors_starting_together_convert_once_and_never_use_a_partial_conversion(models, tmp_path):
    cache = tmp_path / "cache"
    name = f"sha256-test-float32-c{CONVERSION}"
    stale = cache / "ctranslate2" / f"{name}.partial-killed"
    stale.mkdir(parents=True)
    (stale / "model.bin").write_bytes(b"half")  # a conversion killed half-way: never to be used
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        first, second = pool.map(_convert, [(str(models["seq2seq"]), str(cache))] * 2)
    assert first == second
    assert sorted(path.name for path in (cache / "ctranslate2").iterdir()) == [name, f"{name}.lock"]
    assert json.loads((cache / "ctranslate2" / name / "config.json").read_text())
    assert (cache / "ctranslate2" / name / "model.bin").stat().st_size > 10_000


@pytest.fixture(scope="module")
def ctrl(models, tmp_path_factory):
    """A tiny CTRL: a causal LM transformers runs and CTranslate2's converter does not take."""
    path = tmp_path_factory.mktemp("ctrl") / "ctrl"
    tokenizer = AutoTokenizer.from_pretrained(models["text-generation"])
    torch.manual_seed(0)
    CTRLLMHeadModel(CTRLConfig(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, dff=64,
                               n_positions=128)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_auto_falls_back_where_ctranslate2_cannot_run_and_naming_it_is_one_line(models, ctrl, annotate):
    spec = TaskSpec.model_validate({"task": "text-generation", "model": ctrl, "max_new_tokens": 4})
    engine, why = choose_engine("gen", spec, "auto")
    assert engine == "transformers" and "model type 'ctrl'" in why
    assert all(annotate({"gen": spec.model_dump()}, TEXTS[:3]).column("gen").to_pylist())
    with pytest.raises(ConfigError, match=r"^tasks.gen: engine ctranslate2 cannot run it: .*'ctrl'") as error:
        choose_engine("gen", spec.model_copy(update={"engine": "ctranslate2"}), "auto")
    assert "\n" not in str(error.value)
    assert choose_engine("s", TaskSpec.model_validate({"task": "summarization", "model": str(models["seq2seq"])}),
                         "auto") == ("ctranslate2", None)


def test_an_option_ctranslate2_cannot_honour_is_named_never_dropped(models, tmp_path):
    spec = TaskSpec.model_validate({"task": "summarization", "model": str(models["seq2seq"]), "num_beams": 2,
                                    "early_stopping": False})
    assert choose_engine("s", spec, "auto")[0] == "transformers"
    with pytest.raises(ConfigError, match=r"early_stopping=False \(from the task's options\)"):
        choose_engine("s", spec.model_copy(update={"engine": "ctranslate2"}), "auto")
    checkpoint = tmp_path / "diverse"
    shutil.copytree(models["seq2seq"], checkpoint)
    generation = json.loads((checkpoint / "generation_config.json").read_text())
    (checkpoint / "generation_config.json").write_text(json.dumps({**generation, "num_beam_groups": 2,
                                                                   "diversity_penalty": 0.5, "num_beams": 4}))
    diverse = TaskSpec.model_validate({"task": "summarization", "model": str(checkpoint), "engine": "ctranslate2"})
    with pytest.raises(ConfigError, match=r"diversity_penalty=0.5 \(from the checkpoint's generation_config\)"):
        choose_engine("s", diverse, "auto")


def test_int8_runs_on_ctranslate2_and_is_a_config_error_elsewhere(models, annotate):
    spec = {"task": "summarization", "model": str(models["seq2seq"]), "max_new_tokens": 8}
    table = Annotator({"s": TaskSpec.model_validate(spec)}, ComputeConfig(device="cpu", dtype="int8"), "text",
                      "errors")(pa.table({"text": TEXTS}))
    assert all(table.column("s").to_pylist()) and not any(table.column("errors").to_pylist())
    with pytest.raises(ConfigError, match="dtype int8 runs on engine ctranslate2 only"):
        choose_engine("s", TaskSpec.model_validate({**spec, "engine": "transformers"}), "int8")


@pytest.mark.slow
def test_the_job_says_which_engine_each_pool_runs(ray_local, models, ctrl, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": [str(i) for i in range(len(TEXTS))], "text": TEXTS}), tmp_path / "in" / "p.parquet")

    def config(tasks, name):
        return write_config(tmp_path, tmp_path / "in", tasks, name=f"{name}.yaml", output={"path": tmp_path / name},
                            compute={"num_cpus_per_actor": 0.5, "batch_size": None})

    tasks = {"summary": {"task": "summarization", "model": str(models["seq2seq"]), "max_new_tokens": 8},
             "more": {"task": "text-generation", "model": ctrl, "max_new_tokens": 4}}
    assert main(["--config", config(tasks, "out")]) == 0
    logs = capsys.readouterr().err
    assert "task 'more' runs on transformers: ctranslate2 cannot run it" in logs
    assert "CTranslate2 with 1 one-thread worker(s)" in logs
    report = json.loads(next((tmp_path / "out" / "__reports").glob("*.json")).read_text())
    assert sorted(pool["engine"] for pool in report["compute"]) == ["ctranslate2", "transformers"]
    named = {**tasks, "more": {**tasks["more"], "engine": "ctranslate2"}}
    assert main(["--config", config(named, "refused")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: tasks.more: engine ctranslate2 cannot run it:") and "\n" not in error
    assert not (tmp_path / "refused").exists()


@pytest.fixture(scope="module")
def shapes(models, tmp_path_factory):
    """Checkpoints shaped as real ones vary: BART whose forced tokens and beams are in config.json only, T5
    starting from <pad>, GPT-2 with no unknown token and added special tokens (see tiny_models)."""
    root = tmp_path_factory.mktemp("shapes")
    return {"bart": models["seq2seq"], "bart-legacy": tiny_models.build_seq2seq_legacy(root),
            "t5": tiny_models.build_t5(root), "gpt2-no-unk": tiny_models.build_causal_lm_without_unk(root)}


CHAT = ["<|im_start|>user " + text + "<|im_end|><|im_start|>assistant" for text in TEXTS[:6]]
EDGES = [
    ("bart", "summarization", {"max_new_tokens": 12, "min_length": 13}, TEXTS),
    ("bart", "summarization", {"max_new_tokens": 8, "min_new_tokens": 20}, TEXTS),
    ("bart-legacy", "summarization", {"max_new_tokens": 12, "num_beams": 1}, TEXTS),
    ("bart-legacy", "summarization", {"max_new_tokens": 12, "no_repeat_ngram_size": 0}, TEXTS),
    ("t5", "summarization", {"max_new_tokens": 12}, TEXTS),
    ("t5", "summarization", {"max_new_tokens": 12, "repetition_penalty": 1.2}, TEXTS),
    ("t5", "summarization", {"max_new_tokens": 12, "num_beams": 3, "min_new_tokens": 5, "early_stopping": True},
     TEXTS),
    ("gpt2-no-unk", "text-generation", {"max_new_tokens": 10}, TEXTS[:6] + CHAT),
    ("gpt2-no-unk", "text-generation", {"max_new_tokens": 8, "num_beams": 2}, TEXTS[:6] + CHAT),
]
"""Lengths at their edges with forced tokens (min = max, min > max), settings and forced tokens read from
config.json, a decoder start other than bos, tokenizers with no unknown token and with added special tokens."""


@pytest.mark.parametrize("shape, task, options, texts", EDGES)
def test_edges_decode_the_tokens_generate_does(shapes, shape, task, options, texts):
    path = str(shapes[shape])
    spec = TaskSpec.model_validate({"task": task, "model": path, **options})
    assert choose_engine("gen", spec, "auto", "cpu") == ("ctranslate2", None)
    engine = Annotator({"gen": spec.model_copy(update={"engine": "ctranslate2"})}, ComputeConfig(device="cpu"),
                       "text", "errors")
    adapter = engine.adapters["gen"]
    seq2seq = task != "text-generation"
    model = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(path).eval()
    specials = set(AutoTokenizer.from_pretrained(path).all_special_ids)
    ties = 0
    for text in texts:
        [segments] = adapter.preprocess([text], None)
        [ours] = adapter.run(segments, engine.batcher)
        inputs = {"input_ids": torch.tensor([list(segments[0]["input_ids"])])}
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        with torch.inference_mode():
            ids = model.generate(**inputs, **spec.options.generate_kwargs(),
                                 pad_token_id=adapter.tokenizer.pad_token_id)[0].tolist()
        theirs = ids[1:] if seq2seq else ids[inputs["input_ids"].shape[1]:]
        if ours.tolist() == theirs:
            continue
        ties += 1
        if (options.get("num_beams") or model.generation_config.num_beams or 1) == 1:
            assert greedy_gap(model, inputs, ours.tolist(), theirs, seq2seq, ids[0]) < FLOAT_TIE, \
                f"greedy decoding differs on {text!r}, not at a tie: {ours.tolist()} != {theirs}"
            continue
        assert (mean_log_prob(model, inputs, ours.tolist(), specials, seq2seq)
                >= mean_log_prob(model, inputs, theirs, specials, seq2seq) - NEAR_TIE), text
    assert ties <= len(texts) // 4, f"{ties} of {len(texts)} rows differ"


def test_exactly_max_new_tokens_with_a_forced_end_runs_greedy_and_is_refused_by_name_with_beams(shapes, annotate):
    spec = {"task": "summarization", "model": str(shapes["bart"]), "min_length": 13, "max_new_tokens": 12}
    greedy = annotate({"s": spec}, TEXTS)
    assert all(greedy.column("s").to_pylist()) and not any(greedy.column("errors").to_pylist())
    assert annotate({"s": {**spec, "engine": "ctranslate2"}}, TEXTS).equals(greedy)
    beams = TaskSpec.model_validate({**spec, "num_beams": 4})
    engine, why = choose_engine("s", beams, "auto", "cpu")
    assert engine == "transformers" and "cannot honour min_length=13 (from the task's options)" in why
    with pytest.raises(ConfigError, match=r"^tasks.s: engine ctranslate2 cannot run it: .*min_length=13") as error:
        choose_engine("s", beams.model_copy(update={"engine": "ctranslate2"}), "auto", "cpu")
    assert "\n" not in str(error.value)


def _mapped(checkpoint: dict, task: dict, seq2seq: bool = True, device: str = "cpu") -> dict:
    return ctranslate2_decoding(generation_settings(checkpoint, task), seq2seq, device)


BART = {"decoder_start_token_id": 2, "eos_token_id": 2, "forced_eos_token_id": 2, "bos_token_id": 0}


@pytest.mark.parametrize("maximum", [1, 2, 5, 64])
@pytest.mark.parametrize("minimum", [0, 1, 2, 5, 64, 65, 200])
@pytest.mark.parametrize("checkpoint", [{}, BART, {**BART, "forced_bos_token_id": 0}])
def test_lengths_never_reach_ctranslate2_as_a_run_time_error(checkpoint, minimum, maximum):
    for seq2seq, task in ((True, {"max_new_tokens": maximum, "min_length": minimum}),
                          (True, {"max_new_tokens": maximum, "min_new_tokens": minimum}),
                          (False, {"max_new_tokens": maximum, "min_new_tokens": minimum})):
        if not seq2seq and "forced_bos_token_id" in checkpoint:
            continue  # refused: a decoder-only model continues the prompt
        try:
            decoding = _mapped(checkpoint, task, seq2seq)
        except Unsupported as error:
            assert maximum == 1 and "forced_eos_token_id" in str(checkpoint) and "forced end" in str(error)
            continue
        longest, fewest = ((decoding["max_decoding_length"], decoding["min_decoding_length"]) if seq2seq
                           else (decoding["max_length"], decoding["min_length"]))
        assert 1 <= longest and fewest <= longest
        assert longest + (decoding["forced_end_id"] is not None) == maximum


@pytest.mark.parametrize("checkpoint, task, seq2seq, device, refused", [
    ({}, {"max_new_tokens": 8, "repetition_penalty": 1.3}, False, "cpu", "repetition_penalty=1.3"),
    ({}, {"max_new_tokens": 8, "no_repeat_ngram_size": 2}, False, "cpu", "no_repeat_ngram_size=2"),
    ({}, {"max_new_tokens": 8, "num_beams": 2, "repetition_penalty": 1.3}, True, "cpu", "repetition_penalty=1.3"),
    (BART, {"max_new_tokens": 8, "min_new_tokens": 8, "num_beams": 2}, True, "cpu", "min_new_tokens=8"),
    (BART, {"max_new_tokens": 8, "repetition_penalty": 1.3}, True, "cpu", "repetition_penalty=1.3"),
    ({"bad_words_ids": [[5, 6]]}, {"max_new_tokens": 8}, True, "cpu", "bad_words_ids"),
    ({"begin_suppress_tokens": [5]}, {"max_new_tokens": 8}, True, "cpu", "begin_suppress_tokens"),
    ({"top_k": 0}, {"max_new_tokens": 8, "do_sample": True, "top_p": 0.9}, True, "auto", "top_p=0.9"),
    ({"top_k": 0}, {"max_new_tokens": 8, "do_sample": True, "top_p": 0.9}, True, "cpu", None),
    ({"decoder_start_token_id": 0, "eos_token_id": 1}, {"max_new_tokens": 8, "repetition_penalty": 1.3}, True,
     "cpu", None),
])
def test_settings_ctranslate2_would_reject_or_apply_otherwise_are_named_before_the_run(checkpoint, task, seq2seq,
                                                                                      device, refused):
    if refused is None:
        _mapped(checkpoint, task, seq2seq, device)
        return
    with pytest.raises(Unsupported, match=re.escape(refused)):
        _mapped(checkpoint, task, seq2seq, device)


def test_suppressed_tokens_map_as_transformers_applies_them():
    decoding = _mapped({"eos_token_id": 2, "suppress_tokens": [7], "bad_words_ids": [[9], [2]]},
                       {"max_new_tokens": 8})
    assert decoding["suppress_ids"] == [[7], [9]]  # transformers drops a bad word that is an end token
