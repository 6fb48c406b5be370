# ssehub: `make run` serves on 127.0.0.1:8000 (in-memory broker); `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?=
# The lock (constraints.txt): every install below gets exactly its versions.
PIP_INSTALL := $(BIN)/python -m pip install --quiet -c constraints.txt

.PHONY: run test lint typecheck check bench loadtest-connections constraints clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Serving needs only the package; tests, linters and type checks need the dev extras.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e .
	touch $@

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e '.[dev]'
	touch $(STAMP) $(VENV)/.installed

$(VENV)/.installed-bench: pyproject.toml constraints.txt $(STAMP)
	$(PIP_INSTALL) -e '.[dev,bench]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/ssehub serve --host 127.0.0.1 --port 8000

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(VENV)/.installed-bench
	$(BIN)/python -m loadtests.bench $(BENCH_ARGS)
	$(BIN)/python -m loadtests.redis_scaling

loadtest-connections: $(VENV)/.installed-bench
	$(BIN)/python -m loadtests.connections $(LOADTEST_ARGS)

# Regenerates the lock: the newest versions pyproject.toml allows, resolved in a
# fresh virtualenv (not this one), under constraints.txt's header comment.
constraints:
	rm -rf $(VENV)-lock
	$(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/python -m pip install --quiet --upgrade pip
	$(VENV)-lock/bin/python -m pip install --quiet -e '.[dev,bench]'
	{ sed '/^[^#]/,$$d' constraints.txt; $(VENV)-lock/bin/python -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(VENV)-lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
