# The study in two commands: `make reproduce` (default profile: digits) and `make test`.
# Both build .venv first if it is missing or older than pyproject.toml.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PROFILE ?= digits
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MEMLIB := $(PY) -m memlib
PAPERMILL ?= $(PY) -m papermill
JUPYTER ?= $(VENV)/bin/jupyter
STAGES := 01_train_subsets 02_estimate 03_filter_retrain 04_figures 05_validate
PYTHON ?= python3
# The notebooks' kernels import memlib from this checkout, whichever VENV runs them (a VENV made in another
# checkout has that checkout's memlib installed).
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
# What a user passes (PROFILE, EXECUTOR, DEVICE) reaches the recipes only through the environment, taken with
# $(value ...) so that make expands nothing in it, and every recipe reads it as "$$MEMLIB_MAKE_PROFILE" (one quoted
# shell word): no value is ever pasted into shell code, so `PROFILE='x";touch pwned;"'` is just a profile that does
# not exist (tests/test_makefile.py tries the injections).
export MEMLIB_MAKE_PROFILE := $(value PROFILE)
unexport PROFILE EXECUTOR DEVICE  # make would expand them to put them in the recipes' environment
# PROFILE is a name in configs/ or a path to a YAML file; memlib says where its results go (<results_dir>/<profile>)
# and writes every value of the profile to parameters.yaml there, so that every target uses the same folder and the
# same values as memlib. The notebooks get two parameters: the profile and that file (`load_profile(profile, params)`).
# NOTEBOOK_PROFILE sets prof to PROFILE as the notebooks must name it: they run in another folder, so a path is made
# absolute.
NOTEBOOK_PROFILE = prof="$$MEMLIB_MAKE_PROFILE"; [ ! -e "$$prof" ] || prof="$$(cd "$$(dirname -- "$$prof")" && pwd)/$$(basename -- "$$prof")"
# EXECUTOR=slurm (or local) overrides the profile's `executor` key for every target: memlib reads it from the
# environment as MEMLIB_EXECUTOR, so `check`, the papermill parameters and the notebooks all see the same value.
EXECUTOR ?=
ifneq ($(strip $(value EXECUTOR)),)
export MEMLIB_EXECUTOR := $(strip $(value EXECUTOR))
endif
NEED_PROFILE = @[[ "$$MEMLIB_MAKE_PROFILE" =~ [^[:space:]] ]] || { echo "error: PROFILE is empty: give a profile name or YAML path"; exit 2; }

.PHONY: help setup reproduce report check test lint format lab bench gpu-check clean-results

help: ## list the targets
	@echo "usage: make TARGET [PROFILE=name or path/to/profile.yaml] [EXECUTOR=local|slurm]    (profiles: $$(ls configs | sed 's/\.yaml//' | tr '\n' ' '))"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@echo "== setting up $(VENV) (torch, timm, jupyter; a few minutes the first time)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --progress-bar off -e '.[dev]' 2>&1 | { grep -v "is ignored: it is neither" || true; }
	touch $(STAMP)

setup: $(STAMP) ## create .venv with everything (make reproduce and make test do this themselves)

check: $(STAMP) ## validate PROFILE, its data and every stage's store; writes nothing
	$(NEED_PROFILE)
	$(MEMLIB) check "$$MEMLIB_MAKE_PROFILE"

reproduce: $(STAMP) ## run the whole study on PROFILE (default digits) and render <results>/PROFILE/report.html
	$(NEED_PROFILE)
	@start=$$(date +%s); \
	trap 'echo; echo "interrupted: rerun to resume ($$($(MEMLIB) kept "$$MEMLIB_MAKE_PROFILE") models kept)"; exit 130' INT TERM; \
	$(MEMLIB) check "$$MEMLIB_MAKE_PROFILE"; \
	out=$$($(MEMLIB) out-dir "$$MEMLIB_MAKE_PROFILE" --params parameters.yaml); \
	$(NOTEBOOK_PROFILE); \
	for nb in $(STAGES); do \
	  echo "== $$nb ($$MEMLIB_MAKE_PROFILE)"; \
	  $(PAPERMILL) notebooks/$$nb.ipynb "$$out/$$nb.ipynb" -r profile "$$prof" -r params "$$out/parameters.yaml" \
	    --cwd notebooks --no-progress-bar --log-output 2>&1 \
	    | { grep --line-buffered -E "model/s|s/model|Error|Exception|regime" || true; } \
	    || { echo "!! $$nb failed: open $$out/$$nb.ipynb to see where"; exit 1; }; \
	done; \
	$(MEMLIB) report "$$MEMLIB_MAKE_PROFILE"; \
	echo "== done in $$(( $$(date +%s) - start )) s: $$out/report.html"

report: $(STAMP) ## re-render <results>/PROFILE/report.html from the executed notebooks
	$(NEED_PROFILE)
	$(MEMLIB) report "$$MEMLIB_MAKE_PROFILE"

lint: $(STAMP) ## ruff lint and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP) ## apply ruff's formatting and fixes
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: $(STAMP) lint ## lint, then the test suite (CPU only; 15 to 30 minutes on 2 cores)
	$(PY) -m pytest

# The lab's notebooks take their values from lab/parameters.yaml (every value of the profile, yours to edit); like
# the notebooks, it is kept by a second `make lab`.
lab: $(STAMP) ## JupyterLab on the notebooks, prepared with PROFILE's parameters, in <results>/PROFILE/lab
	$(NEED_PROFILE)
	@lab=$$($(MEMLIB) out-dir "$$MEMLIB_MAKE_PROFILE")/lab; \
	if [ -e "$$lab/parameters.yaml" ]; then echo "kept $$lab/parameters.yaml (delete it to write it afresh)"; \
	else $(MEMLIB) out-dir "$$MEMLIB_MAKE_PROFILE" --params lab/parameters.yaml >/dev/null; \
	  echo "wrote $$lab/parameters.yaml: every value the notebooks run with"; fi; \
	$(NOTEBOOK_PROFILE); \
	for nb in $(STAGES); do \
	  if [ -e "$$lab/$$nb.ipynb" ]; then echo "kept $$lab/$$nb.ipynb (delete it to prepare it afresh)"; \
	  else $(PAPERMILL) --prepare-only notebooks/$$nb.ipynb "$$lab/$$nb.ipynb" -r profile "$$prof" \
	    -r params "$$lab/parameters.yaml" --no-progress-bar 2>/dev/null && echo "prepared $$lab/$$nb.ipynb"; fi; \
	done; \
	root=$$([ "$$(id -u)" = 0 ] && echo --allow-root || true); \
	$(JUPYTER) lab $$root --notebook-dir="$$lab"

bench: $(STAMP) ## benchmark scripts: speed ratios measured side by side (a few minutes)
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/layouts.py
	$(PY) benchmarks/estimate_scale.py

# gpu-check needs no .venv: a GPU machine has torch but no network to build one, so it runs with .venv's python
# where there is one, else with $(PYTHON). DEVICE=cpu runs the same parts at tiny sizes.
DEVICE ?= cuda
export MEMLIB_MAKE_DEVICE := $(value DEVICE)
GPU_PY = $(shell test -x $(PY) && echo $(PY) || echo $(PYTHON))
gpu-check: ## prove and time the GPU path in one call (5 min; DEVICE=cpu: tiny sizes); JSON and log in $OUT or results/gpu-check
	$(GPU_PY) benchmarks/gpu_check.py --device "$$MEMLIB_MAKE_DEVICE" $$([ "$$MEMLIB_MAKE_DEVICE" != cpu ] || echo --tiny)

clean-results: $(STAMP) ## delete what memlib wrote in <results>/PROFILE (finished models too); your files stay
	$(NEED_PROFILE)
	$(MEMLIB) clean "$$MEMLIB_MAKE_PROFILE"
