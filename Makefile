# Two commands do all the set-up: `make serve` (export the three models and serve them) and
# `make test` (the whole suite). Both create ./.venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
REPO   ?= model_repository
ARGS   ?=

.PHONY: setup serve export test test-fast protos clean

$(BIN)/attnserve: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU torch first and pinned: an unpinned torch would pull gigabytes of CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/attnserve

$(REPO)/.exported: $(BIN)/attnserve $(wildcard export/*.py export/models/*.py export/weights/*)
	$(BIN)/attnserve export --model-repository $(REPO)
	touch $@

export: $(REPO)/.exported

serve: export
	$(BIN)/attnserve serve --model-repository $(REPO) $(ARGS)

test: setup
	$(BIN)/python -m pytest $(ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m 'not slow' -x $(ARGS)

protos: setup
	$(BIN)/python protos/generate.py

clean:
	rm -rf $(REPO) .pytest_cache
