"""Withdraw many referral accounts in one process: paced, concurrent, resumable, results streamed to disk.

No Airflow here. The batch operator supplies the client, the account ids, how to derive
each account's ``external_order_id`` and the results file; this module does the rest.

The results file is a journal (JSON lines) and the source of truth for a resumed run:

- ``paid``: the withdrawal's record (as pushed to XCom by the single-account operator);
  a resumed run carries it over and never calls Feishu for that account again;
- ``sending``: written before a withdrawal goes out. An account with a ``sending`` or
  ``failed`` line but no ``paid`` line may have been paid by Feishu, so a resumed run
  withdraws it again (same order id, so Feishu returns the original details) and never
  skips it on a zero balance;
- ``skipped``: the balance check found nothing to withdraw; no withdrawal was sent;
- ``failed``: what Feishu (or the network) said, and whether retrying can help.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from airflow_provider_feishu_hire.client import FeishuClient
from airflow_provider_feishu_hire.exceptions import FeishuAPIError
from airflow_provider_feishu_hire.withdrawal import (
    CASH,
    POINTS,
    describe_withdrawal,
    file_safe,
    format_money,
    withdrawal_record,
)

log = logging.getLogger(__name__)

MAX_FAILURES_IN_SUMMARY = 20


@dataclass
class BatchSummary:
    """What one batch did, small enough for XCom at any batch size.

    ``paid`` and the totals cover every account this task instance has paid, including
    the ``carried_over`` ones an earlier try paid; ``total`` is the number of account ids given.
    """

    results_path: str
    total: int = 0
    paid: int = 0
    carried_over: int = 0
    skipped: int = 0
    failed_permanent: int = 0
    failed_transient: int = 0
    point_bonus: int = 0
    cash_bonus: dict[str, Decimal] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def add_paid(self, record: dict[str, Any]) -> None:
        self.paid += 1
        details = record["withdrawal_details"]
        self.point_bonus += details["point_bonus"]
        for cash in details["cash_bonus"]:
            currency = cash["currency_type"]
            self.cash_bonus[currency] = self.cash_bonus.get(currency, Decimal(0)) + Decimal(cash["amount"])

    def add_failure(self, line: dict[str, Any]) -> None:
        if line["retryable"]:
            self.failed_transient += 1
        else:
            self.failed_permanent += 1
        if len(self.failures) < MAX_FAILURES_IN_SUMMARY:
            self.failures.append(line)

    def as_xcom(self) -> dict[str, Any]:
        return {
            "results_path": self.results_path,
            "total": self.total,
            "paid": self.paid,
            "carried_over": self.carried_over,
            "skipped": self.skipped,
            "failed_permanent": self.failed_permanent,
            "failed_transient": self.failed_transient,
            "point_bonus": self.point_bonus,
            "cash_bonus": {currency: format_money(amount) for currency, amount in sorted(self.cash_bonus.items())},
            "failures": self.failures,
        }


def read_journal(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.endswith("\n"):  # a line cut short by a killed worker is not a fact
                yield json.loads(line)


def journal_path(
    results_dir: str | os.PathLike[str], *, dag_id: str, run_id: str, task_id: str, map_index: int = -1
) -> Path:
    """Where a task instance's journal lives: every try, and the payroll export, find the same file."""
    name = f"{file_safe(dag_id)}__{file_safe(run_id)}__{file_safe(task_id)}"
    return Path(results_dir) / (name + (f"__{map_index}" if map_index >= 0 else "") + ".jsonl")


def settled_account_ids(path: str | os.PathLike[str]) -> set[str]:
    """Accounts the journal shows as paid or as having had nothing to withdraw."""
    return {line["referral_account_id"] for line in read_journal(Path(path)) if line["status"] in ("paid", "skipped")}


def paid_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The withdrawal records of a batch's journal, once per account, for the payroll export."""
    seen: set[str] = set()
    for line in read_journal(Path(path)):
        if line["status"] == "paid" and line["referral_account_id"] not in seen:
            seen.add(line["referral_account_id"])
            yield line["record"]


class _Journal:
    """Appends lines from any thread; ``durable`` lines are fsynced before the call they announce."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(path)
        self._handle = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, line: dict[str, Any], durable: bool = False) -> None:
        text = json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n"
        with self._lock:
            self._handle.write(text)
            self._handle.flush()
            if durable:
                os.fsync(self._handle.fileno())

    def close(self) -> None:
        with self._lock:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()


def _drop_torn_tail(path: Path) -> None:
    """Cut a line a killed worker left half-written, so the next line does not run into it."""
    if not path.exists():
        return
    with path.open("rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


def _nothing_to_withdraw(account: dict[str, Any], bonus_types: Sequence[int]) -> bool:
    bonus = (account.get("assets") or {}).get("confirmed_bonus") or {}
    points = POINTS in bonus_types and int(bonus.get("point_bonus") or 0) > 0
    cash = CASH in bonus_types and any(Decimal(str(c.get("amount") or 0)) > 0 for c in bonus.get("cash_bonus") or [])
    return not (points or cash)


def _failure(account_id: str, order_id: str, err: FeishuAPIError) -> dict[str, Any]:
    return {
        "referral_account_id": account_id,
        "external_order_id": order_id,
        "status": "failed",
        "code": err.code,
        "msg": err.msg,
        "log_id": err.log_id,
        "retryable": err.retryable,
    }


def withdraw_batch(
    client: FeishuClient,
    referral_account_ids: Iterable[str],
    *,
    bonus_types: Sequence[int],
    order_id_for: Callable[[str], str],
    results_path: Path,
    check_balances: bool = False,
    max_workers: int = 4,
    earlier_tries: bool = False,
) -> BatchSummary:
    """Withdraw every account once, carrying over what the journal says was already paid.

    Failures of one account never stop the others. Threads share the client, so they
    share its token, its keep-alive connections and its rate limiters. ``earlier_tries``
    says an earlier try may have sent withdrawals: if its journal is gone (another
    worker's disk), no account is skipped on a zero balance, since that zero may be
    our own earlier payment.
    """
    trust_balances = check_balances and not (earlier_tries and not results_path.exists())
    if check_balances and not trust_balances:
        log.warning("No journal from the earlier try at %s: withdrawing every account, skipping none", results_path)
    summary = BatchSummary(results_path=str(results_path))
    done: set[str] = set()  # paid by an earlier try of this task instance, or already queued now
    uncertain: set[str] = set()  # sent before without a known outcome: never skip on a zero balance
    for line in read_journal(results_path):
        account_id = line["referral_account_id"]
        if line["status"] == "paid" and account_id not in done:
            done.add(account_id)
            summary.add_paid(line["record"])
            summary.carried_over += 1
        elif line["status"] in ("sending", "failed"):
            uncertain.add(account_id)

    journal = _Journal(results_path)

    def settle(account_id: str) -> tuple[str, dict[str, Any]]:
        order_id = order_id_for(account_id)
        try:
            if trust_balances and account_id not in uncertain:
                account = client.get_account_assets(account_id).get("account") or {}
                if account.get("status") == 2:
                    return "failed", _failure(
                        account_id,
                        order_id,
                        FeishuAPIError("referral account is deactivated (from get_account_assets)", code=1002555),
                    )
                if _nothing_to_withdraw(account, bonus_types):
                    return "skipped", {"referral_account_id": account_id, "status": "skipped"}
            journal.write(
                {"referral_account_id": account_id, "external_order_id": order_id, "status": "sending"},
                durable=check_balances,
            )
            data = client.withdraw_referral_account(account_id, bonus_types, order_id)
            record = withdrawal_record(account_id, data)
        except FeishuAPIError as err:
            return "failed", _failure(account_id, order_id, err)
        except Exception as exc:  # anything else still settles this account, as "unknown, retry"
            return "failed", _failure(
                account_id, order_id, FeishuAPIError(f"{type(exc).__name__}: {exc}", retryable=True)
            )
        return "paid", {"referral_account_id": account_id, "status": "paid", "record": record}

    def settled(future: Future[tuple[str, dict[str, Any]]]) -> None:
        status, line = future.result()
        journal.write(line)
        if status == "paid":
            summary.add_paid(line["record"])
            log.info("Withdrew %s", describe_withdrawal(line["record"]))
        elif status == "skipped":
            summary.skipped += 1
        else:
            summary.add_failure(line)
            log.warning("Referral account %s failed: %s %s", line["referral_account_id"], line["code"], line["msg"])

    try:
        with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="feishu-withdraw") as pool:
            in_flight: set[Future[tuple[str, dict[str, Any]]]] = set()
            for account_id in referral_account_ids:
                summary.total += 1
                if account_id in done:
                    continue
                done.add(account_id)
                if len(in_flight) >= 2 * max_workers:
                    finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in finished:
                        settled(future)
                in_flight.add(pool.submit(settle, account_id))
            for future in in_flight:
                settled(future)
    finally:
        journal.close()
    return summary
