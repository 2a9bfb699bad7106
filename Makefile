# Each target sets itself up: a .venv is created and the project installed into it when missing
# or when pyproject.toml changed. Mosquitto (broker for tests and the demo) comes from apt if absent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_JSON ?= bench-out/bench.json

.PHONY: all setup test demo bench lint fmt mosquitto clean

all: test

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) mosquitto

mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || PATH="$$PATH:/usr/sbin" command -v mosquitto >/dev/null 2>&1 || { \
	  echo "mosquitto not found: installing it with apt"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq mosquitto mosquitto-clients; }

test: setup
	PATH="$$PATH:/usr/sbin" $(BIN)/python -m pytest -q

demo: setup
	PATH="$$PATH:/usr/sbin" $(BIN)/hgad-edge demo

bench: setup
	PATH="$$PATH:/usr/sbin" $(BIN)/hgad-edge bench --demo --json $(BENCH_JSON)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache demo-out bench-out
