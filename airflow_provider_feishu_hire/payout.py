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
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from airflow_provider_feishu_hire.balance import parse_account_assets
from airflow_provider_feishu_hire.client import FeishuClient
from airflow_provider_feishu_hire.exceptions import FeishuAPIError
from airflow_provider_feishu_hire.ledger import (
    PAID,
    REJECTED,
    REVIEW,
    SENDING,
    SKIPPED,
    Intent,
    Ledger,
    NeedsReview,
    OrderIdConflict,
    raw_json,
)
from airflow_provider_feishu_hire.withdrawal import (
    CASH,
    POINTS,
    UnreadableAnswer,
    Withdrawal,
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


def withdraw_account(client: FeishuClient, ledger: Ledger, intent: Intent, *, check_balance: bool = False) -> Outcome:
    """Withdraw one account exactly once, whatever earlier tries (here or on other workers) did.

    ``check_balance`` reads the balance first and records a skip when there is nothing
    to withdraw, unless the ledger already holds a send under this order id: then the
    zero may be our own earlier payment, and the same order id is sent again so that
    Feishu replays what it paid. Raises ``OrderIdConflict`` (a ``ValueError``) before
    sending when the order id belongs to another account.
    """
    account_id, order_id = intent.referral_account_id, intent.external_order_id
    if check_balance:
        known = ledger.get(order_id)
        if known is None or known.status in (SKIPPED, REJECTED):
            try:
                assets = client.get_account_assets(account_id)
            except FeishuAPIError as err:
                return Outcome(account_id, order_id, SENDING if err.retryable else REJECTED, None, err.code, str(err))
            if _nothing_to_withdraw(assets, intent.withdraw_bonus_type) and ledger.skip(
                intent, "nothing to withdraw at the balance check"
            ):
                return Outcome(account_id, order_id, SKIPPED, message="nothing to withdraw")
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
            uncertain=err.uncertain,
            reached=err.may_have_reached_feishu or err.uncertain,
        )
        if row.withdrawal is not None:  # another try of this order id recorded the payment meanwhile
            return Outcome(account_id, order_id, CARRIED_OVER, row.withdrawal)
        if row.status == REVIEW:
            message = (
                f"Feishu refused order {order_id} ({err.msg}) after an earlier send whose outcome is unknown; "
                "it may have paid before. Check the account in Feishu, then settle the ledger row by hand"
            )
            return Outcome(account_id, order_id, REVIEW, None, err.code, message)
        return Outcome(account_id, order_id, row.status, None, err.code, str(err))
    try:
        withdrawal = parse_withdrawal(account_id, data)
    except UnreadableAnswer as exc:
        ledger.record_unreadable(claim, raw_json(data), str(exc))
        message = (
            f"Feishu paid order {order_id} but its answer does not parse ({exc}); the raw answer is in the "
            "ledger. Review it with Feishu before paying this account again"
        )
        return Outcome(account_id, order_id, REVIEW, message=message)
    row = ledger.record_paid(claim, withdrawal)
    if row.status == REVIEW:  # another try's unreadable answer came first: a person settles it
        return Outcome(account_id, order_id, REVIEW, message=row.describe_problem())
    return Outcome(account_id, order_id, PAID, withdrawal)


def _nothing_to_withdraw(assets: dict[str, Any], bonus_types: Sequence[int]) -> bool:
    """True only for a balance that clearly holds nothing of the chosen kinds; anything unclear is sent."""
    try:
        balance = parse_account_assets("", assets)
    except UnreadableAnswer:
        return False
    if not balance.enabled:
        return False  # deactivated: let Feishu refuse it, so the ledger says why it was not paid
    points = POINTS in bonus_types and balance.point_bonus != 0
    cash = CASH in bonus_types and any(amount != 0 for amount in balance.cash_bonus.values())
    return not (points or cash)


@dataclass
class BatchSummary:
    """What one batch did, small enough for XCom at any batch size.

    ``paid`` and the totals cover every account whose withdrawal the ledger holds,
    including the ``carried_over`` ones paid by an earlier try; ``total`` is the number
    of distinct account ids given.
    """

    total: int = 0
    superseded_by: int = 0  # a newer try of this task took over: this one stopped sending
    paid: int = 0
    carried_over: int = 0
    skipped: int = 0
    rejected: int = 0
    open: int = 0
    review: int = 0
    point_bonus: int = 0
    cash_bonus: dict[str, Decimal] = field(default_factory=dict)
    problems: list[dict[str, Any]] = field(default_factory=list)

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
            "superseded_by": self.superseded_by,
            "paid": self.paid,
            "carried_over": self.carried_over,
            "skipped": self.skipped,
            "rejected": self.rejected,
            "open": self.open,
            "review": self.review,
            "point_bonus": self.point_bonus,
            "cash_bonus": {currency: format_money(amount) for currency, amount in sorted(self.cash_bonus.items())},
            "problems": self.problems,
        }


def withdraw_batch(
    client: FeishuClient,
    ledger: Ledger,
    referral_account_ids: Iterable[str],
    *,
    intent_for: Callable[[str], Intent],
    check_balances: bool = False,
    max_workers: int = 4,
    lease_check_seconds: float = 2.0,
) -> BatchSummary:
    """Withdraw every account once; one account's failure never stops the others.

    Threads share the client (its token, keep-alive connections and pace) and the ledger
    (a database connection each). An account listed twice is settled once. Every
    ``lease_check_seconds`` the batch looks whether a newer try of its task has started
    (its worker was presumed dead, but this process lives on); if so it stops sending,
    settles what is in flight and returns with ``superseded_by`` set.
    """
    summary = BatchSummary()
    lease: Intent | None = None
    next_lease_check = 0.0
    stopped = threading.Event()  # superseded: queued accounts are left to the newer try

    def superseded(account_id: str) -> bool:
        nonlocal lease, next_lease_check
        if lease is None:
            lease = intent_for(account_id)
            holder = ledger.take_lease(lease)
        elif time.monotonic() >= next_lease_check:
            holder = ledger.lease_holder(lease)
        else:
            return False
        next_lease_check = time.monotonic() + lease_check_seconds
        if holder > lease.try_number:
            stopped.set()
            summary.superseded_by = holder
            log.warning("Try %d of this task has started: try %d stops sending", holder, lease.try_number)
            return True
        return False

    def settle(account_id: str) -> Outcome | None:
        """One account's outcome, whatever goes wrong: one account never stops the others."""
        if stopped.is_set():
            return None
        intent = intent_for(account_id)
        try:
            return withdraw_account(client, ledger, intent, check_balance=check_balances)
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
