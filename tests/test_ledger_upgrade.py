"""Ledgers of schemas 1 and 2, as released, filled with paid, sending, review and skipped rows, upgraded to
this release's head: every row and every amount kept, nothing exported twice, and the ledger works after.

SQLite and PostgreSQL ledgers are built by the released SQL (tests/data/ledger_schema_v{1,2}.*.sql).
Schemas 1 and 2 never existed on MySQL/MariaDB (those releases refused any other database), so a
MariaDB ledger is built by this release's own revisions 0001 and 0002, then upgraded the same way.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from airflow_provider_feishu_hire.ledger import (
    PAID,
    REVIEW,
    RUN_SCOPE,
    SENDING,
    SKIPPED,
    Intent,
    Ledger,
    PayrollScope,
    TaskTry,
)
from airflow_provider_feishu_hire.ledger.migrations import PRE_ALEMBIC_REVISIONS, VERSION_TABLE, head, migrate
from tests.conftest import LEDGER_DATABASES, ledger_connection

pytestmark = pytest.mark.lowest  # also run on the lowest supported Airflow (Makefile: pytest-lowest)

DATA = Path(__file__).parent / "data"
DAG, APP, WHEN = "payroll", "cli_app", "2026-11-30T00:00:00.000+00:00"
A, B, C = "7001000000000000001", "7001000000000000002", "7001000000000000003"
ROWS = [  # order, account, status, run, trans_time, points, cash, raw answer
    ("11", A, PAID, "run_1", 1796290373473, 100, {"CNY": "0.10", "USD": "7"}, None),
    ("12", B, PAID, "run_1", 1796290373474, 0, {"CNY": "123456789012.78", "KWD": "0.105"}, None),
    ("13", C, PAID, "run_2", 1796290373475, 7, {}, None),  # paid, never exported
    ("14", A, SENDING, "run_2", None, None, {}, None),
    ("15", B, REVIEW, "run_2", None, None, {}, '{"point_bonus": "lots"}'),
    ("16", C, SKIPPED, "run_2", None, None, {}, None),
]
EXPORTED = [  # schema 1 and 2 exported run_1: its payroll lines
    ("11", A, "points", "", "100"),
    ("11", A, "cash", "CNY", "0.10"),
    ("11", A, "cash", "USD", "7.00"),
    ("12", B, "cash", "CNY", "123456789012.78"),
    ("12", B, "cash", "KWD", "0.105"),
]


def build_released(ledger: Ledger, version: int) -> None:
    """The schema as released (the released SQL where it existed), with the rows above."""
    if ledger.dialect == "mysql":
        migrate(ledger, target=PRE_ALEMBIC_REVISIONS[version])
    else:
        released = (DATA / f"ledger_schema_v{version}.{ledger.dialect}.sql").read_text()
        with ledger._begin() as conn:
            for statement in "\n".join(line for line in released.splitlines() if not line.startswith("--")).split(";"):
                if statement.strip():
                    conn.exec_driver_sql(statement)
    money: Any = (lambda amount: amount) if ledger.dialect == "sqlite" else Decimal
    with ledger._begin() as conn:
        for order, account, status, run, trans_time, points, cash, raw in ROWS:
            conn.execute(
                text(
                    "INSERT INTO feishu_hire_withdrawal (external_order_id, referral_account_id, withdraw_bonus_type, "
                    "app_id, dag_id, run_id, task_id, map_index, requested_at, status, sends, trans_time, "
                    "point_bonus, error_msg, raw_answer, updated_at) VALUES (:order, :account, '1,2', :app, :dag, "
                    ":run, 'withdraw', -1, :when, :status, 1, :trans_time, :points, :msg, :raw, :when)"
                ),
                {"order": order, "account": account, "app": APP, "dag": DAG, "run": run, "when": WHEN,
                 "status": status, "trans_time": trans_time, "points": points, "raw": raw,
                 "msg": "Feishu's answer does not parse" if raw else None},
            )  # fmt: skip
            conn.execute(
                text(
                    "INSERT INTO feishu_hire_withdrawal_attempt (external_order_id, dag_id, run_id, task_id, "
                    "map_index, try_number, started_at, finished_at, outcome) VALUES (:order, :dag, :run, "
                    "'withdraw', -1, 1, :when, :finished, :outcome)"
                ),
                {"order": order, "dag": DAG, "run": run, "when": WHEN, "finished": None if status == SENDING else WHEN,
                 "outcome": None if status == SENDING else status},
            )  # fmt: skip
            for currency, amount in cash.items():
                conn.execute(
                    text("INSERT INTO feishu_hire_withdrawal_cash VALUES (:order, :currency, :amount)"),
                    {"order": order, "currency": currency, "amount": money(amount)},
                )
        for order, account, bonus_type, currency, amount in EXPORTED:
            conn.execute(
                text(
                    "INSERT INTO feishu_hire_payroll (external_order_id, bonus_type, currency, referral_account_id, "
                    "trans_time, amount, dag_id, run_id) VALUES (:order, :bonus_type, :currency, :account, "
                    "'2026-12-01T08:12:53.473Z', :amount, :dag, 'run_1')"
                ),
                {"order": order, "bonus_type": bonus_type, "currency": currency, "account": account,
                 "amount": money(amount), "dag": DAG},
            )  # fmt: skip
        if version >= 2:
            conn.execute(
                text("INSERT INTO feishu_hire_registration VALUES (:app, 'a@example.com', :account, :when)"),
                {"app": APP, "account": A, "when": WHEN},
            )


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("dialect", LEDGER_DATABASES)
def test_a_released_ledger_upgrades_to_head_with_every_row_and_amount(
    dialect: str, version: int, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with Ledger(ledger_connection(request, dialect, tmp_path / "ledger.db"), dialect) as ledger:
        build_released(ledger, version)

        ledger.migrate()
        ledger.migrate()  # a second worker starting later: nothing to do

        with ledger._begin(write=False) as conn:
            assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all() == [(head(),)]
            lines = conn.execute(
                text("SELECT external_order_id, referral_account_id, bonus_type, currency, amount, payroll_batch_id "
                     "FROM feishu_hire_payroll ORDER BY 1, 3, 4")
            ).all()  # fmt: skip
        rows = {row.external_order_id: row for row in ledger.rows()}
        assert {order: (row.status, row.referral_account_id, row.sends) for order, row in rows.items()} == {
            order: (status, account, 1) for order, account, status, *_ in ROWS
        }
        for order, _, status, run, trans_time, points, cash, raw in ROWS:
            row = rows[order]
            assert row.cash == {currency: Decimal(amount) for currency, amount in cash.items()}, order
            assert (row.run_id, row.raw_answer, row.run_generation) == (run, raw, 1)
            if status == PAID:
                assert row.withdrawal is not None
                assert (row.withdrawal.trans_time, row.withdrawal.point_bonus) == (trans_time, points)
            assert len(ledger.attempts(order)) == 1
        # What was exported stays exported, in one legacy batch per run, amounts to the last digit.
        (legacy,) = ledger.payroll_batches()
        assert (legacy.scope, legacy.scope_key) == ("legacy", f"{DAG}/run_1")
        assert [m.external_order_id for m in legacy.members] == ["11", "12"]
        assert legacy.cash_bonus == {"CNY": Decimal("123456789012.88"), "USD": Decimal(7), "KWD": Decimal("0.105")}
        assert [(o, a, b, c, Decimal(str(amount)), batch) for o, a, b, c, amount, batch in lines] == sorted(
            (o, a, b, c, Decimal(amount), legacy.id) for o, a, b, c, amount in EXPORTED
        )
        # The ledger works on: the next export claims only the paid row never exported.
        maker = TaskTry(DAG, "run_2", "export")
        batch = ledger.make_payroll_batch(PayrollScope(RUN_SCOPE, DAG, "run_2"), maker)
        assert batch is not None and [m.external_order_id for m in batch.members] == ["13"]
        assert ledger.make_payroll_batch(PayrollScope(RUN_SCOPE, DAG, "run_1"), maker) is None
        retry = ledger.claim(Intent("14", A, (1, 2), APP, DAG, "run_2", "withdraw", try_number=2))
        assert retry.paid is None and retry.uncertain  # the unknown send is sent again, as sending rows are
        if version >= 2:
            assert ledger.registered_account(APP, "a@example.com") == A
