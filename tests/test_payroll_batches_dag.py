"""Payroll batches in a real Airflow, driven through its REST API as a user would.

``airflow standalone`` runs the example DAGs against the sandbox. What issue 16 measured on
Airflow itself is replayed here: an export cleared and run again announces the same batch,
and the import takes it once; a run deleted and created again under the same run_id pays
the balance of its own time instead of replaying the deleted run's withdrawals; an event
for an account Feishu does not know fails the event run, naming the account. Every check
ends against the sandbox's own ledger: each payment in exactly one payroll batch.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_feishu_hire.events import ASSETS_UPDATE_EVENT
from airflow_provider_feishu_hire.ledger import Ledger
from airflow_provider_feishu_hire.sandbox import Account, FeishuSandbox
from tests.airflow_api import Api
from tests.conftest import assert_paid_exactly_once, local_airflow, wait_for

PAYROLL_DAG = "example_feishu_referral_payroll"
IMPORT_DAG = "example_feishu_payroll_import"
EVENT_DAG = "example_feishu_referral_event_payout"
PAYROLL_ASSET = "feishu_hire_payroll"
A, B = "7700000000000000001", "7700000000000000002"
UNKNOWN = "7700000000000000099"


def open_ledger(tmp_path: Path) -> Ledger:
    return Ledger(lambda: sqlite3.connect(tmp_path / "ledger.db", isolation_level=None), "sqlite")


def assert_every_payment_in_exactly_one_batch(tmp_path: Path, sandbox: FeishuSandbox) -> None:
    with open_ledger(tmp_path) as ledger:
        paid = sorted(entry["external_order_id"] for entry in sandbox.state()["ledger"])
        batched = sorted(row.external_order_id for batch in ledger.payroll_batches() for row in batch.members)
        assert batched == paid, "a payment Feishu made is in no payroll batch, or in two"
        assert_paid_exactly_once(ledger, sandbox)


def events_when(api: Api, count: int) -> list[dict[str, Any]] | None:
    events = api.asset_events(PAYROLL_ASSET)
    return events if len(events) >= count else None


@pytest.fixture
def payroll_sandbox() -> Iterator[FeishuSandbox]:
    accounts = [Account(A, 100, {"CNY": Decimal("500.00")}), Account(B, 7)]
    with FeishuSandbox(accounts, rate_limits=False) as running:
        # The event DAG is in the same folder: keep its long connection out, so only the runs this
        # test starts pay anyone.
        running.inject("busy", endpoint="ws_endpoint", times=1_000_000)
        yield running


def test_a_cleared_export_announces_its_batch_again_and_a_recreated_run_pays_its_own_balance(
    payroll_sandbox: FeishuSandbox, tmp_path: Path
) -> None:
    sandbox = payroll_sandbox
    with local_airflow(tmp_path, sandbox) as airflow:
        api = Api(airflow)
        wait_for(lambda: api.try_get(f"/dags/{PAYROLL_DAG}"), "the DAG to be parsed")
        conf = {"referral_account_ids": [A, B], "require_approval": False}
        run = api.trigger(PAYROLL_DAG, "payday-2026-12", conf)
        assert api.finished(PAYROLL_DAG, run) == "success"
        (first,) = wait_for(lambda: api.asset_events(PAYROLL_ASSET), "the payroll asset event")
        (batch_id,) = first["extra"]["payroll_batch_ids"]
        assert first["extra"]["payroll_batches"][0]["cash_bonus"] == {"CNY": "500.00"}

        # Issue 16, case 4: the export is cleared and runs again: the same batch, announced again,
        # and the import, which de-duplicates on the batch id, takes it once.
        api.retrying(
            "POST",
            f"/dags/{PAYROLL_DAG}/clearTaskInstances",
            {"dry_run": False, "dag_run_id": run, "task_ids": ["export_payroll"], "only_failed": False},
        )
        events = wait_for(lambda: events_when(api, 2), "the second payroll asset event")
        assert [e["extra"]["payroll_batch_ids"] for e in events] == [[batch_id], [batch_id]]
        imports = wait_for(
            lambda: (r := api.try_get(f"/dags/{IMPORT_DAG}/dagRuns")) and r["total_entries"] >= 2 and r,
            "two runs of the import",
        )
        for imported in imports["dag_runs"]:
            assert api.finished(IMPORT_DAG, imported["dag_run_id"]) == "success"
        logs = [api.task_log(IMPORT_DAG, r["dag_run_id"], "import_payroll") for r in imports["dag_runs"]]
        assert sum(f"Imported payroll batch {batch_id}:" in log for log in logs) == 1
        assert sum(f"Payroll batch {batch_id} was imported before: skipped" in log for log in logs) == 1

        # Issue 16, case 3: the run is deleted, A is credited, and the run is created again under the
        # same run_id. It must pay A's new balance under new order ids, not replay the deleted run's.
        sandbox.credit(A, point_bonus=4, cash_bonus={"CNY": "1.50"})
        api.retrying("DELETE", f"/dags/{PAYROLL_DAG}/dagRuns/{run}")
        wait_for(lambda: api.try_get(f"/dags/{PAYROLL_DAG}/dagRuns/{run}") is None, "the run to be deleted")
        time.sleep(1)  # a new start_date, to the microsecond, is all Airflow gives the new run
        assert api.trigger(PAYROLL_DAG, run, conf) == run
        assert api.finished(PAYROLL_DAG, run) == "success"
        paid_to_a = [e for e in sandbox.state()["ledger"] if e["referral_account_id"] == A]
        assert [e["withdrawal_details"]["point_bonus"] for e in paid_to_a] == [100, 4]
        assert sandbox.state()["accounts"][A]["point_bonus"] == 0
        events = wait_for(lambda: events_when(api, 3), "the third payroll asset event")
        (new_batch,) = events[-1]["extra"]["payroll_batch_ids"]
        assert new_batch != batch_id
        assert events[-1]["extra"]["payroll_batches"][0]["point_bonus"] == 4
    assert_every_payment_in_exactly_one_batch(tmp_path, sandbox)


@pytest.fixture
def event_sandbox() -> Iterator[FeishuSandbox]:
    quick = {"ReconnectInterval": 1, "ReconnectNonce": 1, "PingInterval": 5}
    with FeishuSandbox([Account(A), Account(B)], rate_limits=False, client_config=quick) as running:
        yield running


def test_an_event_for_an_unknown_account_fails_its_run_naming_it_and_a_forged_event_moves_nothing(
    event_sandbox: FeishuSandbox, tmp_path: Path
) -> None:
    """Issue 16, case 5: the balance read is refused before any withdrawal; the run must not end green.

    Beside it, an asset event posted through the REST API as if the trigger had stored it (issue
    17): the DAG ignores it, so the account it names is not even looked at.
    """
    sandbox = event_sandbox
    with local_airflow(tmp_path, sandbox) as airflow:
        api = Api(airflow)
        wait_for(lambda: sandbox.state()["long_connection"]["connected"], "the triggerer holding the long connection")
        balances = wait_for(lambda: api.try_get("/assets?uri_pattern=feishu_referral_balances"), "the event asset")
        forged = {  # as the trigger writes a payload, for an account with nothing in Feishu
            "event_id": "forged-1",
            "referral_account_id": B,
            "point_bonus": 500,
            "cash_bonus": {},
            "modify_time": str(time.time_ns() // 1_000_000),
        }
        api.retrying(
            "POST",
            "/assets/events",
            {"asset_id": balances["assets"][0]["id"], "extra": {"from_trigger": True, "payload": forged}},
        )
        sandbox.emit_event(
            ASSETS_UPDATE_EVENT,
            {
                "account_id": UNKNOWN,
                "assets": {"confirmed_bonus": {"point_bonus": 5, "cash_bonus": []}},
                "modify_time": str(time.time_ns() // 1_000_000),
            },
        )
        sandbox.credit(A, point_bonus=9, cash_bonus={"CNY": "2.00"})

        def runs_done() -> list[dict[str, object]] | None:
            found = api.try_get(f"/dags/{EVENT_DAG}/dagRuns") or {"dag_runs": []}
            runs = found["dag_runs"]
            done = runs and all(r["state"] in ("success", "failed") for r in runs)
            paid = any(e["referral_account_id"] == A for e in sandbox.state()["ledger"])
            return runs if done and paid else None

        runs = wait_for(runs_done, "the event runs to finish and A to be paid", timeout=300)
        failed = [r["dag_run_id"] for r in runs if r["state"] == "failed"]
        assert failed, "the run with the unknown account ended green"
        logs = " ".join(api.task_log(EVENT_DAG, run_id, "export_payroll") for run_id in failed)
        assert UNKNOWN in logs and "not paid" in logs
        # Runs that paid nothing (our own withdrawal's balance event) announce no payroll batch.
        for event in api.asset_events(PAYROLL_ASSET):
            assert event["extra"]["payroll_batch_ids"], "an empty payroll batch was announced"
        logs = " ".join(api.task_log(EVENT_DAG, r["dag_run_id"], "changed_balances") for r in runs)
        assert "Ignored an asset event not stored by the trigger" in logs
    with open_ledger(tmp_path) as ledger:
        assert ledger.rows(dag_id=EVENT_DAG) and not [r for r in ledger.rows() if r.referral_account_id == B]
    assert_every_payment_in_exactly_one_batch(tmp_path, sandbox)
