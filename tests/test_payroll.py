"""The payroll from ledger rows: one row per paid item, exact money, readable distinct names, never fewer rows."""

from __future__ import annotations

import csv
import os
from decimal import Decimal
from pathlib import Path

import pytest

from airflow_provider_feishu_hire.ledger import PAID, REJECTED, REVIEW, SENDING, SKIPPED, LedgerRow
from airflow_provider_feishu_hire.payroll import (
    COLUMNS,
    PayrollError,
    completeness,
    payroll_batch_csv_path,
    payroll_report_csv_path,
    payroll_rows,
    write_payroll_csv,
)
from airflow_provider_feishu_hire.withdrawal import Withdrawal, trans_time_iso

RUN_ID = "scheduled__2026-11-25T10:00:00+00:00"


def paid(account: str, order: str, trans_time: int, points: int, **cash: str) -> LedgerRow:
    amounts = {currency: Decimal(amount) for currency, amount in cash.items()}
    withdrawal = Withdrawal(account, order, trans_time, points, amounts)
    return LedgerRow(order, account, PAID, "payroll", RUN_ID, "withdraw", 1, withdrawal=withdrawal, cash=amounts)


def row(account: str, order: str, status: str) -> LedgerRow:
    return LedgerRow(order, account, status, "payroll", RUN_ID, "withdraw", 1, error_code=1002555, error_msg="no")


ROWS = [
    paid("7002", "22", 1683634459543, 0, CNY="0.10", USD="0.20"),
    paid("7001", "11", 1683634459001, 100, CNY="0.00"),
]


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_rows_are_the_non_zero_items_with_exact_money(tmp_path: Path) -> None:
    path = write_payroll_csv(payroll_rows(ROWS), tmp_path / "p.csv")
    rows = read(path)
    assert list(rows[0]) == list(COLUMNS)
    assert [(r["referral_account_id"], r["bonus_type"], r["currency"], r["amount"]) for r in rows] == [
        ("7001", "points", "", "100"),
        ("7002", "cash", "CNY", "0.10"),
        ("7002", "cash", "USD", "0.20"),
    ]
    assert rows[0]["trans_time"] == "2023-05-09T12:14:19.001+00:00"
    assert {r["run_id"] for r in payroll_rows(ROWS)} == {RUN_ID}  # the table rows name the run that paid


def test_re_export_writes_identical_bytes_and_leaves_no_temp_file(tmp_path: Path) -> None:
    first = write_payroll_csv(payroll_rows(ROWS), tmp_path / "p.csv").read_bytes()
    second = write_payroll_csv(payroll_rows(list(reversed(ROWS))), tmp_path / "p.csv").read_bytes()
    assert first == second
    assert os.listdir(tmp_path) == ["p.csv"]


def test_an_export_with_fewer_rows_never_replaces_a_fuller_one(tmp_path: Path) -> None:
    path = write_payroll_csv(payroll_rows(ROWS), tmp_path / "p.csv")
    before = path.read_bytes()
    with pytest.raises(PayrollError, match="refusing to replace"):
        write_payroll_csv(payroll_rows(ROWS[:1]), path)  # e.g. a header-only export after a failed upstream
    assert path.read_bytes() == before
    more = [*ROWS, paid("7003", "33", 1683634460000, 5)]
    assert len(read(write_payroll_csv(payroll_rows(more), path))) == 4  # a superset replaces it


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_payroll_csv(payroll_rows(ROWS[1:]), tmp_path / "p.csv")
    before = path.read_bytes()

    def disk_full(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)  # the rename, after the rows were written
    with pytest.raises(OSError):
        write_payroll_csv(payroll_rows(ROWS), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


def test_cash_with_more_than_two_places_is_never_rounded(tmp_path: Path) -> None:
    (out,) = read(write_payroll_csv(payroll_rows([paid("7001", "1", 1, 0, CNY="0.105")]), tmp_path / "p.csv"))
    assert out["amount"] == "0.105"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("dag", 1, "2026-12-03T09:11:04.000+00:00"), ("dag", 2, "2026-12-03T09:11:04.000+00:00")),
        (("dag_a", 1, "2026-12-03T09:11:04.000+00:00"), ("dag_b", 1, "2026-12-03T09:11:04.000+00:00")),
        (("a/b", 1, "2026-12-03T09:11:04.000+00:00"), ("a", 1, "2026-12-03T09:11:04.000+00:00")),
    ],
)
def test_distinct_batches_never_share_a_file(a: tuple[str, int, str], b: tuple[str, int, str], tmp_path: Path) -> None:
    first, second = payroll_batch_csv_path(tmp_path, *a), payroll_batch_csv_path(tmp_path, *b)
    assert first != second
    assert tmp_path in first.parents and tmp_path in second.parents


def test_file_names_read_and_sort_by_time_in_utc(tmp_path: Path) -> None:
    names = [
        payroll_batch_csv_path(tmp_path, "payroll", 10, "2026-12-03T17:11:04.000+08:00").name,
        payroll_batch_csv_path(tmp_path, "payroll", 9, "2026-12-03T10:00:00.000+00:00").name,
    ]
    assert names == ["payroll_2026-12-03_091104Z_batch10.csv", "payroll_2026-12-03_100000Z_batch9.csv"]
    assert sorted(names) == names  # by time, not by batch id or a percent-encoded run id
    report = payroll_report_csv_path(tmp_path, "payroll", 1796290373473, 1796290400000)
    assert report.name == "report_2026-12-03_093253Z_to_2026-12-03_093320Z.csv"


def test_empty_output_dir_is_refused() -> None:
    with pytest.raises(ValueError, match="output_dir"):
        payroll_batch_csv_path("  ", "dag", 1, "2026-12-03T09:11:04.000+00:00")


def test_completeness_names_unknown_outcomes_and_who_was_not_paid() -> None:
    rows = [*ROWS, row("7009", "99", REJECTED), row("7005", "55", SKIPPED)]
    check = completeness(rows, ["7001", "7002", "7005", "7009", "7010"])
    assert check.open == []
    assert set(check.not_paid) == {"7009", "7010"}
    assert "no withdrawal in the ledger" in check.not_paid["7010"]
    # A refusal the ledger holds is named even when nobody listed the account (an event's account).
    assert set(completeness(rows).not_paid) == {"7009"}

    blocked = completeness([*rows, row("7011", "77", SENDING), row("7012", "88", REVIEW)])
    assert [r.referral_account_id for r in blocked.open] == ["7011", "7012"]
    assert blocked.open_message().startswith("2 withdrawals without a known outcome")


def test_trans_time_keeps_milliseconds_in_utc() -> None:
    assert trans_time_iso("1683634459543") == "2023-05-09T12:14:19.543+00:00"
