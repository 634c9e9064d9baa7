"""Payroll batches in the ledger: every paid withdrawal in exactly one batch, whichever run or try paid it.

Each of the ways issue 16 found money outside payroll is replayed here at the ledger's
level, against the sandbox over HTTP and on SQLite and PostgreSQL: a skipped order paid by
a later run, a zombie try waking after its run's export, a run deleted and re-created
under the same run_id, a re-run export, a refused account. The real-Airflow versions are
in test_payroll_batches_dag.py.
"""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from airflow_provider_feishu_hire.client import FeishuClient
from airflow_provider_feishu_hire.ledger import (
    DAG_SCOPE,
    PAID,
    REJECTED,
    REVIEW,
    RUN_SCOPE,
    SENDING,
    SKIPPED,
    Intent,
    Ledger,
    PayrollScope,
    Superseded,
    TaskTry,
)
from airflow_provider_feishu_hire.payout import withdraw_account
from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_ID, DEFAULT_APP_SECRET, Account, FeishuSandbox
from airflow_provider_feishu_hire.withdrawal import Withdrawal, derive_external_order_id
from tests.conftest import (
    FAST_RETRY,
    PostgresServer,
    assert_paid_exactly_once,
    ledger_sql,
    postgres_ledger_connection,
)

DAG = "payroll"
A, B, C = "7600000000000000001", "7600000000000000002", "7600000000000000003"


def task(run_id: str = "run_1", try_number: int = 1, generation: int = 1, task_id: str = "withdraw") -> TaskTry:
    return TaskTry(DAG, run_id, task_id, -1, try_number, f"ti-{run_id}-{generation}-{try_number}", generation)


def intent_of(account: str, by: TaskTry, order_id: str | None = None) -> Intent:
    order_id = order_id or derive_external_order_id(
        dag_id=by.dag_id,
        run_id=by.run_id,
        task_id=by.task_id,
        referral_account_id=account,
        run_generation=by.run_generation,
    )
    return Intent(order_id, account, (1, 2), DEFAULT_APP_ID, by.dag_id, by.run_id, by.task_id, by.map_index,
                  by.try_number, by.ti_id, by.run_generation)  # fmt: skip


def run_scope(by: TaskTry) -> PayrollScope:
    return PayrollScope(RUN_SCOPE, by.dag_id, by.run_id, by.run_generation)


def export(ledger: Ledger, by: TaskTry) -> list[str]:
    """What the run's export batches now: the order ids of the new batch (empty when nothing new)."""
    made = ledger.make_payroll_batch(run_scope(by), replace_task(by, "export_payroll"))
    return sorted(row.external_order_id for row in made.members) if made else []


def replace_task(by: TaskTry, task_id: str) -> TaskTry:
    return TaskTry(by.dag_id, by.run_id, task_id, by.map_index, by.try_number, by.ti_id, by.run_generation)


def batched_payments(ledger: Ledger) -> dict[str, int]:
    """Order id -> batch id, from the batches themselves."""
    return {row.external_order_id: batch.id for batch in ledger.payroll_batches() for row in batch.members}


def assert_every_payment_in_exactly_one_batch(ledger: Ledger, sandbox: FeishuSandbox) -> None:
    paid = {entry["external_order_id"] for entry in sandbox.state()["ledger"]}
    members = [row.external_order_id for batch in ledger.payroll_batches() for row in batch.members]
    assert sorted(members) == sorted(paid), "a payment in no batch, or in two"
    assert_paid_exactly_once(ledger, sandbox)  # and the amounts, to the cent, under the right account


@pytest.fixture
def client(sandbox: FeishuSandbox) -> FeishuClient:
    with FeishuClient(DEFAULT_APP_ID, DEFAULT_APP_SECRET, sandbox.url, retry=FAST_RETRY) as made:
        yield made  # type: ignore[misc]


@pytest.fixture
def sandbox() -> FeishuSandbox:
    accounts = [Account(A, 10, {"CNY": Decimal("5.00")}), Account(B, 3), Account(C)]
    with FeishuSandbox(accounts, rate_limits=False) as running:
        yield running  # type: ignore[misc]


def test_a_batch_claims_its_runs_payments_once_and_a_rerun_makes_nothing_new(
    ledger: Ledger, sandbox: FeishuSandbox, client: FeishuClient
) -> None:
    run_1 = task()
    for account in (A, B):
        withdraw_account(client, ledger, intent_of(account, run_1))
    first = ledger.make_payroll_batch(run_scope(run_1), replace_task(run_1, "export_payroll"))
    assert first is not None
    assert first.totals() == {"accounts": 2, "withdrawals": 2, "point_bonus": 13, "cash_bonus": {"CNY": "5.00"}}
    assert ledger.make_payroll_batch(run_scope(run_1), replace_task(run_1, "export_payroll")) is None
    (again,) = ledger.payroll_batches(made_by=replace_task(run_1, "export_payroll"))
    assert again == first  # the same batch, members and totals, on every read
    assert {row.payroll_batch_id for row in ledger.rows(dag_id=DAG)} == {first.id}
    assert_every_payment_in_exactly_one_batch(ledger, sandbox)


def test_a_late_payment_goes_to_the_next_batch_and_the_first_never_changes(
    ledger: Ledger, sandbox: FeishuSandbox, client: FeishuClient, caplog: pytest.LogCaptureFixture
) -> None:
    run_1 = task()
    withdraw_account(client, ledger, intent_of(A, run_1))
    first = ledger.make_payroll_batch(run_scope(run_1), replace_task(run_1, "export_payroll"))
    # B's withdrawal is cleared and paid after the export (say it was refused, then enabled).
    withdraw_account(client, ledger, intent_of(B, task(try_number=2)))
    assert "was paid after this run's payroll batch" in caplog.text and intent_of(B, run_1).external_order_id in (
        caplog.text
    )
    second = ledger.make_payroll_batch(run_scope(run_1), replace_task(run_1, "export_payroll"))
    assert first is not None and second is not None and second.id > first.id
    assert [row.referral_account_id for row in second.members] == [B]
    assert ledger.payroll_batches(payroll_batch_id=first.id) == [first]
    assert_every_payment_in_exactly_one_batch(ledger, sandbox)


def test_an_order_skipped_by_one_run_and_paid_by_the_next_belongs_to_the_run_that_paid_it(
    ledger: Ledger, sandbox: FeishuSandbox, client: FeishuClient
) -> None:
    """Issue 16, case 1: two event runs derive one order id from one event; run 1 found nothing, run 2 paid."""
    order = "6942778198054125570"
    run_1, run_2 = task("event_run_1"), task("event_run_2")
    assert withdraw_account(client, ledger, intent_of(C, run_1, order), check_balance=True).status == SKIPPED
    assert export(ledger, run_1) == []
    sandbox.credit(C, point_bonus=9)
    assert withdraw_account(client, ledger, intent_of(C, run_2, order), check_balance=True).status == PAID
    assert ledger.get(order).run_id == "event_run_2"  # type: ignore[union-attr]
    assert export(ledger, run_2) == [order]
    assert [attempt for attempt in ledger.rows(run_id="event_run_1")] == []
    assert_every_payment_in_exactly_one_batch(ledger, sandbox)


def test_a_zombie_try_that_wakes_after_its_retry_sends_and_claims_nothing(
    ledger: Ledger, sandbox: FeishuSandbox, client: FeishuClient
) -> None:
    """Issue 16, case 2: try 1 stalls; try 2 finds nothing and its export runs; a credit; try 1 wakes."""
    try_1, try_2 = task(try_number=1), task(try_number=2)
    assert ledger.take_lease(try_1).held
    sandbox.credit(C, point_bonus=0)  # C is empty
    assert ledger.take_lease(try_2).held
    assert withdraw_account(client, ledger, intent_of(C, try_2), check_balance=True).status == SKIPPED
    assert export(ledger, try_2) == []
    sandbox.credit(C, point_bonus=25, cash_bonus={"CNY": "10.00"})
    sent = sandbox.requests["withdraw"]
    with pytest.raises(Superseded, match="try 2 of this task has started"):
        withdraw_account(client, ledger, intent_of(C, try_1))
    with pytest.raises(Superseded):
        ledger.skip(intent_of(C, try_1), "nothing to withdraw")
    assert sandbox.requests["withdraw"] == sent  # nothing reached Feishu
    assert sandbox.state()["accounts"][C]["point_bonus"] == 25  # the credit waits for the next run
    assert_every_payment_in_exactly_one_batch(ledger, sandbox)


def test_a_run_recreated_under_the_same_run_id_is_a_new_generation_with_its_own_orders(
    ledger: Ledger, sandbox: FeishuSandbox, client: FeishuClient
) -> None:
    """Issue 16, case 3: the deleted run's payments stay its own; the new run pays the new balance."""
    run_id = "scheduled__2026-12-01T00:00:00+00:00"
    assert ledger.run_generation(DAG, run_id, 0, "2026-12-01T00:00:05+00:00") == 1
    assert ledger.run_generation(DAG, run_id, 0, "2026-12-01T00:00:05+00:00") == 1  # another task, same run
    assert ledger.run_generation(DAG, run_id, 1, "2026-12-01T01:00:00+00:00") == 1  # a clear
    old = task(run_id, generation=1)
    withdraw_account(client, ledger, intent_of(A, old))
    old_batch = export(ledger, old)

    assert ledger.run_generation(DAG, run_id, 0, "2026-12-02T00:00:07+00:00") == 2  # deleted, created again
    assert ledger.run_generation(DAG, run_id, 1, "2026-12-02T01:00:00+00:00") == 2  # and cleared
    sandbox.credit(A, point_bonus=4)
    new = task(run_id, generation=2)
    assert ledger.take_lease(new).held
    outcome = withdraw_account(client, ledger, intent_of(A, new))
    assert outcome.status == PAID and outcome.withdrawal and outcome.withdrawal.point_bonus == 4
    assert outcome.external_order_id not in old_batch
    assert export(ledger, new) == [outcome.external_order_id]
    with pytest.raises(Superseded, match="deleted and created again"):  # the deleted run's zombie
        withdraw_account(client, ledger, intent_of(B, old))
    assert_every_payment_in_exactly_one_batch(ledger, sandbox)


def test_an_order_a_deleted_run_left_unknown_is_settled_by_the_new_generation(
    ledger: Ledger, sandbox: FeishuSandbox, client: FeishuClient
) -> None:
    run_id = "scheduled__2026-12-01T00:00:00+00:00"
    old = task(run_id, generation=1)
    sandbox.inject("drop_after_commit", times=5)  # Feishu paid; every answer lost; the worker died
    assert withdraw_account(client, ledger, intent_of(A, old)).status == SENDING
    new = task(run_id, generation=2)
    sandbox.credit(A, point_bonus=2)
    withdraw_account(client, ledger, intent_of(A, new))
    old_order = intent_of(A, old).external_order_id
    assert ledger.get(old_order).status == PAID  # type: ignore[union-attr]
    assert sorted(export(ledger, new)) == sorted([old_order, intent_of(A, new).external_order_id])
    assert_every_payment_in_exactly_one_batch(ledger, sandbox)


def test_a_refused_balance_read_is_an_outcome_the_export_can_name(
    ledger: Ledger, sandbox: FeishuSandbox, client: FeishuClient
) -> None:
    """Issue 16, case 5: an account Feishu does not know is refused before any withdrawal is sent."""
    unknown = "7699999999999999999"
    outcome = withdraw_account(client, ledger, intent_of(unknown, task()), check_balance=True)
    assert outcome.status == REJECTED
    row = ledger.get(intent_of(unknown, task()).external_order_id)
    assert row is not None and row.status == REJECTED and row.sends == 0 and row.error_code == outcome.code


def test_an_account_emptied_elsewhere_settles_as_skipped_when_feishu_refuses_empty_withdrawals(
    ledger: Ledger, client: FeishuClient
) -> None:
    """Issue 18, item 5: under ``empty_withdrawal=error`` the refusal is not re-sent for ever."""
    with (
        FeishuSandbox([Account(A)], rate_limits=False, empty_withdrawal="error") as sandbox,
        FeishuClient(DEFAULT_APP_ID, DEFAULT_APP_SECRET, sandbox.url, retry=FAST_RETRY) as client,
    ):
        assert withdraw_account(client, ledger, intent_of(A, task())).status == REJECTED
        retry = withdraw_account(client, ledger, intent_of(A, task(try_number=2)), check_balance=True)
        assert retry.status == SKIPPED
        assert sandbox.requests["withdraw"] == 1


def test_a_dag_scope_export_claims_what_run_exports_left_and_nothing_twice(
    ledger: Ledger, sandbox: FeishuSandbox, client: FeishuClient
) -> None:
    run_1, run_2 = task("run_1"), task("run_2")
    withdraw_account(client, ledger, intent_of(A, run_1))
    export(ledger, run_1)
    withdraw_account(client, ledger, intent_of(B, run_2))  # run 2's export never ran
    monthly = ledger.make_payroll_batch(PayrollScope(DAG_SCOPE, DAG), task("monthly", task_id="export"))
    assert monthly is not None and [row.referral_account_id for row in monthly.members] == [B]
    assert export(ledger, run_2) == []
    assert_every_payment_in_exactly_one_batch(ledger, sandbox)


def test_a_delivered_batch_is_recognised_when_its_event_comes_again(ledger: Ledger) -> None:
    paid = task()
    claim = ledger.claim(intent_of(A, paid))
    ledger.record_paid(claim, Withdrawal(A, claim.intent.external_order_id, 1, 5, {}))
    made = ledger.make_payroll_batch(run_scope(paid), paid)
    assert made is not None
    batch_id = made.id
    assert ledger.record_delivery(batch_id, "example_feishu_payroll_import") is True
    assert ledger.record_delivery(batch_id, "example_feishu_payroll_import") is False
    assert ledger.record_delivery(batch_id, "another_consumer") is True


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_a_schema_2_ledger_upgrades_with_every_row_and_amount_and_no_payment_exported_twice(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A ledger built by the released schema-2 SQL, with paid (exported and not), sending, review and skipped rows."""
    if dialect == "sqlite":
        path = tmp_path / "v2.db"
        ledger = Ledger(lambda: sqlite3.connect(path, check_same_thread=False, isolation_level=None), "sqlite")
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        ledger = Ledger(postgres_ledger_connection(server.new_database()), "postgresql")
    released = (Path(__file__).parent / "data" / f"ledger_schema_v2.{dialect}.sql").read_text()
    schema = "\n".join(line for line in released.splitlines() if not line.startswith("--"))
    money = (lambda text: text) if dialect == "sqlite" else Decimal
    rows = [  # order, account, status, run, trans_time, points, cash CNY
        ("11", A, PAID, "run_1", 1796290373473, 100, "0.10"),
        ("12", B, PAID, "run_1", 1796290373474, 0, "123456.78"),
        ("13", C, PAID, "run_2", 1796290373475, 7, None),  # paid, never exported
        ("14", A, SENDING, "run_2", None, None, None),
        ("15", B, REVIEW, "run_2", None, None, None),
        ("16", C, SKIPPED, "run_2", None, None, None),
    ]
    with ledger:
        for statement in filter(str.strip, schema.split(";")):
            ledger_sql(ledger, statement)
        for order, account, status, run, trans_time, points, cny in rows:
            ledger_sql(
                ledger,
                "INSERT INTO feishu_hire_withdrawal (external_order_id, referral_account_id, withdraw_bonus_type, "
                "app_id, dag_id, run_id, task_id, map_index, requested_at, status, sends, trans_time, "
                "point_bonus, updated_at) VALUES (?, ?, '1,2', ?, ?, ?, 'withdraw', -1, ?, ?, 1, ?, ?, ?)",
                order, account, DEFAULT_APP_ID, DAG, run, "2026-11-30T00:00:00.000+00:00", status, trans_time,
                points, "2026-11-30T00:00:00.000+00:00",
            )  # fmt: skip
            if cny is not None:
                ledger_sql(ledger, "INSERT INTO feishu_hire_withdrawal_cash VALUES (?, 'CNY', ?)", order, money(cny))
        for order, account, bonus_type, currency, amount in (
            ("11", A, "points", "", "100"),
            ("11", A, "cash", "CNY", "0.10"),
            ("12", B, "cash", "CNY", "123456.78"),
        ):
            ledger_sql(
                ledger,
                "INSERT INTO feishu_hire_payroll VALUES (?, ?, ?, ?, ?, ?, ?, 'run_1')",
                order, bonus_type, currency, account, "2026-12-03T09:32:53.473+00:00", money(amount), DAG,
            )  # fmt: skip
        ledger.migrate()
        ledger.migrate()  # idempotent

        after = {row.external_order_id: row for row in ledger.rows()}
        assert {order: row.status for order, row in after.items()} == {r[0]: r[2] for r in rows}
        assert after["12"].cash == {"CNY": Decimal("123456.78")} and after["11"].cash == {"CNY": Decimal("0.10")}
        assert after["11"].withdrawal and after["11"].withdrawal.point_bonus == 100
        (legacy,) = ledger.payroll_batches()
        assert legacy.scope == "legacy" and sorted(r.external_order_id for r in legacy.members) == ["11", "12"]
        assert legacy.cash_bonus == {"CNY": Decimal("123456.88")}
        # The next export claims only what schema 2 never exported.
        made = ledger.make_payroll_batch(PayrollScope(DAG_SCOPE, DAG), task("monthly", task_id="export"))
        assert made is not None and [row.external_order_id for row in made.members] == ["13"]
