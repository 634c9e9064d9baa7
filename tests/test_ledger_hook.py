"""Where the ledger lives: the feishu_hire_ledger connection, or an embedded SQLite file on one machine only."""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from airflow_provider_feishu_hire.hooks.ledger import FeishuHireLedgerHook
from airflow_provider_feishu_hire.ledger import RUN_SCOPE, Intent, LedgerError, PayrollScope
from airflow_provider_feishu_hire.withdrawal import Withdrawal
from tests.conftest import MariaDBServer, PostgresServer

pytestmark = pytest.mark.lowest  # also run on the lowest supported Airflow (Makefile: pytest-lowest)

INTENT = Intent("7000000000000000001", "7001", (1, 2), "cli_app", "payroll", "manual__1", "withdraw")
PAID = Withdrawal("7001", INTENT.external_order_id, 1683634459543, 100, {"CNY": Decimal("0.10"), "USD": Decimal("7")})


def test_without_a_connection_the_ledger_is_a_file_in_airflow_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("AIRFLOW_CONN_FEISHU_HIRE_LEDGER", raising=False)
    hook = FeishuHireLedgerHook()
    hook.ledger.record_paid(hook.ledger.claim(INTENT), PAID)
    hook.close()
    with sqlite3.connect(tmp_path / "feishu_hire_ledger.db") as db:
        assert db.execute("SELECT referral_account_id, status FROM feishu_hire_withdrawal").fetchall() == [
            ("7001", "paid")
        ]
    assert hook.default_payroll_dir == tmp_path / "feishu_hire_payroll"


@pytest.mark.parametrize("executor", ["CeleryExecutor", "KubernetesExecutor", "airflow.providers.edge3.EdgeExecutor"])
def test_the_embedded_ledger_is_refused_where_tasks_run_on_several_machines(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, executor: str
) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", executor)
    monkeypatch.delenv("AIRFLOW_CONN_FEISHU_HIRE_LEDGER", raising=False)
    with pytest.raises(LedgerError, match="AIRFLOW_CONN_FEISHU_HIRE_LEDGER"):
        FeishuHireLedgerHook().ledger  # noqa: B018
    assert not (tmp_path / "feishu_hire_ledger.db").exists()


def test_a_sqlite_connection_names_the_file_on_one_machine_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "shared" / "ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_FEISHU_HIRE_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    hook = FeishuHireLedgerHook()
    hook.ledger.claim(INTENT)
    hook.close()
    assert path.exists()
    # Even a file on a "shared" folder splits or corrupts the ledger when workers are machines.
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    with pytest.raises(LedgerError, match="is SQLite, which cannot be used with CeleryExecutor"):
        FeishuHireLedgerHook().ledger  # noqa: B018


def test_a_payroll_batch_reads_back_exactly_once_on_every_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    for kind in ("sqlite", "postgres", "mysql"):
        if kind == "sqlite":
            conn = {"conn_type": "sqlite", "host": str(tmp_path / "ledger.db")}
        elif kind == "postgres":
            server: PostgresServer = request.getfixturevalue("postgres")
            conn = server.new_database()  # type: ignore[assignment]
        else:  # a mysql connection, made into a PyMySQL engine by the hook (no MySQL provider installed)
            maria: MariaDBServer = request.getfixturevalue("mariadb")
            conn = maria.new_database()  # type: ignore[assignment]
        monkeypatch.setenv("AIRFLOW_CONN_FEISHU_HIRE_LEDGER", conn if isinstance(conn, str) else json.dumps(conn))
        hook = FeishuHireLedgerHook()
        hook.ledger.record_paid(hook.ledger.claim(INTENT), PAID)
        scope = PayrollScope(RUN_SCOPE, "payroll", "manual__1")
        batch = hook.ledger.make_payroll_batch(scope, INTENT.task_try)
        assert batch is not None
        assert hook.ledger.make_payroll_batch(scope, INTENT.task_try) is None  # a re-run claims nothing again
        stored = hook.payroll_batch_rows(batch.id)
        hook.close()
        assert [(r[3], r[4], r[5]) for r in stored] == [
            ("cash", "CNY", Decimal("0.10")),
            ("cash", "USD", Decimal("7.00")),
            ("points", "", Decimal(100)),
        ], kind
        assert all(type(r[5]) is Decimal for r in stored), kind  # exact, never a float
        assert [str(r[5]) for r in stored] == ["0.10", "7.00", "100.00"], kind  # the same on every database
