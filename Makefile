# infermesh: every command a developer or CI needs. Nothing is installed by hand: `make setup`
# bootstraps uv into .tools/ with the machine's Python 3.11 and installs the locked workspace into .venv/.
PYTHON ?= python3.11
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9

export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)
export UV_NO_PROGRESS := 1

.PHONY: setup gen lint fmt test demo up bench profile clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) uv.lock pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml cli/pyproject.toml)
	$(UV) sync --locked --all-packages
	touch $@

## setup: install the whole workspace (every library and service, editable) into .venv
setup: $(VENV)/.synced

## gen: regenerate the gRPC/protobuf stubs (.pyi included) and copy the Thrift IDL from protos/
gen: setup
	$(PY) scripts/gen_protos.py

## lint: ruff, formatting, and a failure when the generated stubs are stale
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) scripts/gen_protos.py --check

## fmt: apply ruff's fixes and formatting
fmt: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## test: set everything up and run every test
test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

## demo: set everything up, start the local mesh, run the demo workload, print a summary
demo: setup
	$(VENV)/bin/infermesh demo

## up: start the local mesh and keep it serving until Ctrl-C
up: setup
	$(VENV)/bin/infermesh up

## bench: run every bench/ script (BENCH="bench_x.py ..." reruns only those, into their RESULTS.md sections)
BENCH ?=
bench: setup
	$(PY) bench/run_all.py $(BENCH)

## profile: py-spy flame graphs of every mesh service under load, in bench/profiles/$(LABEL)/ (LABEL=after by default)
LABEL ?= after
profile: setup
	$(PY) bench/profile_mesh.py --label $(LABEL)

clean:
	rm -rf $(VENV) $(TOOLS) var .pytest_cache .ruff_cache
