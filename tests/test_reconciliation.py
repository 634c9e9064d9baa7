"""Feishu's reconciliation as a second witness: the ledger's totals against the sandbox's own, over HTTP.

Runs on SQLite and PostgreSQL ledgers and under both readings of ``end_trans_time`` that
Feishu's docs leave open.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from airflow_provider_feishu_hire.ledger import Ledger, Mismatch
from airflow_provider_feishu_hire.payout import withdraw_account
from airflow_provider_feishu_hire.reconciliation import NOT_COMPARED, describe_window, reconcile
from airflow_provider_feishu_hire.sandbox import Account, FeishuSandbox
from tests.test_payout import client_for, intent

ACCOUNTS = [Account(f"72{i:017d}", point_bonus=10 + i, cash_bonus={"CNY": Decimal("1.05")}) for i in range(3)]


@pytest.fixture(params=["inclusive", "exclusive"])
def sandbox(request: pytest.FixtureRequest) -> FeishuSandbox:
    with FeishuSandbox(ACCOUNTS, rate_limits=False, reconcile_end=request.param) as running:
        yield running  # type: ignore[misc]


def pay_all(sandbox: FeishuSandbox, ledger: Ledger) -> list[int]:
    with client_for(sandbox) as client:
        outcomes = [withdraw_account(client, ledger, intent(a.account_id), check_balance=False) for a in ACCOUNTS]
    return [int(o.withdrawal.trans_time) for o in outcomes if o.withdrawal is not None]


def test_the_ledger_and_feishu_agree_on_what_it_paid(sandbox: FeishuSandbox, ledger: Ledger) -> None:
    times = pay_all(sandbox, ledger)
    with client_for(sandbox) as client:
        record = reconcile(client, ledger, min(times), max(times) + 1)
    assert record.mismatches == ()
    assert record.ledger_points == {a.account_id: 10 + i for i, a in enumerate(ACCOUNTS)}
    assert sandbox.requests["reconciliation"] == 1


def test_payments_on_the_window_ends_are_compared_the_same_under_every_reading(
    sandbox: FeishuSandbox, ledger: Ledger
) -> None:
    """The last payment sits at end - 1 and the first at start, where exclusive ends would drop them."""
    times = pay_all(sandbox, ledger)
    with client_for(sandbox) as client:
        record = reconcile(client, ledger, min(times), max(times) + 1)
    assert record.end_trans_time > max(times) and record.start_trans_time < min(times)
    assert not ledger.paid_at(record.app_id, record.end_trans_time)
    assert not ledger.paid_at(record.app_id, record.start_trans_time)  # the first payment sits on the start
    assert record.mismatches == ()


def test_a_withdrawal_made_outside_the_ledger_is_named_with_both_figures(
    sandbox: FeishuSandbox, ledger: Ledger
) -> None:
    times = pay_all(sandbox, ledger)
    sandbox.credit(ACCOUNTS[1].account_id, point_bonus=7)
    with client_for(sandbox) as client:
        client.withdraw_referral_account(ACCOUNTS[1].account_id, [1, 2], "9000000000000000001")  # behind our back
        record = reconcile(client, ledger, min(times), 9_999_999_999_999)
    assert record.mismatches == (Mismatch(ACCOUNTS[1].account_id, 11, 18),)
    assert "ledger 11 points, Feishu 18 points" in record.mismatches[0].describe()


def test_reconciliations_are_recorded_with_their_disagreements(sandbox: FeishuSandbox, ledger: Ledger) -> None:
    times = pay_all(sandbox, ledger)
    with client_for(sandbox) as client:
        agreed = reconcile(client, ledger, min(times), max(times) + 1)
        sandbox.credit(ACCOUNTS[0].account_id, point_bonus=5)
        client.withdraw_referral_account(ACCOUNTS[0].account_id, [1], "9000000000000000002")
        disagreed = reconcile(client, ledger, min(times), 9_999_999_999_999)
    for record in (agreed, disagreed):
        ledger.record_reconciliation(record, dag_id="d", run_id="r", task_id="reconcile")
    stored = ledger.reconciliations(agreed.app_id)
    assert [(r.start_trans_time, r.end_trans_time, r.mismatches) for r in stored] == [
        (agreed.start_trans_time, agreed.end_trans_time, ()),
        (disagreed.start_trans_time, disagreed.end_trans_time, (Mismatch(ACCOUNTS[0].account_id, 10, 15),)),
    ]


def test_an_empty_window_is_refused_before_anything_is_sent(sandbox: FeishuSandbox, ledger: Ledger) -> None:
    with client_for(sandbox) as client, pytest.raises(ValueError, match="start_trans_time"):
        reconcile(client, ledger, 100, 100)
    assert sandbox.requests["reconciliation"] == 0


def test_registrations_are_remembered_per_app(ledger: Ledger) -> None:
    assert ledger.registered_account("cli_a", "a@example.com") is None
    ledger.record_registration("cli_a", "a@example.com", "7001")
    assert ledger.registered_account("cli_a", "a@example.com") == "7001"
    assert ledger.registered_account("cli_b", "a@example.com") is None


def test_a_person_reads_the_window_as_utc_times_and_that_cash_was_not_compared(
    sandbox: FeishuSandbox, ledger: Ledger
) -> None:
    times = pay_all(sandbox, ledger)
    with client_for(sandbox) as client:
        record = reconcile(client, ledger, min(times), max(times) + 1)
    shown = describe_window(record)
    found = re.fullmatch(r"paid from (.+) UTC to (.+) UTC \(both ends included\)", shown)
    assert found, shown
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    read = [
        (datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc) - epoch)
        // timedelta(milliseconds=1)
        for text in found.groups()
    ]
    assert read == [record.start_trans_time, record.end_trans_time]  # exact to the millisecond
    assert str(record.start_trans_time) not in shown
    assert "Not compared: cash" in NOT_COMPARED
