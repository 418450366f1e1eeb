# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create the virtual environment first (once). TORCH picks the PyTorch build:
# the default is the CPU build's version; on a GPU machine use e.g. `make demo TORCH=torch`.
# `make test-fast` is the loop while changing code: the suite less the tests marked slow.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test,cpu-engines]"
	touch $@

demo: setup
	$(PY) -m jobs.annotate --config jobs/configs/demo.yaml --show 3

# A test module runs whole in one of the workers (its module fixtures are made once), one worker per core up to
# four: a job's critical path is one actor's start, so a second module fills the core the first leaves idle.
XDIST := -n auto --maxprocesses 4 --dist loadfile

test: setup
	$(PY) -m pytest -q $(XDIST)

test-fast: setup  # every module still runs some of its tests
	$(PY) -m pytest -q $(XDIST) -m "not slow"

lint: setup
	$(PY) -m ruff check .

bench: setup  # the README's CPU tables (about two hours on 2 cores): pip install -e ".[bench,cpu-engines]" first
	$(PY) -m benchmarks.throughput --scenario minilm --rows 2000 --dtype bfloat16
	$(PY) -m benchmarks.peers --rows 1000 3000 10000 --repeats 2 --variants job daft ceiling ceiling-eager
	$(PY) -m benchmarks.peers --readme cpu-peers-float32
	$(PY) -m benchmarks.examples_cv
	$(PY) -m benchmarks.summarization --docs 48
	$(PY) -m benchmarks.summarization --docs 1000 --beams 4 --dtypes float32 int8 --variants job ctranslate2
	$(PY) -m benchmarks.ner_grouping
	$(PY) -m benchmarks.cpu_stages
	$(PY) -m benchmarks.delta_commits --files 200
	$(PY) -m benchmarks.cpu_engines --rows 1000

clean:
	rm -rf $(VENV) output
