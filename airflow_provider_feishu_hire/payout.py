"""Withdrawals through the ledger: one account, or thousands paced at Feishu's limit.

No Airflow here. Both operators come down to :func:`withdraw_account`, so a single
withdrawal and a batch's follow one path: the intent is committed to the ledger before
the call, Feishu's answer (or its error) after it, and what the ledger already knows
decides whether to send at all. Resume after a retry, a clear or a killed worker is
therefore nothing special: the same order ids meet the same ledger rows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from airflow_provider_feishu_hire.balance import AutoApproveUpTo, Balance, parse_account_assets
from airflow_provider_feishu_hire.client import FeishuClient
from airflow_provider_feishu_hire.exceptions import FeishuAPIError
from airflow_provider_feishu_hire.ledger import (
    AUTO_APPROVED,
    NEEDS_APPROVAL,
    PAID,
    REJECTED,
    REVIEW,
    RUN_SCOPE,
    SENDING,
    SKIPPED,
    UNSENT_STATUSES,
    Approval,
    Intent,
    Ledger,
    NeedsReview,
    OrderIdConflict,
    PayrollScope,
    Superseded,
    TaskTry,
    raw_json,
)
from airflow_provider_feishu_hire.withdrawal import (
    CASH,
    POINTS,
    UnreadableAnswer,
    Withdrawal,
    format_cash,
    format_money,
    parse_withdrawal,
)

log = logging.getLogger(__name__)

MAX_PROBLEMS_IN_SUMMARY = 20
CARRIED_OVER = "carried_over"  # paid by an earlier try or run: read from the ledger, nothing sent


@dataclass(frozen=True)
class Outcome:
    """What became of one account: a ledger status (or ``carried_over``) and the facts behind it."""

    referral_account_id: str
    external_order_id: str
    status: str
    withdrawal: Withdrawal | None = None
    code: int | None = None
    message: str = ""

    def describe(self) -> str:
        if self.withdrawal is not None:
            return self.withdrawal.describe()
        return f"referral account {self.referral_account_id} {self.status}: {self.message}"


def withdraw_account(
    client: FeishuClient,
    ledger: Ledger,
    intent: Intent,
    *,
    check_balance: bool = False,
    approval: Approval | None = None,
    policy: AutoApproveUpTo | None = None,
) -> Outcome:
    """Withdraw one account exactly once, whatever earlier tries (here or on other workers) did.

    ``check_balance`` reads the balance first and records a skip when there is nothing
    to withdraw, unless the ledger already holds a send under this order id: then the
    zero may be our own earlier payment, and the same order id is sent again so that
    Feishu replays what it paid. A refusal of the balance read is recorded too, so the
    run's payroll export names the account. Raises ``OrderIdConflict`` (a ``ValueError``)
    before sending when the order id belongs to another account, and ``Superseded`` when
    this try no longer holds its task's lease.

    ``approval`` (the run's decision, when its DAG has an approval step) binds the amounts:
    the balance is read first, and an account holding more points, or more of any
    currency, than the approver was shown is not withdrawn (``needs_approval``, both
    amounts named). What remains open is the moment between that read and Feishu's
    withdrawal, which takes the whole balance: Feishu's API has no "withdraw at most".

    ``policy`` (the DAG's ``auto_approve_up_to``) pays a balance within it without a
    person: the balance is read first, and the policy is recorded in the ledger as the
    approval this withdrawal acted on, with the amounts, before anything is sent. A balance
    above both the policy and ``approval`` is held (``needs_approval``).
    """
    if intent.run_generation > 1:
        _settle_deleted_runs_orders(client, ledger, intent)
    return _withdraw(client, ledger, intent, check_balance=check_balance, approval=approval, policy=policy)


def _withdraw(
    client: FeishuClient,
    ledger: Ledger,
    intent: Intent,
    *,
    check_balance: bool,
    approval: Approval | None = None,
    policy: AutoApproveUpTo | None = None,
) -> Outcome:
    account_id, order_id = intent.referral_account_id, intent.external_order_id
    authority = approval is not None or policy is not None
    if check_balance or authority:
        known = ledger.get(order_id)
        unsent = known is None or known.status in UNSENT_STATUSES  # no send of it can have paid anything
        # Resending an order whose earlier send has no known outcome takes the whole balance *now* if that send
        # did not commit: under an approval or a policy it is resent only while the balance is covered.
        unknown = authority and known is not None and known.status == SENDING and known.sends > 0
        if unsent or unknown:
            try:
                assets = client.get_account_assets(account_id)
            except FeishuAPIError as err:
                if err.retryable or unknown:
                    return Outcome(account_id, order_id, SENDING, None, err.code, str(err))
                ledger.refuse(intent, err.code, f"balance read refused: {err}")
                return Outcome(account_id, order_id, REJECTED, None, err.code, str(err))
            seen = _nothing_to_withdraw(assets, intent.withdraw_bonus_type) if unsent else None
            if seen is not None and ledger.skip(intent, f"nothing to withdraw at the balance check ({seen})"):
                return Outcome(account_id, order_id, SKIPPED, message="nothing to withdraw")
            held = _beyond_authority(ledger, intent, assets, approval, policy)
            if held is not None:
                if unsent:
                    ledger.hold(intent, held)  # unless another try sent it meanwhile: this one sends nothing either way
                else:
                    held += (
                        f"; order {order_id} was sent before without a known outcome and is not sent again while "
                        "the balance is above what was approved (a new approval covering it resends it)"
                    )
                return Outcome(account_id, order_id, NEEDS_APPROVAL, message=held)
    try:
        claim = ledger.claim(intent)
    except NeedsReview as exc:
        return Outcome(account_id, order_id, REVIEW, message=str(exc))
    if claim.paid is not None:
        return Outcome(account_id, order_id, CARRIED_OVER, claim.paid)
    try:
        data = client.withdraw_referral_account(account_id, intent.withdraw_bonus_type, order_id)
    except FeishuAPIError as err:
        row = ledger.record_failure(
            claim,
            code=err.code,
            msg=err.msg,
            log_id=err.log_id,
            retryable=err.retryable,
            reach=err.reach,
        )
        if row.withdrawal is not None:  # another try of this order id recorded the payment meanwhile
            return Outcome(account_id, order_id, CARRIED_OVER, row.withdrawal)
        if row.status == REVIEW:
            message = (
                f"Feishu refused order {order_id} ({err.msg}) after an earlier send whose outcome is unknown; "
                "it may have paid before. Check the account in Feishu, then settle it: python -m "
                f"airflow_provider_feishu_hire.settlement show {order_id}"
            )
            return Outcome(account_id, order_id, REVIEW, None, err.code, message)
        return Outcome(account_id, order_id, row.status, None, err.code, str(err))
    try:
        withdrawal = parse_withdrawal(account_id, data)
    except UnreadableAnswer as exc:
        ledger.record_unreadable(claim, raw_json(data), str(exc))
        message = (
            f"Feishu paid order {order_id} but its answer does not parse ({exc}); the raw answer is in the "
            f"ledger. Settle it with Feishu's record: python -m airflow_provider_feishu_hire.settlement show {order_id}"
        )
        return Outcome(account_id, order_id, REVIEW, message=message)
    row = ledger.record_paid(claim, withdrawal)
    if row.status == REVIEW:  # another try's unreadable answer came first: a person settles it
        return Outcome(account_id, order_id, REVIEW, message=row.describe_problem())
    _warn_if_after_payroll(ledger, intent)
    return Outcome(account_id, order_id, PAID, withdrawal)


def _settle_deleted_runs_orders(client: FeishuClient, ledger: Ledger, intent: Intent) -> None:
    """Send again the open orders a deleted incarnation of this run left for this task and account.

    Their outcome is unknown (the deleted run's worker died mid-send): sending the same
    order id again makes Feishu replay or complete it, and this run, which sent it, then
    carries it to payroll. The account's new balance is withdrawn under this run's own
    order id afterwards.
    """
    for row in ledger.rows(dag_id=intent.dag_id, run_id=intent.run_id, statuses=(SENDING,)):
        # Its claim makes the order this generation's: still open after a failed resend, it is found here again.
        if (row.task_id, row.referral_account_id) == (intent.task_id, intent.referral_account_id) and (
            row.external_order_id != intent.external_order_id
        ):
            log.warning(
                "Order %s of referral account %s was left without an outcome by a deleted run %s: sending it "
                "again to settle it",
                row.external_order_id,
                row.referral_account_id,
                intent.run_id,
            )
            _withdraw(client, ledger, replace(intent, external_order_id=row.external_order_id), check_balance=False)


def _warn_if_after_payroll(ledger: Ledger, intent: Intent) -> None:
    """A payment recorded after its run's payroll batch was made is in no batch yet: say so, loudly."""
    scope = PayrollScope(RUN_SCOPE, intent.dag_id, intent.run_id, intent.run_generation)
    made = ledger.payroll_batch_ids(scope)
    if made:
        log.warning(
            "Order %s of referral account %s was paid after this run's payroll batch %s was made: it is in no "
            "payroll batch yet. The next export of this run (clear its payroll task) or of this DAG or app "
            "puts it in a new batch",
            intent.external_order_id,
            intent.referral_account_id,
            made[-1],
        )


def _beyond_authority(
    ledger: Ledger, intent: Intent, assets: dict[str, Any], approval: Approval | None, policy: AutoApproveUpTo | None
) -> str | None:
    """Why the balance is more than this run may pay, or None when the policy or the approval covers it."""
    if approval is None and policy is None:
        return None
    account_id = intent.referral_account_id
    try:
        balance = parse_account_assets(account_id, assets)
    except UnreadableAnswer as exc:
        return f"its balance cannot be read exactly ({exc}), so it cannot be compared with the approval"
    above_policy = None
    if policy is not None:
        above_policy = policy.excess(balance, intent.withdraw_bonus_type)
        if above_policy is None:
            _record_policy_approval(ledger, intent, policy, balance.point_bonus, dict(balance.cash_bonus))
            return None
    if approval is None:
        return f"needs approval: it holds {balance.describe()}, {above_policy}; the approval step pays it"
    held = _beyond_approval(ledger, approval, account_id, balance)
    return held if held is None or above_policy is None else f"{held}; {above_policy}"


def _record_policy_approval(
    ledger: Ledger, intent: Intent, policy: AutoApproveUpTo, points: int, cash: dict[str, Decimal]
) -> None:
    """The policy as the approval of this one account, with what it was read to hold, before it is sent."""
    from datetime import datetime, timezone

    task = intent.task_try
    shown = ledger.record_preview(task, {intent.referral_account_id: (points, cash)})
    ledger.record_approval(
        Approval(
            dag_id=task.dag_id,
            run_id=task.run_id,
            task_id=task.task_id,
            decision=AUTO_APPROVED,
            decided_by=f"auto_approve_up_to ({policy.describe()})",
            decided_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            accounts=1,
            point_bonus=points,
            cash_bonus={currency: format_money(amount) for currency, amount in sorted(cash.items())},
            run_generation=task.run_generation,
            payout_preview_id=shown,
        )
    )


def _beyond_approval(ledger: Ledger, approval: Approval, account_id: str, balance: Balance) -> str | None:
    """Why the balance is more than the approval covers, or None when it is within what was shown."""
    shown = None if approval.payout_preview_id is None else ledger.previewed(approval.payout_preview_id, account_id)
    now = balance.describe()
    if shown is None:
        return f"needs approval: the approval by {approval.decided_by} did not show this account; it holds {now}"
    points, cash = shown
    more_cash = any(amount > cash.get(currency, Decimal(0)) for currency, amount in balance.cash_bonus.items())
    if balance.point_bonus <= points and not more_cash:
        return None
    return (
        f"needs approval: it holds {now}, more than the {points} points, cash {format_cash(cash) or 'none'} "
        f"approved by {approval.decided_by}; a new approval pays it"
    )


def _nothing_to_withdraw(assets: dict[str, Any], bonus_types: Sequence[int]) -> str | None:
    """The balance seen, when it clearly holds nothing of the chosen kinds; None (send) for anything unclear."""
    try:
        balance = parse_account_assets("", assets)
    except UnreadableAnswer:
        return None
    points = POINTS in bonus_types and balance.point_bonus != 0
    cash = CASH in bonus_types and any(amount != 0 for amount in balance.cash_bonus.values())
    if points or cash:
        return None  # a deactivated account too: Feishu refuses it, and the ledger says who is owed money
    # An empty account is skipped even when deactivated (a leaver paid out before): nobody is owed anything,
    # so a sweep over every known account does not fail on each leaver.
    return f"balance {balance.describe()}" + ("" if balance.enabled else ", deactivated")


@dataclass
class BatchSummary:
    """What one batch did, small enough for XCom at any batch size.

    ``paid`` and the totals cover every account whose withdrawal the ledger holds,
    including the ``carried_over`` ones paid by an earlier try; ``total`` is the number
    of distinct account ids given.
    """

    total: int = 0
    superseded: str = ""  # why this try stopped sending: a newer try, or a re-created run, took over
    paid: int = 0
    carried_over: int = 0
    skipped: int = 0
    rejected: int = 0
    needs_approval: int = 0
    open: int = 0
    review: int = 0
    point_bonus: int = 0
    cash_bonus: dict[str, Decimal] = field(default_factory=dict)
    problems: list[dict[str, Any]] = field(default_factory=list)
    # Held for a person (account -> order id): an approval step downstream pays them under the same order ids.
    awaiting_approval: dict[str, str] = field(default_factory=dict)

    def add(self, outcome: Outcome) -> None:
        if outcome.withdrawal is not None:
            self.paid += 1
            self.carried_over += outcome.status == CARRIED_OVER
            self.point_bonus += outcome.withdrawal.point_bonus
            for currency, amount in outcome.withdrawal.cash_bonus.items():
                self.cash_bonus[currency] = self.cash_bonus.get(currency, Decimal(0)) + amount
            return
        if outcome.status == SKIPPED:
            self.skipped += 1
            return
        self.open += outcome.status == SENDING
        self.rejected += outcome.status == REJECTED
        self.needs_approval += outcome.status == NEEDS_APPROVAL
        if outcome.status == NEEDS_APPROVAL:
            self.awaiting_approval[outcome.referral_account_id] = outcome.external_order_id
        self.review += outcome.status == REVIEW
        if len(self.problems) < MAX_PROBLEMS_IN_SUMMARY:
            self.problems.append(
                {
                    "referral_account_id": outcome.referral_account_id,
                    "external_order_id": outcome.external_order_id,
                    "status": outcome.status,
                    "code": outcome.code,
                    "message": outcome.message,
                }
            )

    def as_xcom(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "superseded": self.superseded,
            "paid": self.paid,
            "carried_over": self.carried_over,
            "skipped": self.skipped,
            "rejected": self.rejected,
            "needs_approval": self.needs_approval,
            "open": self.open,
            "review": self.review,
            "point_bonus": self.point_bonus,
            "cash_bonus": {currency: format_money(amount) for currency, amount in sorted(self.cash_bonus.items())},
            "problems": self.problems,
            "awaiting_approval": self.awaiting_approval,
        }


def withdraw_batch(
    client: FeishuClient,
    ledger: Ledger,
    referral_account_ids: Iterable[str],
    *,
    intent_for: Callable[[str], Intent],
    check_balances: bool = False,
    approval: Approval | None = None,
    policy: AutoApproveUpTo | None = None,
    max_workers: int = 4,
    lease_check_seconds: float = 2.0,
) -> BatchSummary:
    """Withdraw every account once; one account's failure never stops the others.

    Threads share the client (its token, keep-alive connections and pace) and the ledger
    (a database connection each). An account listed twice is settled once. Every
    ``lease_check_seconds`` the batch looks whether a newer try of its task has started
    (its worker was presumed dead, but this process lives on); if so it stops sending,
    settles what is in flight and returns with ``superseded`` saying why. Every claim checks
    the lease too, in its own transaction, so no superseded try sends between two checks.
    """
    summary = BatchSummary()
    task: TaskTry | None = None
    next_lease_check = 0.0
    stopped = threading.Event()  # superseded: queued accounts are left to the newer try

    def superseded(account_id: str) -> bool:
        nonlocal task, next_lease_check
        if task is None:
            task = intent_for(account_id).task_try
            lease = ledger.take_lease(task)
        elif time.monotonic() >= next_lease_check:
            lease = ledger.lease(task)
        else:
            return False
        next_lease_check = time.monotonic() + lease_check_seconds
        if not lease.held:
            stop(lease.describe(task))
            return True
        return False

    def stop(why: str) -> None:
        if not stopped.is_set():
            stopped.set()
            summary.superseded = why
            log.warning("This try stops sending: %s", why)

    def settle(account_id: str) -> Outcome | None:
        """One account's outcome, whatever goes wrong: one account never stops the others."""
        if stopped.is_set():
            return None
        intent = intent_for(account_id)
        try:
            return withdraw_account(
                client, ledger, intent, check_balance=check_balances, approval=approval, policy=policy
            )
        except Superseded as exc:  # found where the order is claimed, between two lease checks
            stop(str(exc))
            return None
        except OrderIdConflict as exc:
            return Outcome(account_id, intent.external_order_id, REJECTED, message=str(exc))
        except Exception as exc:  # the ledger's database, an odd answer: unknown, so a retry resends
            return Outcome(account_id, intent.external_order_id, SENDING, message=f"{type(exc).__name__}: {exc}")

    def settled(future: Future[Outcome | None]) -> None:
        outcome = future.result()
        if outcome is None:
            return
        summary.add(outcome)
        if outcome.withdrawal is not None and outcome.status == PAID:
            log.info("Withdrew %s", outcome.describe())
        elif outcome.withdrawal is None and outcome.status != SKIPPED:
            log.warning("Not paid: %s", outcome.describe())

    seen: set[str] = set()
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="feishu-withdraw") as pool:
        in_flight: set[Future[Outcome | None]] = set()
        for account_id in referral_account_ids:
            if account_id in seen:
                continue
            if superseded(account_id):
                break
            seen.add(account_id)
            summary.total += 1
            if len(in_flight) >= 2 * max_workers:
                finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    settled(future)
            in_flight.add(pool.submit(settle, account_id))
        for future in in_flight:
            settled(future)
    return summary
