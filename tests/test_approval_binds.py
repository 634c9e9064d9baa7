"""An approval binds the amounts it showed: checked by the withdrawal itself, against the ledger, over HTTP.

The approver was shown each account's points and cash per currency (the preview, kept in
the ledger). At withdrawal the balance is read again: an account holding more, in points
or in any currency, or one the approver was never shown, is not withdrawn; it is recorded
as ``needs_approval`` with both amounts, named by the run's export, and paid after a new
approval. On SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from airflow_provider_feishu_hire.balance import Balance, check_auto_approve_up_to
from airflow_provider_feishu_hire.client import FeishuClient, RetryPolicy
from airflow_provider_feishu_hire.ledger import (
    APPROVE,
    AUTO_APPROVED,
    NEEDS_APPROVAL,
    PAID,
    Approval,
    Intent,
    Ledger,
    TaskTry,
)
from airflow_provider_feishu_hire.payout import withdraw_account, withdraw_batch
from airflow_provider_feishu_hire.payroll import completeness
from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_ID, DEFAULT_APP_SECRET, Account, FeishuSandbox
from airflow_provider_feishu_hire.withdrawal import POINTS, derive_external_order_id
from tests.conftest import FAST_RETRY, assert_paid_exactly_once

A, B, C = "7800000000000000001", "7800000000000000002", "7800000000000000003"
RUN = TaskTry("payroll", "manual__2026-12-03", "withdraw", -1, 1, "ti-1", 1)


def intent(account: str, try_number: int = 1) -> Intent:
    order = derive_external_order_id(
        dag_id=RUN.dag_id, run_id=RUN.run_id, task_id=RUN.task_id, referral_account_id=account
    )
    return Intent(order, account, (1, 2), DEFAULT_APP_ID, RUN.dag_id, RUN.run_id, RUN.task_id, -1, try_number)


def approve(ledger: Ledger, shown: dict[str, tuple[int, dict[str, Decimal]]], who: str = "bob") -> Approval:
    preview = ledger.record_preview(TaskTry(RUN.dag_id, RUN.run_id, "preview_payout"), shown)
    approval = Approval(RUN.dag_id, RUN.run_id, "approve_payout", APPROVE, who, "2026-12-03T09:00:00+00:00",
                        len(shown), 0, {}, 1, "alice", preview)  # fmt: skip
    ledger.record_approval(approval)
    return approval


@pytest.fixture
def sandbox() -> Iterator[FeishuSandbox]:
    accounts = [Account(A, 10, {"CNY": Decimal("5.00")}), Account(B, 3, {"CNY": Decimal("1.00")}), Account(C)]
    with FeishuSandbox(accounts, rate_limits=False) as running:
        yield running


@pytest.fixture
def client(sandbox: FeishuSandbox) -> Iterator[FeishuClient]:
    with FeishuClient(DEFAULT_APP_ID, DEFAULT_APP_SECRET, sandbox.url, retry=FAST_RETRY) as made:
        yield made


def test_an_account_credited_after_the_preview_is_held_named_and_paid_after_a_new_approval(
    ledger: Ledger, sandbox: FeishuSandbox, client: FeishuClient
) -> None:
    approval = approve(ledger, {A: (10, {"CNY": Decimal("5.00")}), B: (3, {"CNY": Decimal("1.00")})})
    sandbox.credit(B, point_bonus=0, cash_bonus={"CNY": "0.50"})  # B now holds 3 points and 1.50 CNY
    sandbox.credit(C, point_bonus=1)  # C was empty at preview: never shown
    summary = withdraw_batch(client, ledger, [A, B, C], intent_for=intent, approval=approval)
    assert (summary.paid, summary.needs_approval) == (1, 2)
    assert [e["referral_account_id"] for e in sandbox.state()["ledger"]] == [A]  # only what was approved
    held = ledger.get(intent(B).external_order_id)
    assert held is not None and held.status == NEEDS_APPROVAL and held.sends == 0
    assert "1.50 CNY" in (held.error_msg or "") and "1.00 CNY" in (held.error_msg or "")  # both amounts
    assert "did not show this account" in (ledger.get(intent(C).external_order_id).error_msg or "")  # type: ignore[union-attr]
    named = completeness(ledger.rows(dag_id=RUN.dag_id, run_id=RUN.run_id)).not_paid
    assert set(named) == {B, C}

    again = approve(ledger, {B: (3, {"CNY": Decimal("1.50")}), C: (1, {})})
    summary = withdraw_batch(client, ledger, [A, B, C], intent_for=lambda a: intent(a, 2), approval=again)
    assert (summary.paid, summary.needs_approval) == (3, 0)
    assert {row.status for row in ledger.rows(dag_id=RUN.dag_id)} == {PAID}
    assert_paid_exactly_once(ledger, sandbox)


def test_more_points_alone_or_a_new_currency_alone_is_more_than_approved(
    ledger: Ledger, sandbox: FeishuSandbox, client: FeishuClient
) -> None:
    approval = approve(ledger, {A: (10, {"CNY": Decimal("5.00")}), B: (3, {"CNY": Decimal("1.00")})})
    sandbox.credit(A, point_bonus=1)
    sandbox.credit(B, cash_bonus={"USD": "0.01"})
    for account in (A, B):
        assert withdraw_account(client, ledger, intent(account), approval=approval).status == NEEDS_APPROVAL
    assert sandbox.state()["ledger"] == []  # nothing sent


def test_an_account_within_its_approval_is_paid_and_an_emptied_one_skipped(
    ledger: Ledger, sandbox: FeishuSandbox, client: FeishuClient
) -> None:
    approval = approve(ledger, {A: (10, {"CNY": Decimal("5.00")}), C: (0, {})})
    outcome = withdraw_account(client, ledger, intent(A), approval=approval)
    assert outcome.status == PAID and outcome.withdrawal and outcome.withdrawal.point_bonus == 10
    assert withdraw_account(client, ledger, intent(C), approval=approval).status == "skipped"
    assert_paid_exactly_once(ledger, sandbox)


# -- the event payout's auto_approve_up_to policy: a standing approval, per account -----------------

POLICY = check_auto_approve_up_to({"point_bonus": 10, "cash_bonus": {"CNY": "5.00"}})


def test_the_policy_pays_what_is_within_it_records_itself_and_holds_the_rest_for_a_person(
    ledger: Ledger, sandbox: FeishuSandbox, client: FeishuClient
) -> None:
    sandbox.credit(B, point_bonus=8)  # B: 11 points, above the 10 the policy pays unasked
    sandbox.credit(C, cash_bonus={"USD": "0.01"})  # C: a currency the policy has no limit for
    summary = withdraw_batch(client, ledger, [A, B, C], intent_for=intent, policy=POLICY)
    assert (summary.paid, summary.needs_approval) == (1, 2)
    assert [e["referral_account_id"] for e in sandbox.state()["ledger"]] == [A]  # exactly A: 10 points, 5.00 CNY
    assert summary.awaiting_approval == {B: intent(B).external_order_id, C: intent(C).external_order_id}
    held = ledger.get(intent(B).external_order_id)
    assert held is not None and held.status == NEEDS_APPROVAL and held.sends == 0
    assert "11 points" in (held.error_msg or "") and "auto_approve_up_to" in (held.error_msg or "")
    assert "0.01 USD" in (ledger.get(intent(C).external_order_id).error_msg or "")  # type: ignore[union-attr]
    # The policy is in the ledger as the approval A was paid on, with the amounts it was read to hold.
    (auto,) = ledger.approvals(RUN.dag_id, RUN.run_id)
    assert auto.decision == AUTO_APPROVED and "auto_approve_up_to" in auto.decided_by
    assert (auto.point_bonus, auto.cash_bonus) == (10, {"CNY": "5.00"})
    assert ledger.previewed(auto.payout_preview_id or 0, A) == (10, {"CNY": Decimal("5.00")})

    # A person approves what the held accounts were shown: paid under the same order ids, once.
    approval = approve(ledger, {B: (11, {"CNY": Decimal("1.00")}), C: (0, {"USD": Decimal("0.01")})})
    summary = withdraw_batch(
        client, ledger, list(summary.awaiting_approval), intent_for=lambda a: intent(a, 2), approval=approval
    )
    assert (summary.paid, summary.needs_approval) == (2, 0)
    assert {row.status for row in ledger.rows(dag_id=RUN.dag_id)} == {PAID}
    assert_paid_exactly_once(ledger, sandbox)


def test_a_balance_credited_past_the_policy_after_an_event_is_not_paid_unasked(
    ledger: Ledger, sandbox: FeishuSandbox, client: FeishuClient
) -> None:
    sandbox.credit(A, cash_bonus={"CNY": "0.01"})  # 5.01 CNY: one cent over
    assert withdraw_account(client, ledger, intent(A), policy=POLICY).status == NEEDS_APPROVAL
    assert sandbox.state()["ledger"] == []


@pytest.mark.parametrize(
    ("policy", "named"),
    [
        ({"point_bonus": 1.5}, "auto_approve_up_to.point_bonus"),
        ({"point_bonus": -1}, "auto_approve_up_to.point_bonus"),
        ({"cash_bonus": {"CNY": 5.0}}, "auto_approve_up_to.cash_bonus.CNY"),  # a float: never money
        ({"cash_bonus": {"CNY": "5.001"}}, "auto_approve_up_to.cash_bonus.CNY"),
        ({"cash_bonus": {"yuan": "5"}}, "auto_approve_up_to.cash_bonus currency"),
        ({"cash_bonus": ["CNY", "5"]}, "auto_approve_up_to.cash_bonus"),
        ({"points": 5}, "auto_approve_up_to"),  # not Feishu's name: refused rather than ignored
        ("100", "auto_approve_up_to"),
    ],
)
def test_a_policy_that_is_not_exact_is_refused_naming_the_field(policy: object, named: str) -> None:
    with pytest.raises((ValueError, TypeError), match=named.replace(".", r"\.")):
        check_auto_approve_up_to(policy)


def test_an_unknown_send_is_not_resent_once_the_balance_outgrew_the_policy_until_a_person_approves(
    ledger: Ledger, sandbox: FeishuSandbox
) -> None:
    """Resending the order would take the whole balance now: a credit since the first send needs a person first."""
    sandbox.inject("http_500")  # Feishu answers 500 without acting: the send's outcome is unknown
    with FeishuClient(DEFAULT_APP_ID, DEFAULT_APP_SECRET, sandbox.url, retry=RetryPolicy(max_attempts=1)) as once:
        assert withdraw_account(once, ledger, intent(A), policy=POLICY).status == "sending"
    sandbox.credit(A, point_bonus=90)  # 100 points now, above the policy's 10
    with FeishuClient(DEFAULT_APP_ID, DEFAULT_APP_SECRET, sandbox.url, retry=FAST_RETRY) as client:
        held = withdraw_account(client, ledger, intent(A, 2), policy=POLICY)
        assert held.status == NEEDS_APPROVAL and "sent before without a known outcome" in held.message
        assert sandbox.state()["ledger"] == [] and ledger.get(intent(A).external_order_id).status == "sending"  # type: ignore[union-attr]
        approval = approve(ledger, {A: (100, {"CNY": Decimal("5.00")})})
        assert withdraw_account(client, ledger, intent(A, 3), approval=approval).status == PAID
    assert_paid_exactly_once(ledger, sandbox)


def test_the_policy_reads_only_what_would_be_withdrawn_and_ignores_zero_amounts() -> None:
    policy = check_auto_approve_up_to({"point_bonus": 10, "cash_bonus": {"CNY": "5.00"}})
    assert policy is not None
    empty_euros = Balance(A, True, 10, {"CNY": Decimal("5.00"), "EUR": Decimal("0.00")})
    assert policy.excess(empty_euros) is None  # a zero in a currency without a limit is nothing to pay
    lots_of_cash = Balance(A, True, 3, {"CNY": Decimal("900.00")})
    assert policy.excess(lots_of_cash, (POINTS,)) is None  # a points-only withdrawal takes no cash
    assert "900.00 CNY" in (policy.excess(lots_of_cash) or "")
