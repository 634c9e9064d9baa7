"""The batch core against the sandbox: everyone paid once, failures collected, resumable after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from airflow_provider_feishu_hire.batch import paid_records, read_journal, withdraw_batch
from airflow_provider_feishu_hire.client import FeishuClient, RateLimiter, RetryPolicy
from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_ID, DEFAULT_APP_SECRET, Account, FeishuSandbox
from airflow_provider_feishu_hire.withdrawal import check_referral_account_ids, derive_external_order_id
from tests.conftest import FAST_RETRY


def accounts(n: int, start: int = 0) -> list[Account]:
    return [
        Account(f"71{i:017d}", point_bonus=i % 7, cash_bonus={"CNY": Decimal(i % 5) + Decimal("0.01")})
        for i in range(start, start + n)
    ]


def order_id(account_id: str) -> str:
    return derive_external_order_id(
        dag_id="batch", run_id="run-1", task_id="withdraw", map_index=-1, referral_account_id=account_id
    )


def batch(client: FeishuClient, ids: list[str], journal: Path, **options: object):  # type: ignore[no-untyped-def]
    return withdraw_batch(
        client,
        ids,
        bonus_types=[1, 2],
        order_id_for=order_id,
        results_path=journal,
        **options,  # type: ignore[arg-type]
    )


def client_for(sandbox: FeishuSandbox, **options: object) -> FeishuClient:
    options.setdefault("retry", FAST_RETRY)
    return FeishuClient(DEFAULT_APP_ID, DEFAULT_APP_SECRET, sandbox.url, **options)  # type: ignore[arg-type]


def test_batch_pays_everyone_once_and_collects_failures(tmp_path: Path) -> None:
    good = accounts(40)
    deactivated = Account("7200000000000000001", point_bonus=5, enabled=False)
    ids = [a.account_id for a in good] + [deactivated.account_id, "7299999999999999999"]
    journal = tmp_path / "journal.jsonl"
    with FeishuSandbox([*good, deactivated], rate_limits=False) as sandbox, client_for(sandbox) as client:
        summary = batch(client, ids, journal, max_workers=4)
        ledger = sandbox.state()["ledger"]

    assert sorted(e["referral_account_id"] for e in ledger) == sorted(a.account_id for a in good)
    assert (summary.total, summary.paid, summary.failed_permanent, summary.failed_transient) == (42, 40, 2, 0)
    assert summary.point_bonus == sum(a.point_bonus for a in good)
    assert summary.cash_bonus == {"CNY": sum((a.cash_bonus["CNY"] for a in good), Decimal(0))}
    assert {f["code"] for f in summary.failures} == {1002555, 1002553}
    assert len(sandbox.issued_tokens) == 1  # one token for the whole batch
    records = list(paid_records(journal))
    assert len(records) == 40 and all(r["external_order_id"] == order_id(r["referral_account_id"]) for r in records)
    assert json.dumps(summary.as_xcom())  # small and JSON-safe


def test_balance_check_skips_empty_accounts_without_spending_withdraw_quota(tmp_path: Path) -> None:
    full = accounts(5)
    empty = [Account(f"73{i:017d}") for i in range(5)]
    with FeishuSandbox([*full, *empty], rate_limits=False) as sandbox, client_for(sandbox) as client:
        summary = batch(client, [a.account_id for a in full + empty], tmp_path / "j.jsonl", check_balances=True)
        assert sandbox.requests["withdraw"] == 5 and sandbox.requests["assets"] == 10
    assert (summary.paid, summary.skipped) == (5, 5)


def test_an_account_whose_answer_was_lost_is_never_skipped_on_resume(tmp_path: Path) -> None:
    """Feishu paid, the answer was lost, the balance is now zero: the retry must still record the payment."""
    (account,) = accounts(1, start=3)
    journal = tmp_path / "j.jsonl"
    with FeishuSandbox([account], rate_limits=False) as sandbox:
        sandbox.inject("drop_after_commit")
        with client_for(sandbox, retry=RetryPolicy(max_attempts=1)) as client:
            first = batch(client, [account.account_id], journal, check_balances=True)
        assert first.failed_transient == 1 and sandbox.state()["accounts"][account.account_id]["point_bonus"] == 0

        with client_for(sandbox) as client:
            second = batch(client, [account.account_id], journal, check_balances=True)
        assert len(sandbox.state()["ledger"]) == 1
    assert (second.paid, second.skipped) == (1, 0)
    (record,) = paid_records(journal)
    assert record["withdrawal_details"]["point_bonus"] == account.point_bonus


CHILD = """
import sys
from pathlib import Path
from airflow_provider_feishu_hire.batch import withdraw_batch
from airflow_provider_feishu_hire.client import FeishuClient, RateLimiter
from airflow_provider_feishu_hire.withdrawal import derive_external_order_id
url, journal, ids = sys.argv[1], Path(sys.argv[2]), sys.argv[3].split(",")
client = FeishuClient("{app_id}", "{secret}", url, withdraw_limiter=RateLimiter(40, 1.0))
withdraw_batch(client, ids, bonus_types=[1, 2], results_path=journal, max_workers=2,
    order_id_for=lambda a: derive_external_order_id(dag_id="batch", run_id="run-1", task_id="withdraw",
                                                     map_index=-1, referral_account_id=a))
"""


def test_a_batch_killed_halfway_and_retried_pays_every_account_exactly_once(tmp_path: Path) -> None:
    everyone = accounts(60)
    ids = [a.account_id for a in everyone]
    journal = tmp_path / "j.jsonl"
    with FeishuSandbox(everyone, rate_limits=False) as sandbox:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD.format(app_id=DEFAULT_APP_ID, secret=DEFAULT_APP_SECRET),
                sandbox.url,
                str(journal),
                ",".join(ids),
            ],
        )
        deadline = time.monotonic() + 30
        while sum(1 for line in read_journal(journal) if line["status"] == "paid") < 20:
            assert child.poll() is None and time.monotonic() < deadline, "the batch ended before it was killed"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)  # a worker dies mid-batch, requests in flight
        child.wait()
        paid_before = len(sandbox.state()["ledger"])
        assert 20 <= paid_before < 60

        with client_for(sandbox) as client:
            summary = batch(client, ids, journal)
        ledger = sandbox.state()["ledger"]

    assert sorted(e["referral_account_id"] for e in ledger) == sorted(ids)  # exactly once each
    assert summary.paid == 60 and summary.carried_over >= 20
    assert summary.cash_bonus["CNY"] == sum((a.cash_bonus["CNY"] for a in everyone), Decimal(0))
    assert sorted(r["referral_account_id"] for r in paid_records(journal)) == sorted(ids)


def test_a_client_paced_at_the_servers_limit_is_never_rate_limited(tmp_path: Path) -> None:
    everyone = accounts(25)
    with (
        FeishuSandbox(everyone, withdraw_limit=(10, 1.0)) as sandbox,  # a sliding window: the strictest
        client_for(sandbox, withdraw_limiter=RateLimiter(10, 1.0)) as client,
    ):
        summary = batch(client, [a.account_id for a in everyone], tmp_path / "j.jsonl", max_workers=4)
        assert sandbox.requests["rate_limited"] == 0
    assert summary.paid == 25


def test_the_sandbox_enforces_its_limit_on_an_unpaced_client(tmp_path: Path) -> None:
    everyone = accounts(12)
    with FeishuSandbox(everyone, withdraw_limit=(5, 1.0)) as sandbox, client_for(sandbox) as client:
        summary = batch(client, [a.account_id for a in everyone], tmp_path / "j.jsonl", max_workers=4)
        assert sandbox.requests["rate_limited"] > 0  # and the client waited out every 429
    assert summary.paid == 12


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["7001", 7002], ["7001", "7002"]),
        ('["7001", "7002"]', ["7001", "7002"]),
        ("['7001', '7002']", ["7001", "7002"]),
        ("7001, 7002\n7003", ["7001", "7002", "7003"]),
    ],
)
def test_account_id_lists_from_templates_and_xcom(value: object, expected: list[str]) -> None:
    assert check_referral_account_ids(value) == expected


def test_a_bad_id_anywhere_in_the_batch_is_named_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match=r"referral_account_ids\[2\]"):
        check_referral_account_ids(["7001", "7002", "70/03"])


def test_a_half_written_last_line_does_not_corrupt_the_journal(tmp_path: Path) -> None:
    everyone = accounts(3)
    journal = tmp_path / "j.jsonl"
    journal.write_text('{"referral_account_id": "71000000000000000', encoding="utf-8")  # killed mid-write
    with FeishuSandbox(everyone, rate_limits=False) as sandbox, client_for(sandbox) as client:
        summary = batch(client, [a.account_id for a in everyone], journal)
    assert summary.paid == 3
    assert len(list(paid_records(journal))) == 3


def test_a_retry_that_lost_the_journal_skips_no_zero_balance(tmp_path: Path) -> None:
    """Try 1 paid on another worker whose disk is gone: a zero balance now may be our own payment."""
    (account,) = accounts(1, start=4)
    with FeishuSandbox([account], rate_limits=False) as sandbox:
        with client_for(sandbox) as client:
            batch(client, [account.account_id], tmp_path / "other-worker.jsonl")
        journal = tmp_path / "this-worker.jsonl"
        with client_for(sandbox) as client:
            summary = batch(client, [account.account_id], journal, check_balances=True, earlier_tries=True)
        assert len(sandbox.state()["ledger"]) == 1
    assert (summary.paid, summary.skipped) == (1, 0)
    (record,) = paid_records(journal)
    assert record["withdrawal_details"]["point_bonus"] == account.point_bonus
