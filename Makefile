# kfm: `make demo` runs the main job end to end, `make test` runs the test suite.
# Both create/refresh .venv/ first. GPU clusters: see README ("Running on a cluster").

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONSTRAINTS ?= constraints/cpu.txt
STAMP := $(VENV)/.installed
MODEL ?=
RUN_DIR ?= runs/demo$(if $(MODEL),_$(MODEL))

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test test-all clean-demo

venv: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS) bench/gpu/wheels.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	# torchtitan for bench/gpu/'s CPU smoke test, without the dependencies of its trainer (see the file)
	$(PY) -m pip install --quiet --no-deps -r bench/gpu/wheels.txt
	touch $(STAMP)

demo: venv
	RUN_DIR=$(RUN_DIR) PY=$(PY) bash scripts/demo.sh $(if $(MODEL),model=$(MODEL))

test: venv
	$(PY) -m pytest -q tests -m "not slow"

test-all: venv
	$(PY) -m pytest -q tests

clean-demo:
	rm -rf $(RUN_DIR)
