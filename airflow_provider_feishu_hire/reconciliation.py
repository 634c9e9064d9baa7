"""Feishu's reconciliation as a second witness to the ledger. No Airflow here.

Feishu's ``/referral_account/reconciliation`` takes our per-account point totals for a
``trans_time`` window and lists every account where its own withdrawals disagree. Its docs
do not say whether ``start_trans_time`` and ``end_trans_time`` are inclusive. The window
sent here therefore starts and ends at milliseconds at which the ledger paid nothing, so
every reading compares the same set of our withdrawals; the ledger's totals are summed
over exactly that window.

Feishu's endpoint takes and returns points only: cash is not part of its comparison, and
the logs say so rather than let "Feishu agrees" read as covering the money.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_feishu_hire.exceptions import FeishuAPIError
from airflow_provider_feishu_hire.ledger import Mismatch, Reconciliation

if TYPE_CHECKING:
    from airflow_provider_feishu_hire.client import FeishuClient
    from airflow_provider_feishu_hire.ledger import Ledger

# What a person must know about any reconciliation's verdict.
NOT_COMPARED = (
    "Compared: each account's points. Not compared: cash, which Feishu's reconciliation API does not take "
    "(the payroll holds the cash the ledger recorded)"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# How far past the requested end the window may move to find a millisecond with no payment:
# withdrawals are paced at 100 a minute, so a run of busy milliseconds this long cannot happen.
_MAX_SHIFT = 60_000


def reconcile(client: FeishuClient, ledger: Ledger, start_trans_time: int, end_trans_time: int) -> Reconciliation:
    """Compare the ledger's points paid in ``[start, end)`` (ms) with Feishu's; return the disagreements.

    The window sent is ``[start', end']``: ``start'`` the last millisecond at or before
    ``start - 1`` with no payment in the ledger, ``end'`` the first at or after ``end - 1``
    (usually ``start - 1`` and ``end - 1`` themselves). It can therefore reach a little past
    the requested window, and the recorded window says exactly what was compared.
    """
    if start_trans_time >= end_trans_time:
        raise ValueError(f"start_trans_time {start_trans_time} is not before end_trans_time {end_trans_time}")
    app_id = client.tenant_app_id  # one tenant's payments: a store app serves many companies
    start = _quiet_millisecond(ledger, app_id, start_trans_time - 1, -1)
    end = _quiet_millisecond(ledger, app_id, end_trans_time - 1, +1)
    totals = ledger.point_totals(app_id, start, end)
    failed = client.reconcile_referral_accounts(start, end, totals)
    mismatches = tuple(_mismatch(entry, totals) for entry in failed)
    return Reconciliation(app_id, start, end, totals, mismatches)


def describe_window(record: Reconciliation) -> str:
    """The window compared, as times a person reads (UTC, to the millisecond), ends included."""
    return f"paid from {_utc(record.start_trans_time)} to {_utc(record.end_trans_time)} (both ends included)"


def _utc(trans_time: int) -> str:
    """Feishu's ``trans_time`` (ms since the epoch, exact: no float) as "2026-12-03 09:11:04.473 UTC"."""
    moment = _EPOCH + timedelta(milliseconds=trans_time)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"


def _quiet_millisecond(ledger: Ledger, app_id: str, at: int, step: int) -> int:
    """The nearest millisecond from ``at`` in the direction of ``step`` at which the ledger paid nothing."""
    moment = at
    while ledger.paid_at(app_id, moment):
        moment += step
        if abs(moment - at) > _MAX_SHIFT:
            raise ValueError(f"the ledger shows a payment in every millisecond near {at}")
    return max(moment, 0)


def _mismatch(entry: Any, totals: dict[str, int]) -> Mismatch:
    """One ``check_failed_list`` entry; our figure is the ledger's, Feishu's is what it says it paid out."""
    try:
        account_id = str(entry["account_id"])
        theirs = entry["total_withdraw_reward_info"]["point_bonus"]
        if isinstance(theirs, bool) or int(theirs) != theirs:
            raise ValueError
        return Mismatch(account_id, totals.get(account_id, 0), int(theirs))
    except (KeyError, TypeError, ValueError):
        raise FeishuAPIError(
            "reconciliation answer's check_failed_list entry lacks account_id or a whole point total",
            retryable=False,
            context="reading Feishu's reconciliation",
        ) from None
