# make demo / make test on a fresh machine: each installs what is missing first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TVM_NUM_THREADS ?= $(shell nproc)

.PHONY: install test test-all demo lint clean

install: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q -m "not slow and not gpu" tests

test-all: install
	$(BIN)/python -m pytest -q tests

demo: install
	$(BIN)/python -m ivit_tvm.cli.demo

lint: install
	$(BIN)/ruff check ivit_tvm relay_passes schedules benchmarks tests setup.py

clean:
	rm -rf $(VENV) build *.egg-info
