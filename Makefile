# Two commands for a newcomer: `make demo` and `make test`. Both install what they need
# first; a second run finds the venvs up to date (stamp files) and goes straight on.
PYTHON ?= python3.11
VENV := .venv
DS_VENV := .venv-deepsparse
BIN := $(VENV)/bin
export NM_DISABLE_ANALYTICS := 1
export TOKENIZERS_PARALLELISM := false

DEMO_OUT ?= out/demo
KERNEL_LIB := runtime/kernels/build/libsparse_deploy_ov.so

.PHONY: install install-datasets demo test test-fast bench-quality bench-oats bench-vision clean clean-cache

KERNEL_SOURCES := $(wildcard runtime/kernels/*.cpp runtime/kernels/*.hpp) runtime/kernels/CMakeLists.txt

install: $(VENV)/.stamp $(DS_VENV)/.stamp $(KERNEL_LIB)

$(VENV)/.stamp: pyproject.toml constraints/main.txt constraints/packaged-data.txt scripts/install.sh
	PYTHON=$(PYTHON) bash scripts/install.sh main
	touch $@

# The sparse MatMul extension (built by `install.sh main` too; rebuilt here when a kernel source changes).
$(KERNEL_LIB): $(VENV)/.stamp $(KERNEL_SOURCES)
	bash scripts/install.sh kernels
	touch $@

$(DS_VENV)/.stamp: constraints/deepsparse.txt scripts/install.sh
	PYTHON=$(PYTHON) bash scripts/install.sh deepsparse
	touch $@

demo: install
	$(BIN)/sparse-deploy run recipes/demo.yaml --out $(DEMO_OUT)

test: install
	$(BIN)/python -m pytest -q --durations=15  # the slowest tests, to keep the suite in its 20-minute budget

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

install-datasets:
	bash scripts/install.sh datasets

bench-quality: install
	$(BIN)/python -m benchmarks.quality

bench-oats: install
	$(BIN)/python -m benchmarks.oats_solver
	$(BIN)/python -m benchmarks.quality --suite oats

bench-vision: install install-datasets
	$(BIN)/python -m benchmarks.vision

clean:
	rm -rf $(VENV) $(DS_VENV) out .pytest_cache runtime/kernels/build

# Materialized models and the latency proxies (a LLaMA-7B-geometry artifact weighs ~5 GB;
# the shipped proxy recipes fill ~57 GB). Everything in it is rebuilt on demand.
clean-cache:
	rm -rf "$${SPARSE_DEPLOY_CACHE:-$$HOME/.cache/sparse-deploy}"
