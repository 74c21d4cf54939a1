# The README's two commands. Each sets up .venv on first use (PyPI's torch build: ~5 GB, about a minute).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: bench test lint

$(STAMP): pyproject.toml cpp_ext/native.cpp
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[export,dev,serve,medical,bench]"
	$(BIN)/pip install -q --no-deps nvidia-pytriton==0.7.0
	touch $(STAMP)

# Main job: export the default models (seeded weights: U-Net, DeepLabV3+, Mask R-CNN, SAM vit_b) and time them
# against PyTorch on this machine: table on the terminal, JSON, Markdown and a PNG chart.
# The run is appended to benchmarks/results/history.jsonl (index regenerated) and becomes this machine class's
# benchmarks/results/latest-<machine>.{json,md,png}; WHAT="..." says what changed since the last run.
WHAT ?= make bench
bench: $(STAMP)
	mkdir -p .cache
	$(BIN)/segrt bench --quick --json .cache/bench-run.json --markdown .cache/bench-run.md
	$(BIN)/python -m segrt.benchmarks.history add .cache/bench-run.json --markdown .cache/bench-run.md --what "$(WHAT)"
	$(BIN)/python -m segrt.benchmarks.history latest --machine this

# The test suite (what CI runs): all of it with the C++ pre/post kernels, then the fast tests whose results go
# through those kernels (marked prepost) again with their NumPy twin (SEGRT_PREPOST=reference). The quick fixtures
# are trained (or found in the cache) first, with progress on stderr, so no test waits on training under its clock;
# both passes reuse them.
TEST_CACHE ?= $(CURDIR)/.cache/test-fixtures
test: $(STAMP) trt-lean
	SEGRT_TEST_CACHE=$(TEST_CACHE) $(BIN)/python -m tests.prepare_fixtures
	SEGRT_TEST_CACHE=$(TEST_CACHE) $(BIN)/python -m pytest -q --durations=20
	SEGRT_TEST_CACHE=$(TEST_CACHE) SEGRT_PREPOST=reference $(BIN)/python -m pytest -q -m "prepost and not slow"

# ruff with the rules in pyproject.toml ([tool.ruff]); .ci/run runs it before the tests.
lint: $(STAMP)
	$(BIN)/ruff check .

# The real TensorRT lean runtime wheels of both majors (bindings + libs + the tensorrt_lean wrapper; ~45 MB download
# each), which tests/test_tensorrt_runtime.py checks the TensorRT runners against. Installed once per version beside
# the venv (--target), never into it, so device="auto" still sees no TensorRT here.
TRT_LEAN_VERSIONS := 10.16.1.11 11.4.0.106
TRT_LEAN_DIR := $(CURDIR)/.cache/trt-lean
.PHONY: trt-lean
trt-lean: $(TRT_LEAN_VERSIONS:%=$(TRT_LEAN_DIR)/%/.installed)
$(TRT_LEAN_DIR)/%/.installed: | $(STAMP)
	rm -rf $(TRT_LEAN_DIR)/$*
	$(BIN)/pip install -q --no-deps --target $(TRT_LEAN_DIR)/$* tensorrt-lean-cu13==$* tensorrt-lean-cu13-bindings==$* tensorrt-lean-cu13-libs==$*
	touch $@

# The prepared GPU check (docs/gpu-check.md). `make gpu-check-wheels` runs HERE (PyPI): the wheels the GPU machine
# lacks, for Python 3.12 manylinux x86_64, cut into .whl/p1 .. .whl/p5 (each under one device call's 64 MiB).
# `make gpu-check` runs THERE (no internet; its own python3, no venv): joins and installs the carried wheels into
# /tmp/site, exports the seeded models and writes <date>-gpu-check-<gpu>.{json,md} into GPU_CHECK_OUT.
# `make gpu-check GPU_CHECK_ARGS=--self-test` is its CPU-only self-test.
GPU_CHECK_OUT ?= $(if $(OUT),$(OUT),benchmarks/results)
GPU_CHECK_ARGS ?=
.PHONY: gpu-check gpu-check-wheels
gpu-check-wheels:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY)) benchmarks/gpu_check.py prepare --wheels .whl
gpu-check:
	$(PY) benchmarks/gpu_check.py run --out $(GPU_CHECK_OUT) --wheels .whl $(GPU_CHECK_ARGS)
