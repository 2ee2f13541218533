# ASCA Workbench: `make app` starts the workbench on the built-in demo data, `make test` runs
# every test. Both create .venv and install what they need on first use.
VENV ?= .venv
PORT ?= 8501
ADDRESS ?= 127.0.0.1

.PHONY: app test setup bench lint

app:
	@scripts/setup.sh app
	$(VENV)/bin/streamlit run app.py --server.address $(ADDRESS) --server.port $(PORT) --browser.gatherUsageStats false

test:
	@scripts/setup.sh test
	$(VENV)/bin/python -m pytest

setup:
	@scripts/setup.sh test

bench:
	@scripts/setup.sh test
	$(VENV)/bin/pip install --quiet -e '.[test,bench]'
	$(VENV)/bin/python benchmarks/run_all.py

lint:
	@scripts/setup.sh test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
