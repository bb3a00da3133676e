# segkit: `make train` and `make test` do all the set-up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
# The development machines serve these two from local disk; on your own machine pick the build
# that matches your CUDA (or run `make install TORCH_SPEC=` to keep an existing torch).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.segkit-installed
ARGS ?=
OUT ?= gpu-report

.PHONY: help install train test test-slow test-all bench gpu-check lint format clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv (if missing) and install segkit with its dev extras

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

train: install  ## run the main job on the embedded default dataset (extra overrides: ARGS="model=segnet")
	$(PY) -m segkit.train $(ARGS)

test: install  ## fast test suite
	$(PY) -m pytest -q

test-slow: install  ## slow and real-data tests (real-data ones skip without ../shared/data)
	$(PY) -m pytest -q -m "slow or realdata"

test-all: test test-slow  ## everything CI runs

bench: install  ## benchmarks -> BENCHMARKS.md and benchmarks/results.json (~40 min; QUICK=1: a ~5 min smoke run, figures meaningless)
	$(PY) -m benchmarks.run $(if $(QUICK),--quick,)

gpu-check:  ## on a GPU machine, <= 8 min: GPU tests, overhead, utilisation, pipeline, fp16 vs fp32 -> OUT=dir (default gpu-report)
	$(PY) -m benchmarks.gpu_check $(OUT)

lint: install  ## ruff
	$(PY) -m ruff check segkit tests benchmarks

format: install
	$(PY) -m ruff format segkit tests

clean:  ## remove caches (keeps .venv, data/ and outputs/)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
