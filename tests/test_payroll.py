"""The payroll CSV: one row per paid item, exact money, atomic and repeatable."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from airflow_provider_feishu_hire.payroll import COLUMNS, trans_time_iso, write_payroll_csv

RECORDS = [
    {
        "referral_account_id": "7002",
        "external_order_id": "22",
        "trans_time": "1683634459543",
        "withdrawal_details": {
            "point_bonus": 0,
            "cash_bonus": [
                {"currency_type": "CNY", "amount": "0.10"},
                {"currency_type": "USD", "amount": "0.20"},
            ],
        },
    },
    {
        "referral_account_id": "7001",
        "external_order_id": "11",
        "trans_time": "1683634459001",
        "withdrawal_details": {
            "point_bonus": 100,
            "cash_bonus": [{"currency_type": "CNY", "amount": "0.00"}],
        },
    },
]
RUN_ID = "manual__2026-11-25T10:00:00+00:00"


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_rows_are_the_non_zero_items_with_exact_money(tmp_path: Path) -> None:
    path = write_payroll_csv(RECORDS, tmp_path, RUN_ID)

    assert path.parent == tmp_path and path.name == "payroll_manual__2026-11-25T10_00_00_00_00.csv"
    rows = read(path)
    assert list(rows[0]) == list(COLUMNS)
    assert [(r["referral_account_id"], r["bonus_type"], r["currency"], r["amount"]) for r in rows] == [
        ("7001", "points", "", "100"),
        ("7002", "cash", "CNY", "0.10"),
        ("7002", "cash", "USD", "0.20"),
    ]
    assert rows[0]["trans_time"] == "2023-05-09T12:14:19.001+00:00"


def test_re_export_of_the_same_run_writes_identical_bytes(tmp_path: Path) -> None:
    first = write_payroll_csv(RECORDS, tmp_path, RUN_ID).read_bytes()
    second = write_payroll_csv(list(reversed(RECORDS)), tmp_path, RUN_ID).read_bytes()
    assert first == second
    assert sorted(os.listdir(tmp_path)) == ["payroll_manual__2026-11-25T10_00_00_00_00.csv"]  # no temp files left


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_payroll_csv(RECORDS, tmp_path, RUN_ID)
    before = path.read_bytes()

    def disk_full(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)  # the rename, after the rows were written
    with pytest.raises(OSError):
        write_payroll_csv(RECORDS[:1], tmp_path, RUN_ID)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]  # the temporary file is gone too


def test_cash_with_more_than_two_places_is_never_rounded(tmp_path: Path) -> None:
    record = {**RECORDS[0], "withdrawal_details": {"cash_bonus": [{"currency_type": "CNY", "amount": "0.105"}]}}
    (row,) = read(write_payroll_csv([record], tmp_path, RUN_ID))
    assert row["amount"] == "0.105"


def test_empty_output_dir_is_refused() -> None:
    with pytest.raises(ValueError, match="output_dir"):
        write_payroll_csv(RECORDS, "  ", RUN_ID)


def test_trans_time_keeps_milliseconds_in_utc() -> None:
    assert trans_time_iso("1683634459543") == "2023-05-09T12:14:19.543+00:00"
