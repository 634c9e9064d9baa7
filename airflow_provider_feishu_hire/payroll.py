"""The payroll export: withdrawal records in, one CSV per DAG run out.

No Airflow here, so the export can be tested, and reused by other DAGs, on its own.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pendulum

from airflow_provider_feishu_hire.withdrawal import file_safe, format_money

COLUMNS = ("referral_account_id", "external_order_id", "trans_time", "bonus_type", "currency", "amount")


def trans_time_iso(trans_time: str | int) -> str:
    """Feishu's ``trans_time`` (milliseconds since the epoch, as a string) as ISO 8601 in UTC."""
    millis = int(trans_time)
    moment = pendulum.from_timestamp(millis // 1000, tz="UTC").add(microseconds=(millis % 1000) * 1000)
    return moment.isoformat(timespec="milliseconds")


def payroll_rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """One row per non-zero paid item, in a stable order so that re-exports are byte-identical.

    Points are whole numbers; cash keeps its decimal amount exactly (no float on the way,
    at least two places, never rounded).
    """
    rows = []
    for record in records:
        base = {
            "referral_account_id": str(record["referral_account_id"]),
            "external_order_id": str(record["external_order_id"]),
            "trans_time": trans_time_iso(record["trans_time"]),
        }
        details = record.get("withdrawal_details") or {}
        points = int(details.get("point_bonus") or 0)
        if points:
            rows.append({**base, "bonus_type": "points", "currency": "", "amount": str(points)})
        for cash in details.get("cash_bonus") or []:
            amount = Decimal(str(cash["amount"]))
            if amount:
                rows.append(
                    {
                        **base,
                        "bonus_type": "cash",
                        "currency": str(cash["currency_type"]),
                        "amount": format_money(amount),
                    }
                )
    return sorted(rows, key=lambda r: tuple(r[c] for c in COLUMNS))


def payroll_file_name(run_id: str) -> str:
    return f"payroll_{file_safe(run_id)}.csv"


def write_payroll_csv(records: Iterable[Mapping[str, Any]], output_dir: str | os.PathLike[str], run_id: str) -> Path:
    """Write the run's payroll CSV into ``output_dir`` atomically and return its path.

    The rows go to a temporary file beside the target, which then replaces it: a reader
    never sees half a file, and a re-run of the export for the same run rewrites the
    same file with the same content.
    """
    if not str(output_dir).strip():
        raise ValueError("output_dir is empty: name the folder the payroll CSV goes to")
    if not run_id:
        raise ValueError("run_id is empty")
    rows = payroll_rows(records)
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / payroll_file_name(run_id)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
