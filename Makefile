# groklab: `make demo` sets up and runs the canonical grokking run; `make test` sets up and runs the tests.
# TORCH selects the PyTorch build. The default pin takes the local CPU wheel where one is provided
# (and PyPI's default build elsewhere); for a CUDA build, e.g.:
#   make demo TORCH="torch==2.13.* --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.*
BIN    := $(VENV)/bin

.PHONY: demo test setup bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/groklab run nanda-mod-add

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/train_speed.py

clean:
	rm -rf $(VENV) .pytest_cache
