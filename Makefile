# Two commands: `make run` serves everything; `make test` runs the suite. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
E2E := tests/e2e

.PHONY: install run services test lint bench stop e2e-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/python -m trigger_project.dev

# The embedded Postgres and Redis alone, for manage.py commands without `make run` (`make stop` stops them).
services: install
	$(BIN)/python -m trigger_project.embedded start

# The SDK end-to-end test needs Node.js; without npm it is skipped with a visible reason.
e2e-deps:
	@if command -v npm >/dev/null 2>&1; then \
		test -f $(E2E)/node_modules/.package-lock.json -a $(E2E)/node_modules/.package-lock.json -nt $(E2E)/package-lock.json \
		|| (cd $(E2E) && npm ci --no-audit --no-fund --loglevel=error); \
	else echo "npm not found: the SDK end-to-end test will be skipped"; fi

# Static checks first (seconds), then the suite.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# On the embedded servers (no DATABASE_URL / REDIS_URL) the suite starts them, and stops those it started.
test: install e2e-deps lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Benchmarks: `make bench` (full) or `make bench QUICK=1` (about eight minutes on 2 cores). Figures: docs/BENCHMARKS.md.
# The load generator is wrk (Debian's package): installed here when missing, as .ci/run installs nginx.
bench: install
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	@command -v wrk >/dev/null 2>&1 || { \
		echo "bench: installing wrk, the load generator (apt-get install wrk)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	QUICK=$(QUICK) $(BIN)/python -m bench

# Says what it stopped. A fresh clone has no .venv, so no embedded server that could be running.
stop:
	@if test -x $(BIN)/python; then $(BIN)/python -m trigger_project.embedded stop; \
	else echo "no $(VENV): no embedded server to stop"; fi

clean: stop
	rm -rf .dev $(VENV) $(E2E)/node_modules
