# Two commands: `make serve` and `make test`. Everything installs into .venv from scratch.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build; on a GPU/NPU host install the matching torch (and torch_npu) instead.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv serve serve-local serve-cluster test test-fast bench bench-accel device-wheels device-check device-check-dry clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

venv: $(VENV)/.installed

# LiveKit Agents (psutil>=7) cannot share a venv with KServe's SDK (psutil<6): its plugin is
# tested from a venv of its own against the server the test starts (tests/clients/test_livekit.py).
LIVEKIT_VENV ?= .venv-livekit
$(LIVEKIT_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(LIVEKIT_VENV)
	$(LIVEKIT_VENV)/bin/python -m pip install -q "livekit-agents==1.8.9" "livekit-plugins-openai==1.8.9"
	touch $@

# RAY_worker_niceness=0: Serve's processes at the host's priority, not Ray's default 15 (deployments/priority.py)
serve: venv  ## Ray Serve app from serve_config.yaml on 127.0.0.1:8000 (gRPC: 8001); Ray metrics on 127.0.0.1:8080/metrics
	RAY_worker_niceness=0 $(VENV)/bin/ray start --head --metrics-export-port=8080 --dashboard-host=127.0.0.1 --disable-usage-stats
	RAY_ADDRESS=auto $(VENV)/bin/serve run serve_config.yaml; $(VENV)/bin/ray stop

serve-local: venv  ## the same API in one process, without Ray (HTTP 127.0.0.1:8000, Triton gRPC 127.0.0.1:8001)
	$(PY) -m deployments.local --host 127.0.0.1 --port 8000

NODES ?= 2
CARDS ?= 2
serve-cluster: venv  ## rehearse placement and scaling on this machine: NODES x CARDS simulated Ascend cards (csm-tiny on CPU), 127.0.0.1:8000
	$(PY) -m deployments.sim_cluster --nodes $(NODES) --cards-per-node $(CARDS)

test: venv $(LIVEKIT_VENV)/.installed
	$(PY) -m pytest -m "not accel" $(PYTEST_ARGS)

test-fast: venv $(LIVEKIT_VENV)/.installed
	$(PY) -m pytest -m "not accel and not slow" $(PYTEST_ARGS)

bench: venv
	$(PY) -m benchmarks.engine_bench $(BENCH_ARGS)

bench-accel: venv  # on a GPU/NPU machine: eager vs captured vs transformers static+compile
	$(PY) -m benchmarks.accel_bench $(BENCH_ARGS)

# The accelerator check (benchmarks/device_check.py). Here, with network: fetch the wheels the
# GPU host lacks (Python 3.12, manylinux; about 15 MB, not committed). On the GPU host (no
# network, its own Python + CUDA torch): `make device-check OUT=dir`, at most ~8 minutes.
DEVICE_PY ?= python3
OUT ?= out/device-check
device-wheels: venv
	$(PY) -m pip download -q --no-deps --only-binary=:all: --implementation cp --python-version 3.12 \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
		-d .device-wheels -r benchmarks/device-requirements.txt

device-check:
	$(DEVICE_PY) -m benchmarks.device_check --out $(OUT) $(CHECK_ARGS)

device-check-dry: venv  ## the same steps on this CPU with csm-tiny (CI runs it as a test)
	$(PY) -m benchmarks.device_check --dry-run --out $(OUT)-dry $(CHECK_ARGS)

clean:
	rm -rf $(VENV) $(LIVEKIT_VENV) .pytest_cache
