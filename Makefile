# Two commands do all the set-up: `make serve` (export the three models and serve them) and
# `make test` (the whole suite). Both create ./.venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
REPO   ?= model_repository
ARGS   ?=

.PHONY: setup serve export test test-slow protos clean

$(BIN)/attnserve: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU torch first and pinned: an unpinned torch would pull gigabytes of CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# perf_analyzer left the tritonclient wheel after 2.51 (later builds also need glibc >= 2.38),
# so take the binary from the 2.51.0 wheel; it needs Debian's libb64-0d and libcudart.so.12
# (nvidia-cuda-runtime-cu12, in the dev extra) at run time.
$(BIN)/perf_analyzer: $(BIN)/attnserve
	rm -rf $(VENV)/pa.tmp
	$(BIN)/pip download -q --no-deps --only-binary=:all: --platform manylinux1_x86_64 tritonclient==2.51.0 -d $(VENV)/pa.tmp
	$(BIN)/python -c "import zipfile,glob,sys; z=zipfile.ZipFile(glob.glob(sys.argv[1]+'/*.whl')[0]); open(sys.argv[2],'wb').write(z.read('tritonclient-2.51.0.data/data/bin/perf_analyzer'))" $(VENV)/pa.tmp $@
	chmod +x $@
	rm -rf $(VENV)/pa.tmp

setup: $(BIN)/attnserve $(BIN)/perf_analyzer

$(REPO)/.exported: $(BIN)/attnserve $(wildcard export/*.py export/models/*.py export/weights/*)
	$(BIN)/attnserve export --model-repository $(REPO)
	touch $@

export: $(REPO)/.exported

serve: export
	$(BIN)/attnserve serve --model-repository $(REPO) $(ARGS)

# Every tier except the slow-marked ones (30 s overload, soak): a few minutes.
test: setup
	$(BIN)/python -m pytest -m 'not slow' $(ARGS)

# Overload and soak. The soak runs ATTNSERVE_SOAK_SECONDS (default 600 = the 10-minute soak).
test-slow: setup
	$(BIN)/python -m pytest -m slow -s $(ARGS)

protos: setup
	$(BIN)/python protos/generate.py

clean:
	rm -rf $(REPO) .pytest_cache
