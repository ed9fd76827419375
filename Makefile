# lqo: the two quick-start commands (see README.md) and their set-up.
#   make demo   set up .venv, generate a small TPC-H workload, run `lqo explore` on it
#   make test   set up .venv (with test tools) and run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU-only by default: torch 2.13 is pinned in pyproject.toml; a GPU user installs the
# CUDA build of torch 2.13 into $(VENV) first (see README) and pip keeps it.
PIP_ARGS ?=
DEMO_DIR ?= data/demo-tpch
DEMO_SF  ?= 0.1
DEMO_PLANS ?= 10

.PHONY: setup demo test clean-demo

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(PIP_ARGS) -e '.[dev]'
	@touch $@

setup: $(VENV)/.installed

demo: setup
	@test -f $(DEMO_DIR)/workload.toml || $(VENV)/bin/lqo workload create tpch --sf $(DEMO_SF) --out $(DEMO_DIR)
	$(VENV)/bin/lqo explore $(DEMO_DIR) --plans $(DEMO_PLANS)

test: setup
	$(PY) -m pytest -q

clean-demo:
	rm -rf $(DEMO_DIR)
