# Two commands do all set-up on a machine with only Python 3 and make:
#   make demo   run the payroll example DAG against the bundled Feishu sandbox
#   make test   lint, type checks and every test, on the current and the lowest supported Airflow
#   make airflow  a local Airflow UI with the provider, the examples and the sandbox
#   make airflow-celery  the same on CeleryExecutor with two workers, PostgreSQL and Redis
PYTHON ?= python3
AIRFLOW_VERSION ?= 3.3.2
LOWEST_AIRFLOW_VERSION ?= 3.2.0
# Airflow 3.2.0 predates the fastapi<0.137 cap that 3.3 added; newer fastapi/cadwyn
# break its execution API at start-up. Users of 3.2.0 need the same pins.
LOWEST_PINS := "fastapi[standard-no-fastapi-cloud-cli]<0.137" "cadwyn<9"
VENV := .venv
LOWEST_VENV := .venv-lowest
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: demo airflow airflow-celery venvs test lint typecheck pytest pytest-lowest browser-deps postgres-deps mariadb-deps redis-deps clean

# The ledger tests start their own PostgreSQL server (Debian's postgresql: initdb and
# pg_ctl on a port of their own); `make test` insists that they run.
export FEISHU_HIRE_TEST_POSTGRES := required
# ... and their own MariaDB (Debian's mariadb-server: mariadb-install-db and mariadbd in a temporary folder).
export FEISHU_HIRE_TEST_MARIADB := required

# Each venv in two steps: Airflow alone (most of the download; `make venvs` does both venvs'
# at once), then the provider, editable, with its dev tools. The editable step writes the
# egg-info into this folder, so the two venvs never take it at the same time.
$(VENV)/.airflow: Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_QUIET) "apache-airflow==$(AIRFLOW_VERSION)"
	touch $@

$(VENV)/.installed: $(VENV)/.airflow pyproject.toml Makefile
	$(VENV)/bin/pip install $(PIP_QUIET) -e ".[dev]" "apache-airflow==$(AIRFLOW_VERSION)"
	touch $@

$(LOWEST_VENV)/.airflow: Makefile
	$(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/pip install $(PIP_QUIET) "apache-airflow==$(LOWEST_AIRFLOW_VERSION)" $(LOWEST_PINS)
	touch $@

$(LOWEST_VENV)/.installed: $(LOWEST_VENV)/.airflow pyproject.toml Makefile
	$(LOWEST_VENV)/bin/pip install $(PIP_QUIET) -e ".[dev]" "apache-airflow==$(LOWEST_AIRFLOW_VERSION)" $(LOWEST_PINS)
	touch $@

# Both venvs; pip mostly waits on the network, so the two Airflow installs overlap.
venvs:
	$(MAKE) -j2 $(VENV)/.airflow $(LOWEST_VENV)/.airflow
	$(MAKE) $(VENV)/.installed $(LOWEST_VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/python scripts/demo.py

# `make airflow`: Airflow UI, scheduler and the sandbox, with feishu_hire_default pointing at it.
# The UI listens on 127.0.0.1 only; `make airflow AIRFLOW_HOST=0.0.0.0` (or AIRFLOW_HOST in the
# environment) opens it to the network.
airflow: $(VENV)/.installed
	$(VENV)/bin/python scripts/local_airflow.py

# `make airflow-celery`: CeleryExecutor with PostgreSQL, Redis, api-server, scheduler,
# dag-processor, triggerer and two Celery workers as separate processes, the provider
# installed as a package in .venv-celery (built on first use); prints the URL and the
# login; Ctrl-C stops all of it.
airflow-celery: $(VENV)/.installed postgres-deps redis-deps
	$(VENV)/bin/python scripts/celery_stack.py

# Debian's redis-server, the Celery broker of the distributed tests and `make airflow-celery`,
# installed when missing and we may use apt; no daemon is left running (each starts its own).
redis-deps:
	@if command -v redis-server >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	else echo "redis-server is missing and cannot be installed here: install Debian's redis-server"; exit 1; fi

# The browser test drives Debian's chromium (Playwright never downloads one). Installed
# here when missing and we may use apt; otherwise the test skips and says why.
browser-deps:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "chromium is missing and cannot be installed here: the browser test will be skipped"; fi

# Debian's PostgreSQL server binaries, installed when missing and we may use apt; no
# cluster is created or started here (the tests run their own, and stop it).
postgres-deps:
	@if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else echo "PostgreSQL is missing and cannot be installed here: install Debian's postgresql"; exit 1; fi

# Debian's MariaDB server binaries, installed when missing and we may use apt; no server is started
# here (the tests run their own, on a port of their own, and stop it).
mariadb-deps:
	@if command -v mariadb-install-db >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null; \
	else echo "MariaDB is missing and cannot be installed here: install Debian's mariadb-server"; exit 1; fi

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

# Two test processes (this project's CI machine has 2 cores; most tests wait on servers and
# subprocesses), a whole file at a time, the longest files first (tests/conftest.py): a
# file's module fixtures (the browser test's Airflow, the Celery stack) start once, and no
# two tests of one file share a server at once. PostgreSQL, Redis, the sandboxes and every
# Airflow take free ports and temporary folders. `make pytest PYTEST_XDIST=` runs in one process.
PYTEST_XDIST ?= -n 2 --dist loadfile --no-loadscope-reorder

# The Celery stack runs alone afterwards: its tests assert that workers on two machines keep
# Feishu's pace with zero 429s, and with another Airflow beside it on 2 cores they saw 429s.
pytest: $(VENV)/.installed browser-deps postgres-deps mariadb-deps redis-deps
	$(VENV)/bin/pytest $(PYTEST_XDIST) -m "not distributed"
	$(VENV)/bin/pytest -m distributed

# The lowest Airflow we declare runs what can differ between Airflow versions, the files marked
# `lowest`: provider metadata its schema must accept (test_provider); airflow.sdk names and the
# checks made when a DAG file is parsed (test_operator, test_sensor); the connection and ledger
# hooks (test_hook, test_ledger_hook); real DAG runs with `airflow dags test` (test_dags); a real
# scheduler and triggerer with the approval flow (test_approval_dag: 3.2 defers the approval to
# the triggerer) and the balance events (test_event_dag: 3.2 has no ack mode, so the trigger's
# other path); and the ledger and payout core (test_ledger, test_payout). The rest (the sandbox,
# the client, the event long connection, the payroll maths, and what needs Airflow 3.3) runs
# once, above; the browser and the Celery stack run on the current Airflow only. The ledger core
# has no Airflow in it and both venvs pin the same SQLAlchemy and Alembic, so here it runs on
# SQLite; the ledger hook (an Airflow connection to an engine) still runs on all three databases.
pytest-lowest: $(LOWEST_VENV)/.installed postgres-deps mariadb-deps
	$(LOWEST_VENV)/bin/pytest $(PYTEST_XDIST) -m "lowest and not browser and not distributed" \
		-k "test_ledger_hook or not (mysql or postgresql)"

test: venvs lint typecheck pytest pytest-lowest

# Everything the commands above create; the committed README screenshots in docs/ stay.
clean:
	rm -rf $(VENV) $(LOWEST_VENV) .venv-celery .demo .airflow test-artifacts build *.egg-info \
		.pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
