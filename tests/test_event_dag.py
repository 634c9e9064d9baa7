"""Event-driven payouts in a real Airflow: credits in Feishu are paid exactly once, and nobody triggers a DAG.

``airflow standalone`` runs the scheduler, dag-processor, triggerer and api-server as
processes (LocalExecutor, SQLite) on the example DAGs; the triggerer holds the long
connection to the sandbox. The sandbox drops the connection, duplicates deliveries and
loses acknowledgements on the way; the end state is checked against the sandbox's own
ledger, our payout ledger and the payroll table. One test: it costs a minute or two.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_feishu_hire.events import ASSETS_UPDATE_EVENT
from airflow_provider_feishu_hire.ledger import Ledger
from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_SECRET, Account, FeishuSandbox
from tests.airflow_api import Api
from tests.conftest import (
    LocalAirflow,
    assert_paid_exactly_once,
    ledger_payroll,
    local_airflow,
    sandbox_payroll,
    wait_for,
)

pytestmark = pytest.mark.lowest  # also run on the lowest supported Airflow (Makefile: pytest-lowest)

DAG_ID = "example_feishu_referral_event_payout"
A, B, C, D = (f"740000000000000000{n}" for n in range(1, 5))


@pytest.fixture
def sandbox() -> Iterator[FeishuSandbox]:
    accounts = [Account(account) for account in (A, B, C, D)]  # empty: only credits fill them
    quick = {"ReconnectInterval": 1, "ReconnectNonce": 1, "PingInterval": 5}
    with FeishuSandbox(accounts, rate_limits=False, redeliver_after=3.0, client_config=quick) as running:
        yield running


@pytest.fixture
def airflow(tmp_path: Path, sandbox: FeishuSandbox) -> Iterator[LocalAirflow]:
    with local_airflow(tmp_path, sandbox) as running:
        yield running


def airflow_db(local: LocalAirflow, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(local.home / "airflow.db") as db:
        return db.execute(sql, params).fetchall()


def balances_empty(sandbox: FeishuSandbox) -> bool:
    accounts = sandbox.state()["accounts"]
    return all(
        accounts[a]["point_bonus"] == 0 and not any(Decimal(str(c["amount"])) for c in accounts[a]["cash_bonus"])
        for a in (A, B, C, D)
    )


def settled(sandbox: FeishuSandbox, local: LocalAirflow) -> bool:
    """Every event acknowledged, every balance withdrawn, and no DAG run left to finish."""
    state = sandbox.state()
    unfinished = airflow_db(local, "SELECT count(*) FROM dag_run WHERE dag_id = ? AND state != 'success'", DAG_ID)
    return (
        all(event["acked"] for event in state["events"].values()) and balances_empty(sandbox) and unfinished[0][0] == 0
    )


def assert_each_payment_in_one_batch(ledger_db: Path, sandbox: FeishuSandbox) -> None:
    """The invariant against the sandbox's own ledger: the payroll table and the batches hold each payment once."""
    with Ledger(lambda: sqlite3.connect(ledger_db, isolation_level=None), "sqlite") as ledger:
        assert_paid_exactly_once(ledger, sandbox)
    with sqlite3.connect(ledger_db) as db:
        table = db.execute(
            "SELECT referral_account_id, external_order_id, bonus_type, currency, amount FROM feishu_hire_payroll"
        ).fetchall()
        members = db.execute("SELECT external_order_id FROM feishu_hire_payroll_batch_member").fetchall()
    assert Counter(tuple(map(str, row)) for row in table) == sandbox_payroll(sandbox)
    assert sorted(order for (order,) in members) == sorted(e["external_order_id"] for e in sandbox.state()["ledger"])


def test_credits_are_paid_exactly_once_by_events_alone_through_drops_and_repeats(
    sandbox: FeishuSandbox, airflow: LocalAirflow, tmp_path: Path
) -> None:
    wait_for(lambda: sandbox.state()["long_connection"]["connected"], "the triggerer holding the long connection")

    sandbox.credit(A, 100, {"CNY": "10.50"})
    sandbox.credit(B, 5)
    wait_for(lambda: {e["referral_account_id"] for e in sandbox.state()["ledger"]} >= {A, B}, "A and B paid")

    sandbox.inject("duplicate_event", endpoint="events", times=2)
    sandbox.inject("ignore_ack", endpoint="events")
    sandbox.credit(C, 7, {"CNY": "0.01", "HKD": "3.30"})
    sandbox.credit(A, 1)  # a later genuine credit of an account already paid
    wait_for(lambda: len(sandbox.state()["ledger"]) >= 4, "C and A's second credit paid")
    sandbox.drop_connections()
    sandbox.credit(D, 9)  # waits in Feishu until the trigger has dialled again
    sandbox.inject("drop_connection", endpoint="events")  # and the next delivery is cut before its ack
    sandbox.credit(B, 2, {"CNY": "1.00"})
    wait_for(lambda: settled(sandbox, airflow), "every credit paid and every run finished")

    # Exactly once: what Feishu paid is what the ledger and the payroll say, order by order.
    paid = Counter(e["referral_account_id"] for e in sandbox.state()["ledger"])
    assert paid == {A: 2, B: 2, C: 1, D: 1}
    assert_each_payment_in_one_batch(tmp_path / "ledger.db", sandbox)

    # Nobody triggered anything; every repeat was caught before it became an asset event.
    runs = airflow_db(airflow, "SELECT run_type, state FROM dag_run WHERE dag_id = ?", DAG_ID)
    assert runs and set(runs) == {("asset_triggered", "success")}
    balance_events = [e for e in sandbox.state()["events"].values() if e["event_type"] == ASSETS_UPDATE_EVENT]
    assert sum(e["delivered"] for e in balance_events) > len(balance_events)  # repeats did happen
    (asset_events,) = airflow_db(
        airflow,
        "SELECT count(*) FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = ?",
        "feishu_referral_balances",  # the payroll exports' own events are on feishu_hire_payroll
    )[0]
    # One asset event per credit: the empty-balance event each of our withdrawals raises starts no run.
    credits = len(sandbox.state()["ledger"])
    assert len(balance_events) == 2 * credits and asset_events == credits
    assert sandbox.state()["long_connection"]["connections"] >= 3

    logs = [p.read_text(errors="replace") for p in (airflow.home / "logs").rglob("*") if p.is_file()]
    logs.append((tmp_path / "standalone.log").read_text(errors="replace"))
    for secret in [DEFAULT_APP_SECRET, *sandbox.issued_tokens]:
        assert not any(secret in text for text in logs)


# The sweep every minute here (FEISHU_HIRE_SWEEP_CRON); the README's bound is the interval, plus
# the sweep's balance reads at 10 a second, plus Airflow starting the run: two minutes on this machine.
SWEEP_BOUND = 60 + 120


def awaiting_a_person(api: Api) -> str | None:
    """A run of the event DAG whose approval step waits for a person, if there is one."""
    runs = api.try_get(f"/dags/{DAG_ID}/dagRuns?state=running") or {"dag_runs": []}
    for run in runs["dag_runs"]:
        if api.task_states(DAG_ID, run["dag_run_id"]).get("approve_payout") in ("awaiting_input", "deferred"):
            return str(run["dag_run_id"])
    return None


def test_small_credits_are_paid_at_once_a_large_one_waits_for_a_person_and_the_sweep_pays_a_lost_event(
    sandbox: FeishuSandbox, tmp_path: Path
) -> None:
    def paid() -> Counter[str]:
        return Counter(e["referral_account_id"] for e in sandbox.state()["ledger"])

    with local_airflow(tmp_path, sandbox, FEISHU_HIRE_SWEEP_CRON="* * * * *") as airflow:
        api = Api(airflow, airflow.login)
        wait_for(lambda: sandbox.state()["long_connection"]["connected"], "the triggerer holding the long connection")
        sandbox.credit(A, 5, {"CNY": "20.00"})  # within auto_approve_up_to: paid at once, nobody asked
        wait_for(lambda: paid()[A] == 1, "A paid by its event")

        sandbox.credit(B, 501)  # one point above the policy: waits for a person
        waiting = str(wait_for(lambda: awaiting_a_person(api), "B's run to ask a person"))
        sandbox.credit(C, 3)  # a small credit meanwhile is not held up by B's
        wait_for(lambda: paid()[C] == 1, "C paid while B waits")
        assert B not in paid()

        sandbox.inject("lose_event", endpoint="events")  # Feishu never delivers A's next event
        lost_at = time.monotonic()
        sandbox.credit(A, 7)
        wait_for(lambda: paid()[A] == 2, "the sweep to pay A's credit whose event was lost", timeout=SWEEP_BOUND)
        swept_in = time.monotonic() - lost_at
        assert B not in paid()

        shown = api.decide(DAG_ID, waiting, "Approve")
        assert "501" in shown["body"]
        wait_for(lambda: paid()[B] == 1, "B paid after the approval")
        ledger_db = tmp_path / "ledger.db"
        with Ledger(lambda: sqlite3.connect(ledger_db, isolation_level=None), "sqlite") as ledger:
            # Every payment in exactly one payroll batch: the approved run's export claims what the sweep paid.
            wait_for(lambda: ledger_payroll(ledger) == sandbox_payroll(sandbox), "everything paid to be batched")
            assert_paid_exactly_once(ledger, sandbox)
            decisions = [a.decision for a in ledger.approvals(DAG_ID, waiting)]
            auto = [a for r in {row.run_id for row in ledger.rows(dag_id=DAG_ID)} for a in ledger.approvals(DAG_ID, r)]
        assert paid() == {A: 2, B: 1, C: 1}
        assert decisions[-1] == "Approve" and {a.decision for a in auto} >= {"auto-approved", "Approve"}
    print(f"A credit whose every event was lost was paid by the sweep {swept_in:.0f} s later")
