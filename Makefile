# lqo: the two quick-start commands (see README.md) and their set-up.
#   make demo   set up .venv; generate a small TPC-H workload with varied instances, tune a
#               plan book on some instances of each template, then compare lqo with DuckDB
#               native on the held-out instances (table + speedup plot)
#   make test   set up .venv (with test tools and the Ray extra), lint (ruff, mypy), run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU-only by default: torch 2.13 is pinned in pyproject.toml; a GPU user installs the
# CUDA build of torch 2.13 into $(VENV) first (see README) and pip keeps it.
PIP_ARGS ?=
DEMO_DIR ?= data/demo-tpch
DEMO_SF  ?= 0.1
DEMO_INSTANCES ?= 5
DEMO_BUDGET ?= 4

.PHONY: setup demo lint test clean-demo

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(PIP_ARGS) -e '.[dev]'
	@touch $@

# The tests also cover `--ray` (extra lqo[ray]); the demo's install stays without Ray.
$(VENV)/.installed-ray: $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check $(PIP_ARGS) -e '.[dev,ray]'
	@touch $@

setup: $(VENV)/.installed

demo: setup
	@test -f $(DEMO_DIR)/workload.toml || $(VENV)/bin/lqo workload create tpch --sf $(DEMO_SF) --out $(DEMO_DIR)
	@test -f $(DEMO_DIR)-x$(DEMO_INSTANCES)/workload.toml || $(VENV)/bin/lqo workload vary $(DEMO_DIR) \
		--per-template $(DEMO_INSTANCES) --seed 1 --out $(DEMO_DIR)-x$(DEMO_INSTANCES)
	$(VENV)/bin/lqo tune $(DEMO_DIR)-x$(DEMO_INSTANCES) --budget $(DEMO_BUDGET) --out $(DEMO_DIR)-book
	$(VENV)/bin/lqo book show $(DEMO_DIR)-book
	$(VENV)/bin/lqo compare $(DEMO_DIR)-x$(DEMO_INSTANCES) --model $(DEMO_DIR)-book --split instances \
		--repeat 5 --plot $(DEMO_DIR)-speedup.png
	@echo "speedup plot: $(DEMO_DIR)-speedup.png"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check lqo
	$(VENV)/bin/mypy

test: $(VENV)/.installed-ray lint
	$(PY) -m pytest -q

clean-demo:
	rm -rf $(DEMO_DIR) $(DEMO_DIR)-x$(DEMO_INSTANCES) $(DEMO_DIR)-book $(DEMO_DIR)-speedup.png
