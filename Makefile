# Two commands do all set-up on a machine with only Python 3 and make:
#   make demo   run the payroll example DAG against the bundled Feishu sandbox
#   make test   lint, type checks and every test, on the current and the lowest supported Airflow
PYTHON ?= python3
AIRFLOW_VERSION ?= 3.3.2
LOWEST_AIRFLOW_VERSION ?= 3.2.0
# Airflow 3.2.0 predates the fastapi<0.137 cap that 3.3 added; newer fastapi/cadwyn
# break its execution API at start-up. Users of 3.2.0 need the same pins.
LOWEST_PINS := "fastapi[standard-no-fastapi-cloud-cli]<0.137" "cadwyn<9"
VENV := .venv
LOWEST_VENV := .venv-lowest
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: demo test lint typecheck pytest pytest-lowest clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_QUIET) -e ".[dev]" "apache-airflow==$(AIRFLOW_VERSION)"
	touch $@

$(LOWEST_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/pip install $(PIP_QUIET) -e ".[dev]" "apache-airflow==$(LOWEST_AIRFLOW_VERSION)" $(LOWEST_PINS)
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/python scripts/demo.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

pytest: $(VENV)/.installed
	$(VENV)/bin/pytest

# The lowest Airflow we declare gets the same suite: provider metadata that its schema
# does not know, or an airflow.sdk name it lacks, would break users there first.
pytest-lowest: $(LOWEST_VENV)/.installed
	$(LOWEST_VENV)/bin/pytest

test: lint typecheck pytest pytest-lowest

clean:
	rm -rf $(VENV) $(LOWEST_VENV) .demo .pytest_cache .mypy_cache .ruff_cache
