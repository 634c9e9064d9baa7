"""Shared fixtures: an in-process Feishu sandbox over real HTTP, and an isolated Airflow home."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest

# Before anything imports Airflow: never touch the developer's ~/airflow.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="feishu-hire-tests-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"

from airflow_provider_feishu_hire.client import FeishuClient, RetryPolicy  # noqa: E402
from airflow_provider_feishu_hire.ledger import Ledger  # noqa: E402
from airflow_provider_feishu_hire.payroll import payroll_rows  # noqa: E402
from airflow_provider_feishu_hire.sandbox import (  # noqa: E402
    DEFAULT_APP_ID,
    DEFAULT_APP_SECRET,
    FeishuSandbox,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from local_airflow import LocalAirflow, free_port  # noqa: E402

T = TypeVar("T")
# Every real Airflow of the tests loads the event payout DAG: its sweep (every 15 minutes) would pay
# credits those tests make on purpose. Off unless a test is about the sweep (test_event_dag).
os.environ["FEISHU_HIRE_SWEEP_CRON"] = "off"
FAST_RETRY = RetryPolicy(max_attempts=5, backoff_base=0.01, backoff_max=0.05, budget=20)


def pytest_sessionfinish() -> None:
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)


# The files that start servers or real Airflows, longest first. `make test` runs the suite in
# two processes a whole file at a time, in collection order (--dist loadfile
# --no-loadscope-reorder): these go first, and the many quick files fill in around them, so
# neither process is left with a long file at the end. Files not named here keep their order.
# The Celery stack (test_distributed.py, 347 s) runs alone after them: see the Makefile.
LONGEST_FIRST = (  # seconds per file, estimated on a loaded machine with -n 2 (BENCHMARKS.md has the runs)
    "test_dags.py",  # 360: thirteen `airflow dags test` runs
    "test_payroll_batches_dag.py",  # 353: two airflow standalone
    "test_event_dag.py",  # 330: two airflow standalone, one waiting out a sweep
    "test_browser.py",  # 302
    "test_approval_dag.py",  # 220
    "test_console_browser.py",  # 170
    "test_local_airflow.py",  # 164
    "test_events_kill.py",  # 146
    "test_ledger.py",  # 130: three databases
    "test_invariant.py",  # 120: hypothesis on three databases
    "test_payout.py",  # 110
    "test_settlement.py",  # 103
    "test_console_airflow.py",  # 95
    "test_payroll_invariant.py",  # 90
    "test_console.py",  # 70
    "test_demo.py",  # 60
    "test_preview.py",  # 42
    "test_provider.py",  # 28
    "test_events_hostile.py",  # 24
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order stays


@pytest.fixture
def sandbox() -> Iterator[FeishuSandbox]:
    with FeishuSandbox(rate_limits=False) as running:
        yield running


@pytest.fixture
def client(sandbox: FeishuSandbox) -> Iterator[FeishuClient]:
    with FeishuClient(DEFAULT_APP_ID, DEFAULT_APP_SECRET, sandbox.url, timeout=2, retry=FAST_RETRY) as made:
        yield made


def connection_json(url: str, **extra: object) -> str:
    """A ``feishu_hire`` connection in the JSON form of ``AIRFLOW_CONN_<ID>``."""
    return json.dumps(
        {
            "conn_type": "feishu_hire",
            "host": url,
            "login": DEFAULT_APP_ID,
            "password": DEFAULT_APP_SECRET,
            "extra": extra,
        }
    )


@pytest.fixture
def feishu_connection(sandbox: FeishuSandbox, monkeypatch: pytest.MonkeyPatch) -> FeishuSandbox:
    monkeypatch.setenv("AIRFLOW_CONN_FEISHU_HIRE_DEFAULT", connection_json(sandbox.url, retry_budget=20))
    return sandbox


class AirflowRunner:
    """Runs ``airflow dags test`` in a subprocess against a migrated SQLite metadata DB."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.dags = home / "dags"
        self.dags.mkdir()

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            **extra,
        }

    def airflow(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return self.run([sys.executable, "-m", "airflow", *args], **env)

    def run(self, command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, env=self.env(**env), capture_output=True, text=True, timeout=600)

    def add_dag(self, source: Path) -> None:
        shutil.copy(source, self.dags / source.name)

    def dags_test(self, dag_id: str, conf: dict[str, object], **env: str) -> subprocess.CompletedProcess[str]:
        return self.airflow("dags", "test", dag_id, "--conf", json.dumps(conf), **env)

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        import sqlite3

        with sqlite3.connect(self.home / "airflow.db") as db:
            return db.execute(sql, params).fetchall()


@pytest.fixture(scope="session")
def airflow_runner(tmp_path_factory: pytest.TempPathFactory) -> AirflowRunner:
    runner = AirflowRunner(tmp_path_factory.mktemp("airflow_home"))
    migrated = runner.airflow("db", "migrate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    return runner


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """A throw-away PostgreSQL (Debian's ``postgresql``) on a port of its own, run as ``postgres`` when we are root."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = _free_port()
        self.datadir = Path(tempfile.mkdtemp(prefix="feishu-hire-pg-"))
        self._prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self._databases = 0

    def _run(self, *args: str) -> None:
        subprocess.run([*self._prefix, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        if self._prefix:
            shutil.chown(self.datadir, "postgres", "postgres")
        self._run(str(self.bindir / "initdb"), "-D", str(self.datadir / "data"), "-A", "trust", "-U", "postgres")
        options = f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.datadir / "data"), "-o", options,
            "-l", str(self.datadir / "log"), "-w", "start",
        )  # fmt: skip
        return self

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.datadir, ignore_errors=True)

    def new_database(self) -> str:
        """A fresh, empty database; returns its URI."""
        import psycopg2

        self._databases += 1
        name = f"ledger_{self._databases}"
        admin = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
        admin.close()
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


def _postgres_bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bindir = _postgres_bindir()
    if bindir is None:
        message = "PostgreSQL is not installed (Debian's postgresql; `make test` installs it)"
        if os.environ.get("FEISHU_HIRE_TEST_POSTGRES") == "required":
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer(bindir).start()
    try:
        yield server
    finally:
        server.stop()


def postgres_ledger_connection(uri: str) -> Callable[[], object]:
    import psycopg2

    parts = urlsplit(uri)
    return lambda: psycopg2.connect(
        host=parts.hostname, port=parts.port, user=parts.username, dbname=parts.path.lstrip("/")
    )


class MariaDBServer:
    """A throw-away MariaDB (Debian's ``mariadb-server``) on a port of its own, in a temporary data directory."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.datadir = Path(tempfile.mkdtemp(prefix="feishu-hire-mariadb-"))
        self._user = ["--user=root"] if os.geteuid() == 0 else []
        self._process: subprocess.Popen[bytes] | None = None
        self._databases = 0

    def start(self) -> MariaDBServer:
        data = self.datadir / "data"
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--auth-root-authentication-method=normal",
             "--skip-test-db", *self._user],
            check=True, capture_output=True, timeout=180,
        )  # fmt: skip
        self._process = subprocess.Popen(
            [_mariadbd(), "--no-defaults", f"--datadir={data}", f"--port={self.port}", "--bind-address=127.0.0.1",
             f"--socket={self.datadir / 'sock'}", f"--pid-file={self.datadir / 'pid'}", "--skip-log-bin",
             "--innodb-flush-log-at-trx-commit=2", "--innodb-buffer-pool-size=64M", "--max-connections=500",
             "--character-set-server=utf8mb4", "--collation-server=utf8mb4_bin", *self._user],
            stdout=subprocess.DEVNULL, stderr=open(self.datadir / "log", "wb"),  # noqa: SIM115
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            try:
                self._admin().close()
                return self
            except Exception:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("MariaDB did not start: " + (self.datadir / "log").read_text()[-2000:]) from None
                time.sleep(0.3)

    def _admin(self):  # type: ignore[no-untyped-def]
        import pymysql

        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", autocommit=True)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=30)
        shutil.rmtree(self.datadir, ignore_errors=True)

    def new_database(self) -> str:
        """A fresh, empty database; returns its URI (``mysql://``, as an Airflow connection)."""
        self._databases += 1
        name = f"ledger_{self._databases}"
        admin = self._admin()
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        admin.close()
        return f"mysql://root@127.0.0.1:{self.port}/{name}"


def _mariadbd() -> str:
    return shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin:/usr/local/sbin") or "mariadbd"


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDBServer]:
    if shutil.which("mariadb-install-db") is None:
        message = "MariaDB is not installed (Debian's mariadb-server; `make test` installs it)"
        if os.environ.get("FEISHU_HIRE_TEST_MARIADB") == "required":
            pytest.fail(message)
        pytest.skip(message)
    server = MariaDBServer().start()
    try:
        yield server
    finally:
        server.stop()


def mariadb_ledger_connection(uri: str) -> Callable[[], object]:
    import pymysql
    from pymysql.constants import CLIENT

    parts = urlsplit(uri)
    return lambda: pymysql.connect(
        host=parts.hostname, port=parts.port, user=parts.username, database=parts.path.lstrip("/"),
        charset="utf8mb4", client_flag=CLIENT.FOUND_ROWS,
    )  # fmt: skip


LEDGER_DATABASES = ("sqlite", "postgresql", "mysql")


def connect_to(dialect: str, where: str) -> Callable[[], object]:
    """A DB-API connect function for the ledger at ``where``: an SQLite file's path, or a database URI."""
    if dialect == "sqlite":
        return lambda: sqlite3.connect(where, check_same_thread=False, isolation_level=None)
    return postgres_ledger_connection(where) if dialect == "postgresql" else mariadb_ledger_connection(where)


def ledger_connection(request: pytest.FixtureRequest, dialect: str, sqlite_path: Path) -> Callable[[], object]:
    """A DB-API connect function for a new, empty ledger database of ``dialect`` (its server started once)."""
    if dialect == "sqlite":
        return lambda: sqlite3.connect(sqlite_path, check_same_thread=False, isolation_level=None)
    if dialect == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        return postgres_ledger_connection(server.new_database())
    maria: MariaDBServer = request.getfixturevalue("mariadb")
    return mariadb_ledger_connection(maria.new_database())


@pytest.fixture(params=LEDGER_DATABASES)
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """An empty, migrated ledger on each supported database."""
    made = Ledger(ledger_connection(request, request.param, tmp_path / "ledger.db"), request.param)
    made.migrate()
    try:
        yield made
    finally:
        made.close()


PayrollLine = tuple[str, str, str, str, str]  # account, order id, bonus type, currency, amount


def sandbox_payroll(sandbox: FeishuSandbox) -> Counter[PayrollLine]:
    """What Feishu (the sandbox's own ledger) paid, as payroll lines: the truth payroll must equal."""
    lines: Counter[PayrollLine] = Counter()
    for entry in sandbox.state()["ledger"]:
        details = entry["withdrawal_details"]
        account, order = entry["referral_account_id"], entry["external_order_id"]
        if details["point_bonus"]:
            lines[(account, order, "points", "", str(details["point_bonus"]))] += 1
        for cash in details["cash_bonus"]:
            if cash["amount"]:
                amount = Decimal(str(cash["amount"]))
                lines[(account, order, "cash", cash["currency_type"], f"{amount:.2f}")] += 1
    return lines


def ledger_payroll(ledger: Ledger, **filters: object) -> Counter[PayrollLine]:
    """The payroll the provider makes from its ledger, in the same terms."""
    rows = payroll_rows(ledger.rows(**filters))  # type: ignore[arg-type]
    return Counter(
        (r["referral_account_id"], r["external_order_id"], r["bonus_type"], r["currency"], r["amount"]) for r in rows
    )


def assert_paid_exactly_once(ledger: Ledger, sandbox: FeishuSandbox) -> None:
    """The invariant: every withdrawal that moved money appears in payroll once, under its account, to the cent."""
    truth = sandbox_payroll(sandbox)
    orders = [entry["external_order_id"] for entry in sandbox.state()["ledger"]]
    assert len(orders) == len(set(orders)), "Feishu saw one order id twice as a new withdrawal"
    assert ledger_payroll(ledger) == truth


def ledger_sql(ledger: Ledger, statement: str, *params: object) -> list[tuple[Any, ...]]:
    """Plain SQL in a transaction of its own, committed: what any other process would see.

    ``?`` marks each parameter, bound by SQLAlchemy in the driver's own style; a statement
    without parameters goes to the driver as it is (DDL). Rows come back as tuples, amounts
    without the zeros a fixed-scale column adds (as the ledger reads them).
    """
    from sqlalchemy import text

    from airflow_provider_feishu_hire.ledger.schema import tidy_money

    with ledger.engine.begin() as conn:
        if params:
            numbered = iter(range(len(params)))
            bound = re.sub(r"\?", lambda _: f":p{next(numbered)}", statement)
            result = conn.execute(text(bound), {f"p{index}": value for index, value in enumerate(params)})
        else:
            result = conn.exec_driver_sql(statement)
        if not result.returns_rows:
            return []
        return [tuple(tidy_money(v) if isinstance(v, Decimal) else v for v in row) for row in result.fetchall()]


def wait_for(check: Callable[[], T], what: str, timeout: float = 240.0) -> T:
    """Poll until ``check`` is truthy; a hang fails after ``timeout`` (generous: the machine is shared)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r} after {timeout:.0f}s")
        time.sleep(0.5)


@contextmanager
def local_airflow(
    tmp_path: Path, sandbox: FeishuSandbox, extra_dags: Sequence[Path] = (), **env: str
) -> Iterator[LocalAirflow]:
    """``airflow standalone`` (api-server, scheduler, dag-processor, triggerer) on the example DAGs, on free ports.

    Its ``feishu_hire_default`` points at ``sandbox``; the ledger is ``tmp_path/ledger.db``.
    ``extra_dags`` are DAG files to load beside the examples; ``env`` is given to every process.
    """
    local = LocalAirflow(tmp_path / "home", port=free_port(), sandbox_port=free_port(), free_log_ports=True)
    # Environment connections win over the one LocalAirflow stores for its own sandbox.
    local.env.update(
        AIRFLOW_CONN_FEISHU_HIRE_DEFAULT=connection_json(sandbox.url),
        AIRFLOW_CONN_FEISHU_HIRE_LEDGER=json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "ledger.db")}),
        AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY="1",
        **env,
    )
    if extra_dags:
        dags = tmp_path / "dags"
        dags.mkdir()
        for source in [*sorted((ROOT / "example_dags").glob("*.py")), *extra_dags]:
            shutil.copy(source, dags / source.name)
        local.env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags)
    try:
        local.start(log=tmp_path / "standalone.log")
        yield local
    finally:
        local.stop()
