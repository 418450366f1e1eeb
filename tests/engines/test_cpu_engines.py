"""The encoder tasks on the CPU engines (OpenVINO, ONNX Runtime): which engine `auto` takes, the export cache, int8.

Equality with `pipeline()` in float32 is proven task by task in tests/tasks/test_pipeline_equivalence.py, on every engine
installed; here: question answering (which transformers 5 has no pipeline for) against transformers, the choice
and its errors, two actors building at once, static and dynamic int8 on MiniLM, and a job whose report says how
its int8 was made.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiny_models
from helpers import REPO, SAMPLE, cli, last_report, write_config

from jobs.annotate import main
from nlp_tasks.config import ConfigError, TaskSpec, parse_config
from nlp_tasks.driver.compute import Cluster, group_by_model, resolve_pools
from nlp_tasks.engines.choice import choose_engine
from nlp_tasks.engines.encoders import ENCODER_ENGINES, missing_package

INSTALLED = [engine for engine in ENCODER_ENGINES if missing_package(engine) is None]
needs_engines = pytest.mark.skipif(len(INSTALLED) < len(ENCODER_ENGINES),
                                   reason="needs the cpu-engines extra (pip install .[cpu-engines])")
TEXTS = tiny_models.sample_texts()
MB = 2**20


def bbc_texts() -> list[str]:
    return pq.read_table(SAMPLE).column("text").to_pylist()


def spec(task: str, model, **options) -> TaskSpec:
    return TaskSpec.model_validate({"task": task, "model": str(model), **options})


@needs_engines
@pytest.mark.parametrize("engine", ENCODER_ENGINES)
def test_question_answering_on_a_cpu_engine_equals_transformers(models, annotate, engine):
    task = {"task": "question-answering", "model": str(models["question-answering"]), "question": "Who met Bob?"}
    ours = annotate({"qa": {**task, "engine": engine}}, TEXTS).column("qa").to_pylist()
    theirs = annotate({"qa": {**task, "engine": "transformers"}}, TEXTS).column("qa").to_pylist()
    for mine, reference in zip(ours, theirs):
        assert (mine["answer"], mine["start"], mine["end"]) == (reference["answer"], reference["start"],
                                                                reference["end"])
        assert mine["score"] == pytest.approx(reference["score"], abs=1e-4)


@needs_engines
def test_auto_takes_the_fastest_engine_and_stays_on_transformers_on_a_gpu(models, tmp_path, monkeypatch):
    monkeypatch.setenv("NLP_TASKS_MODEL_CACHE", str(tmp_path))  # a node with no verdict
    task = spec("text-classification", models["text-classification"])
    # float32: an engine only once timed faster here (test_qualification); none tried yet, nothing to say
    assert choose_engine("s", task, "auto", "cpu") == ("transformers", None)
    assert choose_engine("s", task, "int8", "auto") == ("openvino", None)
    assert choose_engine("s", spec("text-classification", models["text-classification"], engine="openvino"),
                         "auto", "cpu") == ("openvino", None)
    assert choose_engine("s", task, "auto", "cuda") == ("transformers", None)
    assert choose_engine("s", task, "bfloat16", "cpu") == ("transformers", None)
    assert choose_engine("s", spec("ner", models["token-classification"], engine="onnxruntime"), "int8",
                         "cpu") == ("onnxruntime", None)


@needs_engines
def test_a_cpu_engine_auto_took_gives_way_to_transformers_on_a_gpu_pool(models):
    gpu_node = Cluster(cpus=16, gpus=1, memory=128 * 2**30, nodes=1, fixed_size=True)
    path = str(models["text-classification"])
    for engine, named in (("openvino", False), ("openvino", True)):
        config = parse_config({"input": {"path": "in"}, "output": {"path": "out"},
                               "tasks": {"s": {"task": "sentiment-analysis", "model": path,
                                               **({"engine": engine} if named else {})}}})
        ready = {"s": config.tasks["s"].model_copy(update={"engine": engine})}  # as job.runnable_tasks resolves it
        if named:
            with pytest.raises(ConfigError, match=r"^tasks.s: engine openvino .*runs on CPU only"):
                resolve_pools(config, group_by_model(ready), gpu_node, [MB])
        else:
            (settings,) = resolve_pools(config, group_by_model(ready), gpu_node, [MB])
            assert (settings.engine, settings.device) == ("transformers", "cuda")


def test_a_model_the_exporter_cannot_take_falls_back_with_auto_and_is_one_line_when_named(models):
    gpt2 = models["text-generation"]  # a GPT-2 checkpoint is a sequence classifier too, for transformers
    with pytest.raises(ConfigError, match=r"^tasks.s: dtype int8 needs engine openvino or onnxruntime, and neither "
                                          r"can run it: openvino: .*'gpt2'"):
        choose_engine("s", spec("text-classification", gpt2), "int8", "cpu")
    with pytest.raises(ConfigError, match=r"^tasks.s: engine openvino cannot run it: .*'gpt2'$") as error:
        choose_engine("s", spec("text-classification", gpt2, engine="openvino"), "auto", "cpu")
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"^tasks.s: engine onnxruntime cannot run it: it runs float32 or int8"):
        choose_engine("s", spec("text-classification", models["text-classification"], engine="onnxruntime"),
                      "bfloat16", "cpu")


def test_without_the_extra_naming_an_engine_or_int8_is_a_one_line_error(models, monkeypatch):
    for package in ("openvino", "onnxruntime"):
        monkeypatch.setitem(sys.modules, package, None)  # as if not installed: find_spec and import fail
    assert choose_engine("s", spec("text-classification", models["text-classification"]), "auto", "cpu") == (
        "transformers", None)
    with pytest.raises(ConfigError, match=r"^tasks.s: engine openvino cannot run it: the openvino package is not "
                                          r"installed \(pip install .\[cpu-engines\]\)$"):
        choose_engine("s", spec("text-classification", models["text-classification"], engine="openvino"), "auto",
                      "cpu")
    with pytest.raises(ConfigError, match=r"^tasks.s: dtype int8 needs engine openvino or onnxruntime, and neither "
                                          r"can run it: openvino: the openvino package is not installed"):
        choose_engine("s", spec("text-classification", models["text-classification"]), "int8", "cpu")


def test_a_pool_auto_left_on_transformers_says_why_in_its_plan_line(models):
    from nlp_tasks.driver.checks import runnable_tasks
    from nlp_tasks.driver.compute import size_pools

    config = parse_config({"input": {"path": "in"}, "output": {"path": "out"}, "tasks": {
        "g": {"task": "text-generation", "model": str(models["text-generation"]), "min_length": 30}}})
    ((_, settings),) = size_pools(config, group_by_model(runnable_tasks(config)[0]), Cluster(cpus=2, gpus=0, memory=8 * 2**30, nodes=1,
                                                                         fixed_size=True), rows=100)
    assert settings.engine == "transformers"
    assert "1 torch thread(s) (transformers: ctranslate2 cannot run it: ctranslate2 cannot honour min_length=30 (from " \
           "the task's options)" in settings.describe()


def test_the_cli_names_a_missing_engine_in_one_line_and_exits_2(models, tmp_path):
    pq.write_table(pa.table({"id": ["a"], "text": ["x"]}), tmp_path / "in.parquet")
    config = write_config(tmp_path, tmp_path / "in.parquet", {"s": {
        "task": "sentiment-analysis", "model": str(models["text-classification"]), "engine": "openvino"}}, compute=None)
    hide = "import sys; sys.modules['openvino'] = None; from jobs.annotate import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", hide, "--config", str(config)], capture_output=True, text=True,
                          cwd=REPO, check=False)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.endswith("tasks.s: engine openvino cannot run it: the openvino package is not installed "
                         "(pip install .[cpu-engines])")


def _build(args):
    """One actor's load: the engine's model of the checkpoint, built in the cache (or found there); its logits."""
    import os

    os.environ["NLP_TASKS_MODEL_CACHE"] = args[2]
    from transformers import AutoTokenizer

    from nlp_tasks.engines.encoders import load_encoder

    tokenizer = AutoTokenizer.from_pretrained(args[0])
    model = load_encoder(args[1], args[0], None, args[0], "AutoModelForSequenceClassification", "float32", 1,
                         tokenizer, None)
    return model(dict(tokenizer(TEXTS[:3], padding=True, return_tensors="pt"))).logits.numpy()


@needs_engines
@pytest.mark.parametrize("engine", ENCODER_ENGINES)
def test_two_actors_starting_together_build_once_and_never_use_a_partial_build(models, tmp_path, monkeypatch,
                                                                               engine):
    from nlp_tasks.engines.encoders import build_dir
    from nlp_tasks.models.loading import model_fingerprint

    path, cache = str(models["text-classification"]), tmp_path / "cache"
    monkeypatch.setenv("NLP_TASKS_MODEL_CACHE", str(cache))
    target = build_dir(model_fingerprint(path), "AutoModelForSequenceClassification", engine, "float32", "none")
    stale = target.parent / (target.name + ".partial-killed")
    stale.mkdir(parents=True)
    (stale / "model.xml").write_text("half")  # a build killed half-way: never to be used
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        first, second = pool.map(_build, [(path, engine, str(cache))] * 2)
    np.testing.assert_array_equal(first, second)
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name, target.name + ".lock"]
    assert sorted(p.name for p in target.iterdir()) == (["model.bin", "model.xml"] if engine == "openvino"
                                                        else ["model.onnx"])


@needs_engines
def test_openvino_runs_the_actors_threads_unpinned(models, tmp_path, monkeypatch):
    """Pinned, every actor of a node would pin its threads to the same first cores (two one-thread actors on two
    cores ran at half the speed: README, CPU engines)."""
    from transformers import AutoTokenizer

    from nlp_tasks.engines.encoders import load_encoder

    monkeypatch.setenv("NLP_TASKS_MODEL_CACHE", str(tmp_path))
    path = str(models["text-classification"])
    model = load_encoder("openvino", path, None, path, "AutoModelForSequenceClassification", "float32", 1,
                         AutoTokenizer.from_pretrained(path), None)
    assert model.compiled.get_property("ENABLE_CPU_PINNING") is False
    assert model.compiled.get_property("INFERENCE_NUM_THREADS") == 1


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@needs_engines
@pytest.mark.parametrize("engine", ENCODER_ENGINES)
def test_int8_on_minilm_stays_within_cosine_0_99_of_float32_and_is_not_float32(minilm, engine):
    from nlp_tasks.config import ComputeConfig
    from nlp_tasks.workers.annotator import Annotator

    texts = bbc_texts()
    sample, calibration = texts[:24], texts[100:164]  # calibrated on other rows than the ones compared
    task = {"vec": spec("feature-extraction", minilm, engine=engine, max_length=256)}
    vectors = {}
    for dtype in ("float32", "int8"):
        annotator = Annotator(task, ComputeConfig(device="cpu", dtype=dtype, token_budget=2048), "text", "errors",
                              calibration=calibration)
        vectors[dtype] = np.stack(annotator(pa.table({"text": sample})).column("vec").to_pylist())
    similarity = cosines(vectors["int8"], vectors["float32"])
    assert similarity.min() >= 0.99, similarity.min()
    assert similarity.min() < 0.99999, "int8 gave float32's vectors: it was not quantized"


def test_static_int8_without_calibration_texts_is_refused(minilm):
    from nlp_tasks.config import ComputeConfig
    from nlp_tasks.workers.annotator import Annotator, ModelLoadFailed

    if missing_package("openvino"):
        pytest.skip("needs openvino")
    with pytest.raises(ModelLoadFailed, match="task\\(s\\) vec could not load .* needs calibration texts"):
        Annotator({"vec": spec("feature-extraction", minilm, engine="openvino")},
                  ComputeConfig(device="cpu", dtype="int8"), "text", "errors")


@needs_engines
@pytest.mark.parametrize("examples", [False, True], ids=["input", "examples"])
def test_an_int8_job_calibrates_on_its_input_or_examples_and_its_report_says_so(ray_local, tmp_path, minilm,
                                                                              examples):
    sample = pq.read_table(SAMPLE)
    texts = sample.column("text").to_pylist()[:40]
    pq.write_table(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts}), tmp_path / "in.parquet")
    tasks = {"vec": {"task": "feature-extraction", "model": minilm, "max_length": 128}}
    if examples:  # the same model: one pool, calibrated on the labelled texts
        pq.write_table(sample.slice(100, 30), tmp_path / "examples.parquet")
        tasks["topic"] = {"task": "embedding-classification", "model": minilm, "max_length": 128,
                          "examples": {"path": str(tmp_path / "examples.parquet"), "label_column": "category"}}
    config = write_config(tmp_path, tmp_path / "in.parquet", tasks,
                          compute={"dtype": "int8", "num_cpus_per_actor": 0.5})
    assert main(["--config", config]) == 0
    report = json.loads(next((tmp_path / "out" / "__reports").glob("*.json")).read_text())
    (pool,) = report["compute"]
    calibration = "the examples of tasks.topic (30 rows)" if examples else "40 rows of the input"
    assert (pool["engine"], pool["dtype"], pool["calibration"]) == ("openvino", "int8", calibration)
    out = pq.read_table(tmp_path / "out")
    assert out.num_rows == 40 and all(len(vector) == 384 for vector in out.column("vec").to_pylist())


@needs_engines
def test_an_int8_job_without_a_usable_text_to_calibrate_on_is_one_line_exit_2(tmp_path, minilm):
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": pa.array([None, "", "   "], pa.string())}),
                   tmp_path / "blank.parquet")
    config = write_config(tmp_path, tmp_path / "blank.parquet",
                          {"vec": {"task": "feature-extraction", "model": minilm, "max_length": 128}},
                          compute={"dtype": "int8", "num_cpus_per_actor": 0.5})
    result = cli(config)  # after the pools' log lines: the error, one line, and no traceback
    error = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "Traceback" not in result.stderr and error.startswith("error: "), result.stderr
    assert "blank.parquet" in error and "'text'" in error and "tasks.vec" in error, error
    assert not (tmp_path / "out").exists()  # a refusal leaves nothing behind: no __manifest/ on a new output
    (tmp_path / "out").mkdir()  # an empty folder of the user's: what the run wrote in it goes, the folder stays
    assert cli(config).returncode == 2
    assert (tmp_path / "out").is_dir() and not list((tmp_path / "out").iterdir())


@needs_engines
@pytest.mark.slow
def test_a_night_whose_only_new_file_is_blank_calibrates_on_the_input_it_already_has(ray_local, tmp_path, minilm):
    """Null and empty rows are the user's data, never a reason to stop a night: with only blank texts new, int8
    calibrates on the input's other files, and the blank rows are committed with their errors."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = pq.read_table(SAMPLE).column("text").to_pylist()[:12]
    pq.write_table(pa.table({"id": [f"t{i}" for i in range(12)], "text": texts}), corpus / "first.parquet")
    config = write_config(tmp_path, corpus, {"vec": {"task": "feature-extraction", "model": minilm, "max_length": 64}},
                          compute={"dtype": "int8", "num_cpus_per_actor": 0.5})
    assert main(["--config", config]) == 0
    pq.write_table(pa.table({"id": ["a", "b"], "text": pa.array([None, "  "], pa.string())}), corpus / "blank.parquet")
    assert main(["--config", config]) == 0
    out = pq.read_table(tmp_path / "out").to_pandas().set_index("id")
    assert len(out) == 14 and out.loc[["a", "b"], "vec"].isna().all() and out.loc["t0", "vec"] is not None
    (pool,) = last_report(tmp_path / "out")["compute"]
    assert pool["calibration"] == "12 rows of the input"
