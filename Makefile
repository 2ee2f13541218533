# ASCA Workbench: `make app` starts the workbench on the built-in demo data, `make test` runs
# every check. Both create .venv and install what they need on first use.
#   make test        set-up, then the lanes in order: lint -> fast tests -> slow tests
#   make lint        ruff check, ruff format --check and mypy
#   make test-fast   lint and the fast tests (pytest -m "not slow", under 3 minutes)
VENV ?= .venv
PORT ?= 8501
ADDRESS ?= 127.0.0.1
PYTEST = $(VENV)/bin/python -m pytest

define lint_lane
	@echo "== lint: ruff check, ruff format --check, mypy"
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
endef

define fast_lane
	@echo "== fast tests: pytest -m 'not slow'"
	$(PYTEST) -m "not slow"
endef

define slow_lane
	@echo "== slow tests: pytest -m slow (training runs, the browser, the notebooks)"
	$(PYTEST) -m slow
endef

.PHONY: app test test-fast setup bench lint

app:
	@scripts/setup.sh app
	$(VENV)/bin/streamlit run app.py --server.address $(ADDRESS) --server.port $(PORT) --browser.gatherUsageStats false

test:
	@scripts/setup.sh test
	$(lint_lane)
	$(fast_lane)
	$(slow_lane)

test-fast:
	@scripts/setup.sh test
	$(lint_lane)
	$(fast_lane)

lint:
	@scripts/setup.sh test
	$(lint_lane)

setup:
	@scripts/setup.sh test

bench:
	@scripts/setup.sh test
	$(VENV)/bin/pip install --quiet -e '.[test,bench]'
	$(VENV)/bin/python benchmarks/run_all.py
