"""Four eyes in a real Airflow: nothing is paid until a person approves, a rejection pays nothing, both are recorded.

``airflow standalone`` runs the example payroll DAG with ``require_approval`` on. The
decisions go through Airflow's own human-in-the-loop REST API, as the UI's Approve and
Reject buttons send them (the browser test presses the buttons themselves). The payroll
asset then starts the example import DAG. A rejection fails the approval task and the
run, and clearing the withdrawals afterwards still sends nothing; a run with nothing to
pay asks nobody. Checked against the sandbox's own ledger.
"""

from __future__ import annotations

import json
import re
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_feishu_hire.ledger import Ledger
from airflow_provider_feishu_hire.sandbox import Account, FeishuSandbox
from tests.airflow_api import Api
from tests.conftest import ROOT, LocalAirflow, assert_paid_exactly_once, local_airflow, wait_for

pytestmark = pytest.mark.lowest  # also run on the lowest supported Airflow (Makefile: pytest-lowest)

DAG_ID = "example_feishu_referral_payroll"
IMPORT_DAG_ID = "example_feishu_payroll_import"
ANY_DECISION_DAG_ID = "feishu_withdraw_after_any_decision"  # tests/dags: a withdrawal under all_done
ACCOUNTS = [
    Account("7500000000000000001", point_bonus=300, cash_bonus={"CNY": Decimal("1200.50")}),
    Account("7500000000000000002", point_bonus=20, cash_bonus={"CNY": Decimal("0.05")}),
]
IDS = [a.account_id for a in ACCOUNTS]
EMPTY = Account("7500000000000000003", point_bonus=0, cash_bonus={})
UNKNOWN = "7500000000000000099"


@pytest.fixture
def sandbox() -> Iterator[FeishuSandbox]:
    with FeishuSandbox([*ACCOUNTS, EMPTY], rate_limits=False) as running:
        # The event-driven example DAG is in the same folder: keep its long connection out,
        # so only the runs this test starts pay anyone.
        running.inject("busy", endpoint="ws_endpoint", times=1_000_000)
        yield running


@pytest.fixture
def airflow(tmp_path: Path, sandbox: FeishuSandbox) -> Iterator[LocalAirflow]:
    extra = [ROOT / "tests" / "dags" / f"{ANY_DECISION_DAG_ID}.py"]
    with local_airflow(tmp_path, sandbox, extra_dags=extra) as running:
        yield running


def test_only_an_approval_pays_and_every_decision_is_recorded(
    sandbox: FeishuSandbox, airflow: LocalAirflow, tmp_path: Path
) -> None:
    api = Api(airflow, airflow.login)  # triggers the runs
    approver = Api(airflow, airflow.approver)  # a second person: the one who triggers cannot approve
    wait_for(lambda: api.try_get(f"/dags/{DAG_ID}"), "the DAG to be parsed")
    conf = {"referral_account_ids": IDS, "require_approval": True}
    # Beside the payout: two runs with nothing to pay, which must not ask anyone.
    unreadable = api.trigger(DAG_ID, "unreadable", {**conf, "referral_account_ids": [UNKNOWN, EMPTY.account_id]})
    empty = api.trigger(DAG_ID, "empty", {**conf, "referral_account_ids": [EMPTY.account_id]})

    approved = api.trigger(DAG_ID, "approved", conf)
    asked = decide_after_checking_nothing_paid(approver, sandbox, approved)
    assert asked["subject"] == "Pay 2 referral accounts: 320 points, 1200.55 CNY?"
    assert "| 7500000000000000001 | 300 | 1200.50 CNY |" in asked["body"]
    assert wait_for(lambda: api.run_state(DAG_ID, approved), "the approved run to finish", timeout=300) == "success"
    assert {e["referral_account_id"] for e in sandbox.state()["ledger"]} == set(IDS)

    for account in ACCOUNTS:  # new bonuses, then a run that a person rejects
        sandbox.credit(account.account_id, point_bonus=1)
    rejected = api.trigger(DAG_ID, "rejected", conf)
    approver.decide(DAG_ID, rejected, "Reject")
    # The rejection stands out: the approval task and the run end failed, not green.
    assert wait_for(lambda: api.run_state(DAG_ID, rejected), "the rejected run to finish", timeout=300) == "failed"
    states = api.task_states(DAG_ID, rejected)
    assert (states["approve_payout"], states["withdraw_referral_account"]) == ("failed", "upstream_failed")
    assert re.search(
        r"Rejected by approver at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: nothing paid",
        api.task_log(DAG_ID, rejected, "approve_payout"),
    )
    assert len(sandbox.state()["ledger"]) == len(IDS)  # the rejection paid nothing

    # A withdrawal Airflow starts after a rejection (trigger_rule="all_done") reads it from the ledger.
    anyway = api.trigger(ANY_DECISION_DAG_ID, "rejected", {"referral_account_ids": IDS})
    approver.decide(ANY_DECISION_DAG_ID, anyway, "Reject")
    assert api.finished(ANY_DECISION_DAG_ID, anyway) == "failed"
    assert api.task_states(ANY_DECISION_DAG_ID, anyway)["withdraw_whatever_was_decided"] == "failed"
    assert re.search(
        r"Rejected by approver at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: nothing paid",
        api.task_log(ANY_DECISION_DAG_ID, anyway, "withdraw_whatever_was_decided"),
    )
    assert len(sandbox.state()["ledger"]) == len(IDS)

    # Clearing the withdrawals of a rejected run, as someone might to "retry", still sends nothing.
    api(
        "POST",
        f"/dags/{DAG_ID}/clearTaskInstances",
        {"dry_run": False, "dag_run_id": rejected, "task_ids": ["withdraw_referral_account"], "only_failed": False},
    )
    wait_for(
        lambda: api.task_states(DAG_ID, rejected)["withdraw_referral_account"] == "upstream_failed",
        "the cleared withdrawals to be judged again",
        timeout=300,
    )
    assert len(sandbox.state()["ledger"]) == len(IDS)

    # Nothing to pay: nobody was asked. Accounts that cannot be read fail the run, named;
    # only zero balances end it quietly, everything after the approval skipped.
    assert wait_for(lambda: api.run_state(DAG_ID, unreadable), "the unreadable run to finish", timeout=300) == "failed"
    assert api.task_states(DAG_ID, unreadable)["approve_payout"] == "failed"
    assert api.try_get(f"/dags/{DAG_ID}/dagRuns/{unreadable}/taskInstances/approve_payout/-1/hitlDetails") is None
    assert f"Nothing to pay, so no one was asked to approve: {UNKNOWN} (Feishu error 1002553" in api.task_log(
        DAG_ID, unreadable, "approve_payout"
    )
    assert "1 account with a zero balance" in api.task_log(DAG_ID, unreadable, "approve_payout")
    assert wait_for(lambda: api.run_state(DAG_ID, empty), "the empty run to finish", timeout=300) == "success"
    after = api.task_states(DAG_ID, empty)
    assert after["approve_payout"] == "success"
    assert {after[t] for t in ("withdraw_referral_account", "export_payroll", "reconcile_with_feishu")} == {"skipped"}
    assert api.try_get(f"/dags/{DAG_ID}/dagRuns/{empty}/taskInstances/approve_payout/-1/hitlDetails") is None
    assert len(sandbox.state()["ledger"]) == len(IDS)

    with Ledger(lambda: sqlite3.connect(tmp_path / "ledger.db", isolation_level=None), "sqlite") as ledger:
        assert_paid_exactly_once(ledger, sandbox)
        approvals, rejections = ledger.approvals(DAG_ID, approved), ledger.approvals(DAG_ID, rejected)
        nothing = ledger.approvals(DAG_ID, unreadable) + ledger.approvals(DAG_ID, empty)
    # One record per answer that reached the task (one, unless Airflow asked again).
    assert {a.decision for a in approvals} == {"Approve"} and {r.decision for r in rejections} == {"Reject"}
    yes, no = approvals[-1], rejections[-1]
    assert (yes.decision, yes.decided_by, yes.accounts, yes.point_bonus, yes.cash_bonus) == (
        "Approve",
        "approver",
        2,
        320,
        {"CNY": "1200.55"},
    )
    assert (no.decision, no.decided_by, no.point_bonus) == ("Reject", "approver", 2)
    assert [(n.decision, n.accounts) for n in nothing] == [("nothing to pay", 0), ("nothing to pay", 0)]

    # The payroll asset started the import DAG once, with the approved run's totals.
    imports = wait_for(
        lambda: [r for r in api("GET", f"/dags/{IMPORT_DAG_ID}/dagRuns")["dag_runs"] if r["state"] == "success"],
        "the payroll import DAG to run on the asset",
    )
    assert [r["run_type"] for r in imports] == ["asset_triggered"]
    query = urllib.parse.urlencode({"source_dag_id": DAG_ID, "source_run_id": approved})
    (event,) = api("GET", f"/assets/events?{query}")["asset_events"]
    announced = json.dumps(event["extra"])
    assert '"point_bonus": 320' in announced and '"cash_bonus": {"CNY": "1200.55"}' in announced


def decide_after_checking_nothing_paid(api: Api, sandbox: FeishuSandbox, run_id: str) -> dict[str, Any]:
    path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/approve_payout/-1/hitlDetails"
    wait_for(lambda: api.try_get(path), "the approval to ask a person", timeout=300)
    assert sandbox.state()["ledger"] == []  # asked, and nothing has moved yet
    return api.decide(DAG_ID, run_id, "Approve")


def test_the_trigger_user_cannot_approve_and_an_approval_binds_the_amounts_it_showed(
    sandbox: FeishuSandbox, airflow: LocalAirflow, tmp_path: Path
) -> None:
    """Issue 17 through two real users: maker is not checker; a credit after the preview waits for a new approval."""
    admin = Api(airflow, airflow.login)
    approver = Api(airflow, airflow.approver)
    wait_for(lambda: admin.try_get(f"/dags/{DAG_ID}"), "the DAG to be parsed")
    conf = {"referral_account_ids": IDS, "require_approval": True}

    own = admin.trigger(DAG_ID, "approved_by_its_trigger", conf)
    admin.decide(DAG_ID, own, "Approve")  # admin triggered it and approves it: HTTP 200 from Airflow, refused by us
    assert admin.finished(DAG_ID, own) == "failed"
    assert "a second person must approve" in admin.task_log(DAG_ID, own, "approve_payout")
    assert sandbox.state()["ledger"] == []

    bound = admin.trigger(DAG_ID, "credited_after_preview", conf)
    path = f"/dags/{DAG_ID}/dagRuns/{bound}/taskInstances/approve_payout/-1/hitlDetails"
    wait_for(lambda: approver.try_get(path), "the approval to ask a person", timeout=300)
    sandbox.credit(IDS[1], point_bonus=7)  # after the preview the approver is looking at
    approver.decide(DAG_ID, bound, "Approve")
    assert approver.finished(DAG_ID, bound) == "failed"
    paid = {e["referral_account_id"]: e["withdrawal_details"]["point_bonus"] for e in sandbox.state()["ledger"]}
    assert paid == {IDS[0]: 300}  # the credited account was not withdrawn
    export_log = admin.task_log(DAG_ID, bound, "export_payroll")
    assert IDS[1] in export_log and "needs_approval" in export_log and "27 points" in export_log

    # A new approval, of the new amounts, pays it: clear the preview and everything after it.
    approver.retrying(
        "POST",
        f"/dags/{DAG_ID}/clearTaskInstances",
        {"dry_run": False, "dag_run_id": bound, "task_ids": ["preview_payout"], "include_downstream": True,
         "only_failed": False},
    )  # fmt: skip
    approver.decide(DAG_ID, bound, "Approve")
    assert approver.finished(DAG_ID, bound) == "success"
    paid_to = [e["referral_account_id"] for e in sandbox.state()["ledger"]]
    assert sorted(paid_to) == sorted(IDS)
    with Ledger(lambda: sqlite3.connect(tmp_path / "ledger.db", isolation_level=None), "sqlite") as ledger:
        assert_paid_exactly_once(ledger, sandbox)
