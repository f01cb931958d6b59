# Two commands: `make serve` and `make test`. Everything installs into .venv from scratch.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build; on a GPU/NPU host install the matching torch (and torch_npu) instead.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv serve serve-local test test-fast bench bench-accel clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

venv: $(VENV)/.installed

serve: venv  ## Ray Serve app from serve_config.yaml on 127.0.0.1:8000; Ray metrics on 127.0.0.1:8080/metrics
	$(VENV)/bin/ray start --head --metrics-export-port=8080 --dashboard-host=127.0.0.1 --disable-usage-stats
	RAY_ADDRESS=auto $(VENV)/bin/serve run serve_config.yaml; $(VENV)/bin/ray stop

serve-local: venv  ## the same API in one process, without Ray
	$(PY) -m deployments.local --host 127.0.0.1 --port 8000

test: venv
	$(PY) -m pytest -m "not accel" $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -m "not accel and not slow" $(PYTEST_ARGS)

bench: venv
	$(PY) -m benchmarks.engine_bench $(BENCH_ARGS)

bench-accel: venv  # on a GPU/NPU machine: eager vs captured vs transformers static+compile
	$(PY) -m benchmarks.accel_bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
