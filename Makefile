# groklab: `make demo` sets up and runs the canonical grokking run; `make test` sets up and runs the tests.
# TORCH selects the PyTorch build. The default pin takes the local CPU wheel where one is provided
# (and PyPI's default build elsewhere); for a CUDA build, e.g.:
#   make demo TORCH="torch==2.13.* --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.*
BIN    := $(VENV)/bin

.PHONY: demo test lint docs setup browser bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/groklab run nanda-mod-add

# The report test opens reports in Debian's chromium (driven by Playwright); install it if missing.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "note: could not install chromium (apt-get failed); the browser test will say so and be skipped"

# Two test processes (pytest-xdist), each taking whole files so a file's fixtures are built once:
# 8.6 min instead of ~17 on the 2-core machine.
test: setup browser
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=20

# ruff: lint and format check (config in pyproject.toml); `ruff format` fixes the format
lint: setup
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

# the docs site (MkDocs, Material theme) into build/site; --strict: a broken link or reference fails
# (not --quiet: it hides the warnings --strict counts)
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: setup
	$(BIN)/python benchmarks/train_speed.py

clean:
	rm -rf $(VENV) .pytest_cache
