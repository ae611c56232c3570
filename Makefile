# The study in two commands: `make reproduce` (default profile: digits) and `make test`.
# Both build .venv first if it is missing or older than pyproject.toml.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PROFILE ?= digits
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT := results/$(PROFILE)
STAGES := 01_train_subsets 02_estimate 03_filter_retrain 04_figures 05_validate
PYTHON ?= python3

.PHONY: help setup reproduce report check test lint format lab bench clean-results

help: ## list the targets
	@echo "usage: make TARGET [PROFILE=name]    (profiles: $$(ls configs | sed 's/\.yaml//' | tr '\n' ' '))"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@echo "== setting up $(VENV) (torch, timm, jupyter; a few minutes the first time)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --progress-bar off -e '.[dev]' 2>&1 | { grep -v "is ignored: it is neither" || true; }
	touch $(STAMP)

setup: $(STAMP) ## create .venv with everything (make reproduce and make test do this themselves)

check: $(STAMP) ## validate configs/$(PROFILE).yaml, its data and any existing store; writes nothing
	$(PY) -m memlib check $(PROFILE)

reproduce: $(STAMP) ## run the whole study on PROFILE (default digits) and render results/PROFILE/report.html
	@start=$$(date +%s); \
	$(PY) -m memlib check $(PROFILE); \
	mkdir -p $(OUT); \
	for nb in $(STAGES); do \
	  echo "== $$nb ($(PROFILE))"; \
	  $(PY) -m papermill notebooks/$$nb.ipynb $(OUT)/$$nb.ipynb -f configs/$(PROFILE).yaml \
	    --cwd notebooks --no-progress-bar --log-output 2>&1 \
	    | { grep --line-buffered -E "model/s|s/model|Error|Exception" || true; } \
	    || { echo "!! $$nb failed: open $(OUT)/$$nb.ipynb to see where"; exit 1; }; \
	done; \
	$(PY) -m memlib report $(PROFILE); \
	echo "== done in $$(( $$(date +%s) - start )) s: $(OUT)/report.html"

report: $(STAMP) ## re-render results/PROFILE/report.html from the executed notebooks
	$(PY) -m memlib report $(PROFILE)

lint: $(STAMP) ## ruff lint and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP) ## apply ruff's formatting and fixes
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: $(STAMP) lint ## lint, then the test suite (CPU only, a few minutes)
	$(PY) -m pytest

lab: $(STAMP) ## open JupyterLab on the notebooks with the venv's kernel
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP) ## benchmark scripts: speed ratios measured side by side (a few minutes)
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/estimate_scale.py

clean-results: ## delete results/PROFILE (its store too: finished models are lost)
	rm -rf $(OUT)
