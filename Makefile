# Each target sets itself up: a .venv is created and the project installed into it when missing
# or when pyproject.toml changed. What the tests use from Debian (Mosquitto, systemd-analyze) comes from apt
# when absent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_OUT ?= bench-out

.PHONY: all setup test demo bench gpu-kit lint fmt debian-packages mosquitto clean

all: test

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) mosquitto

# The broker the demo and the agent talk to.
mosquitto:
	@PATH="$$PATH:/usr/sbin" .ci/apt-install mosquitto:mosquitto mosquitto_sub:mosquitto-clients

# Everything the tests use from Debian: the broker, systemd-analyze for the unit file, and a headless
# Chromium with its driver for the console's browser tests (no browser is ever downloaded).
debian-packages: mosquitto
	@PATH="$$PATH:/usr/sbin" .ci/apt-install systemd-analyze:systemd chromium:chromium chromedriver:chromium-driver

test: $(STAMP) debian-packages
	PATH="$$PATH:/usr/sbin" $(BIN)/python -m pytest -q

demo: setup
	PATH="$$PATH:/usr/sbin" $(BIN)/hgad-edge demo

# The demo's model and the default recipe, torch and onnxruntime, the bare model and the agent, into
# $(BENCH_OUT)/*.json and the table $(BENCH_OUT)/summary.md.
bench: $(STAMP) debian-packages
	PATH="$$PATH:/usr/sbin" $(BIN)/python -m benchmarks.bench_all $(BENCH_OUT)

# What benchmarks/bench_gpu.sh needs on a GPU box that reaches no registry (a lent GPU machine), into gpu-kit/:
# wheels for its Python (GPU_PYTHON) of the packages a CUDA PyTorch image lacks, and Debian's Mosquitto.
GPU_PYTHON ?= 3.12
gpu-kit: $(STAMP)
	$(BIN)/python -m benchmarks.gpu_kit gpu-kit --python $(GPU_PYTHON)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache demo-out bench-out gpu-kit
