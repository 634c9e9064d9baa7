"""Payroll from the ledger: paid withdrawals in, one row per paid item out, as a CSV and as table rows.

No Airflow here. The ledger is the only source: what an operator pushed to XCom or a
worker wrote to its disk plays no part, so a retry, a clear or another worker cannot
make payroll disagree with what Feishu paid.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

from airflow_provider_feishu_hire.ledger import OPEN_STATUSES, PAID, SENDING, SKIPPED, LedgerRow
from airflow_provider_feishu_hire.withdrawal import format_money, plural, trans_time_iso

COLUMNS = (
    "referral_account_id",
    "external_order_id",
    "trans_time",
    "bonus_type",
    "currency",
    "amount",
    "payroll_batch_id",
)
TABLE_COLUMNS = (*COLUMNS, "dag_id", "run_id")


class PayrollError(Exception):
    """The payroll cannot be written as asked; nothing was changed."""


def payroll_rows(rows: Iterable[LedgerRow]) -> list[dict[str, str]]:
    """One row per non-zero paid item of the paid ledger rows, in a stable order (re-exports are identical).

    Points are whole numbers; cash keeps its decimal amount exactly (at least two places,
    never rounded). Each row names the DAG run whose withdrawal paid it, and its payroll batch.
    """
    out = []
    for row in rows:
        paid = row.withdrawal
        if paid is None:
            continue
        base = {
            "referral_account_id": paid.referral_account_id,
            "external_order_id": paid.external_order_id,
            "trans_time": trans_time_iso(paid.trans_time),
            "dag_id": row.dag_id,
            "run_id": row.run_id,
            "payroll_batch_id": "" if row.payroll_batch_id is None else str(row.payroll_batch_id),
        }
        for bonus_type, currency, amount in paid.payroll_items():
            out.append({**base, "bonus_type": bonus_type, "currency": currency, "amount": amount})
    return sorted(out, key=lambda r: tuple(r[c] for c in TABLE_COLUMNS))


def payroll_totals(table: Iterable[dict[str, str]]) -> dict[str, Any]:
    """What a payroll adds up to: accounts, rows, points, and cash per currency as decimal strings."""
    rows = list(table)
    points = sum(int(r["amount"]) for r in rows if r["bonus_type"] == "points")
    cash: dict[str, Decimal] = {}
    for r in rows:
        if r["bonus_type"] == "cash":
            cash[r["currency"]] = cash.get(r["currency"], Decimal(0)) + Decimal(r["amount"])
    return {
        "accounts": len({r["referral_account_id"] for r in rows}),
        "rows": len(rows),
        "point_bonus": points,
        "cash_bonus": {currency: format_money(amount) for currency, amount in sorted(cash.items())},
    }


@dataclass(frozen=True)
class Completeness:
    """Whether the ledger settles every withdrawal of a payroll, and who was not paid."""

    open: list[LedgerRow]  # money may have moved, but payroll cannot show it yet
    not_paid: dict[str, str]  # account id -> why (refused, or no withdrawal on record)

    @property
    def resendable(self) -> bool:
        """Whether some open row is settled by sending its order id again (the rest need a person)."""
        return any(row.status == SENDING for row in self.open)

    def open_message(self) -> str:
        head = f"{plural(len(self.open), 'withdrawal')} without a known outcome, so no payroll was written"
        return f"{head}: " + "; ".join(row.describe_problem() for row in self.open)


def completeness(rows: Sequence[LedgerRow], expected_accounts: Iterable[str] = ()) -> Completeness:
    """Who a run did not pay: open rows (outcome unknown), refused accounts, and expected accounts without a row.

    Every account a payout run touches ends in the ledger with an outcome, refusals of its
    balance read included, so a refused account is named even when nobody listed it.
    """
    open_rows = [row for row in rows if row.status in OPEN_STATUSES]
    settled = {row.referral_account_id for row in rows if row.status in (PAID, SKIPPED)}
    unsettled = [row for row in rows if row.status not in (PAID, SKIPPED)]
    reasons = {row.referral_account_id: row.describe_problem() for row in unsettled}
    refused = [row.referral_account_id for row in unsettled if row.status not in OPEN_STATUSES]
    not_paid = {
        account: reasons.get(account, f"account {account} has no withdrawal in the ledger")
        for account in dict.fromkeys([*refused, *expected_accounts])
        if account not in settled and account not in {row.referral_account_id for row in open_rows}
    }
    return Completeness(open_rows, not_paid)


def payroll_batch_csv_path(output_dir: str | os.PathLike[str], dag_id: str, batch_id: int, created_at: str) -> Path:
    """``<output_dir>/<dag_id>/payroll_<created, UTC>_batch<id>.csv``: a person reads and sorts them by time."""
    stamp = datetime.fromisoformat(created_at).astimezone(timezone.utc).strftime("%Y-%m-%d_%H%M%S")
    return _folder(output_dir, dag_id) / f"payroll_{stamp}Z_batch{batch_id}.csv"


def payroll_report_csv_path(output_dir: str | os.PathLike[str], dag_id: str, start: int, end: int) -> Path:
    """``<output_dir>/<dag_id>/report_<start>_to_<end>.csv`` (UTC) for a ``trans_time`` window: not a batch."""

    def stamp(millis: int) -> str:
        return trans_time_iso(millis)[:19].replace(":", "").replace("T", "_") + "Z"

    return _folder(output_dir, dag_id) / f"report_{stamp(start)}_to_{stamp(end)}.csv"


def _folder(output_dir: str | os.PathLike[str], dag_id: str) -> Path:
    if not str(output_dir).strip():
        raise ValueError("output_dir is empty: name the folder the payroll CSV goes to")
    return Path(output_dir) / quote(dag_id, safe="")


def write_payroll_csv(rows: Sequence[dict[str, str]], path: Path) -> Path:
    """Write the rows to ``path`` atomically; refuse to replace an existing export with fewer rows.

    A batch never changes and a report's window only gains late payments, so a correct
    re-export is always a superset of the last one: a file that holds a row the new export
    lacks means something is wrong (another ledger, a changed DAG), and the old file is
    kept for a person to see.
    """
    new = {tuple(row[c] for c in COLUMNS) for row in rows}
    if path.exists():
        with path.open(newline="", encoding="utf-8") as handle:
            old = {tuple(row[c] for c in COLUMNS) for row in csv.DictReader(handle)}
        lost = old - new
        if lost:
            account, order = next(iter(sorted(lost)))[:2]
            raise PayrollError(
                f"refusing to replace {path}: it holds {plural(len(lost), 'row')} the ledger no longer gives "
                f"(first: account {account}, order {order}); was the ledger connection changed?"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
