# The two commands: `make demo` and `make test`. Each sets up .venv from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make bench-peers` measures conveyor beside PgQueuer and huey, and the Redis queues (Dramatiq,
# SAQ, RQ, arq, Celery, huey) beside a raw redis-py loop, pinned in a virtualenv of their own
# (benchmarks/peers/requirements.txt), so the project's .venv never sees them.
PEERS_VENV := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed
# `make docs` builds the documentation site (site/) with the tools pinned in requirements-docs.txt.
DOCS_VENV := .venv-docs
DOCS_STAMP := $(DOCS_VENV)/.installed
include mk/django.mk

.PHONY: demo test check bench bench-peers docs lint screenshots clean

$(STAMP): pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# PYTEST_ARGS='-m "not faults"' leaves out the fault suite (tests/faults) on a quick local run.
# The browser tests need Debian's Chromium: installed first where it can be (see the script);
# CONVEYOR_SKIP_BROWSER=1 leaves them out instead.
test: $(STAMP)
	scripts/ensure-chromium.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) test-django

# The quick loop: unit and contract tests on SQLite only (no server needed), under a minute.
check: $(STAMP)
	CONVEYOR_TEST_BACKENDS=sqlite $(BIN)/python -m pytest -q tests/unit tests/contract $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks

$(PEERS_STAMP): pyproject.toml benchmarks/peers/requirements.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet -r benchmarks/peers/requirements.txt
	$(PEERS_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $(PEERS_STAMP)

# conveyor beside PgQueuer (PostgreSQL) and huey (SQLite), the Redis peers beside a raw loop;
# BENCH_ARGS='--quick' for a short run, BENCH_ARGS='--only redis' for one store.
bench-peers: $(PEERS_STAMP)
	$(PEERS_VENV)/bin/python -m benchmarks.peers $(BENCH_ARGS)

$(DOCS_STAMP): requirements-docs.txt
	$(PYTHON) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DOCS_VENV)/bin/python -m pip install --quiet -r requirements-docs.txt
	touch $(DOCS_STAMP)

# The site in site/, built --strict: a broken link or anchor, or a docstring it cannot read, fails.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs build --strict

screenshots: $(STAMP)
	CONVEYOR_SCREENSHOTS=docs/img $(BIN)/python -m pytest -q tests/browser/test_dashboard.py -k sqlite

# ruff's lint rules and its formatting, and mypy --strict on src and tests (pyproject's [tool.mypy]).
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(PEERS_VENV) $(DOCS_VENV) $(DJANGO6_VENV) $(DJANGO52_VENV) site .pytest_cache .mypy_cache .ruff_cache \
		conveyor-demo.db*
