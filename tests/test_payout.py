"""Withdrawals through the ledger against the sandbox over HTTP, on SQLite and PostgreSQL.

Every scenario ends with the same invariant, checked against the sandbox's own ledger:
every withdrawal that moved money appears in payroll exactly once, under the account it
was paid to, to the cent.
"""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from airflow_provider_feishu_hire.client import FeishuClient, RetryPolicy
from airflow_provider_feishu_hire.ledger import PAID, REJECTED, REVIEW, SENDING, Intent, Ledger, OrderIdConflict
from airflow_provider_feishu_hire.pace import RateLimiter, SharedPace
from airflow_provider_feishu_hire.payout import CARRIED_OVER, withdraw_account, withdraw_batch
from airflow_provider_feishu_hire.payroll import completeness
from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_ID, DEFAULT_APP_SECRET, Account, FeishuSandbox
from airflow_provider_feishu_hire.withdrawal import derive_external_order_id
from tests.conftest import FAST_RETRY, ROOT, assert_paid_exactly_once, ledger_payroll, ledger_sql

pytestmark = pytest.mark.lowest  # also run on the lowest supported Airflow (Makefile: pytest-lowest)

RUN = {"dag_id": "payroll", "run_id": "scheduled__2026-11-01T00:00:00+00:00", "task_id": "withdraw"}
THE_RUN = {"dag_id": RUN["dag_id"], "run_id": RUN["run_id"]}


def accounts(n: int, start: int = 0) -> list[Account]:
    return [
        Account(f"71{i:017d}", point_bonus=i % 7, cash_bonus={"CNY": Decimal(i % 5) + Decimal("0.01")})
        for i in range(start, start + n)
    ]


def intent(account_id: str, order_id: str | None = None, try_number: int = 1) -> Intent:
    return Intent(
        external_order_id=order_id or derive_external_order_id(**RUN, referral_account_id=account_id),
        referral_account_id=account_id,
        withdraw_bonus_type=(1, 2),
        app_id=DEFAULT_APP_ID,
        try_number=try_number,
        **RUN,
    )


def client_for(sandbox: FeishuSandbox, **options: object) -> FeishuClient:
    options.setdefault("retry", FAST_RETRY)
    return FeishuClient(DEFAULT_APP_ID, DEFAULT_APP_SECRET, sandbox.url, **options)  # type: ignore[arg-type]


def batch(client: FeishuClient, ledger: Ledger, ids: list[str], **options: object):  # type: ignore[no-untyped-def]
    return withdraw_batch(client, ledger, ids, intent_for=intent, **options)  # type: ignore[arg-type]


def other_worker(ledger: Ledger) -> Ledger:
    """The same database seen from another process or machine: a separate Ledger with its own connections."""
    return Ledger(ledger._connect, ledger.dialect)


def test_batch_pays_everyone_once_and_collects_failures(ledger: Ledger) -> None:
    good = accounts(30)
    deactivated = Account("7200000000000000001", point_bonus=5, enabled=False)
    ids = [a.account_id for a in good] + [deactivated.account_id, "7299999999999999999"]
    with FeishuSandbox([*good, deactivated], rate_limits=False) as sandbox, client_for(sandbox) as client:
        summary = batch(client, ledger, ids + ids[:3], max_workers=4)  # three listed twice
        assert len(sandbox.issued_tokens) == 1  # one token for the whole batch
        assert_paid_exactly_once(ledger, sandbox)
    assert (summary.total, summary.paid, summary.rejected, summary.open) == (32, 30, 2, 0)
    assert summary.point_bonus == sum(a.point_bonus for a in good)
    assert summary.cash_bonus == {"CNY": sum((a.cash_bonus["CNY"] for a in good), Decimal(0))}
    assert {p["code"] for p in summary.problems} == {1002555, 1002553}
    statuses = {row.referral_account_id: row.status for row in ledger.rows(**THE_RUN)}
    assert statuses[deactivated.account_id] == REJECTED and statuses["7299999999999999999"] == REJECTED


def test_balance_check_skips_empty_accounts_without_spending_withdraw_quota(ledger: Ledger) -> None:
    full, empty = accounts(4), [Account(f"73{i:017d}") for i in range(4)]
    with FeishuSandbox([*full, *empty], rate_limits=False) as sandbox, client_for(sandbox) as client:
        summary = batch(client, ledger, [a.account_id for a in full + empty], check_balances=True)
        assert sandbox.requests["withdraw"] == 4 and sandbox.requests["assets"] == 8
        assert_paid_exactly_once(ledger, sandbox)
    assert (summary.paid, summary.skipped) == (4, 4)


def test_a_balance_check_skips_an_empty_deactivated_account_and_names_one_still_owed_money(ledger: Ledger) -> None:
    """A sweep reads every known account, leavers included: an empty one is nothing owed; one with money is named."""
    leaver = Account("7200000000000000002", enabled=False)
    owed = Account("7200000000000000003", point_bonus=5, enabled=False)
    with FeishuSandbox([leaver, owed], rate_limits=False) as sandbox, client_for(sandbox) as client:
        summary = batch(client, ledger, [leaver.account_id, owed.account_id], check_balances=True)
        assert sandbox.requests["withdraw"] == 1  # only the account that holds money was sent, and refused
    assert (summary.skipped, summary.rejected) == (1, 1)
    statuses = {row.referral_account_id: row.status for row in ledger.rows(**THE_RUN)}
    assert statuses == {leaver.account_id: "skipped", owed.account_id: REJECTED}


def test_an_account_whose_answer_was_lost_is_never_skipped_by_a_retry_on_another_worker(ledger: Ledger) -> None:
    """Feishu paid, the answer was lost, the balance is now zero: the retry must still record the payment."""
    (account,) = accounts(1, start=3)
    with FeishuSandbox([account], rate_limits=False) as sandbox:
        sandbox.inject("drop_after_commit")
        with client_for(sandbox, retry=RetryPolicy(max_attempts=1)) as client:
            first = batch(client, ledger, [account.account_id], check_balances=True)
        assert first.open == 1 and sandbox.state()["accounts"][account.account_id]["point_bonus"] == 0

        with other_worker(ledger) as elsewhere, client_for(sandbox) as client:
            second = batch(client, elsewhere, [account.account_id], check_balances=True)
        assert (second.paid, second.skipped) == (1, 0)
        assert sandbox.requests["withdraw"] == 2  # the same order id again: Feishu replayed
        assert_paid_exactly_once(ledger, sandbox)


def test_a_reordered_grown_list_replays_instead_of_withdrawing_anew(ledger: Ledger) -> None:
    a, b, n = accounts(3, start=11)
    with FeishuSandbox([a, b, n], rate_limits=False) as sandbox, client_for(sandbox) as client:
        batch(client, ledger, [a.account_id, b.account_id])
        sandbox.credit(a.account_id, point_bonus=7)  # a bonus confirmed after the first payout
        # The run is cleared and the upstream query comes back in another order, with a newcomer.
        for account_id in [n.account_id, b.account_id, a.account_id]:
            withdraw_account(client, ledger, intent(account_id, try_number=2))
        paid = {entry["referral_account_id"] for entry in sandbox.state()["ledger"]}
        assert paid == {a.account_id, b.account_id, n.account_id}
        assert len(sandbox.state()["ledger"]) == 3  # A's original withdrawal replayed, not A emptied again
        assert_paid_exactly_once(ledger, sandbox)
        lines = ledger_payroll(ledger, **THE_RUN)
        assert (a.account_id, intent(a.account_id).external_order_id, "cash", "CNY", "1.01") in lines


def test_an_order_id_reused_for_another_account_is_refused_before_sending(ledger: Ledger) -> None:
    a, b = accounts(2, start=21)
    with FeishuSandbox([a, b], rate_limits=False) as sandbox, client_for(sandbox) as client:
        withdraw_account(client, ledger, intent(a.account_id, order_id="6942778198054125570"))
        sent = sandbox.requests["withdraw"]
        with pytest.raises(OrderIdConflict, match=a.account_id):
            withdraw_account(client, ledger, intent(b.account_id, order_id="6942778198054125570"))
        assert sandbox.requests["withdraw"] == sent  # nothing reached Feishu
        assert sandbox.state()["accounts"][b.account_id]["point_bonus"] == b.point_bonus  # B keeps its money
        assert_paid_exactly_once(ledger, sandbox)


@pytest.mark.parametrize("variant", ["null_amount", "text_amount", "fractional_points"])
def test_an_answer_that_moved_money_but_does_not_parse_is_kept_raw_for_review(ledger: Ledger, variant: str) -> None:
    (account,) = accounts(1, start=2)
    with FeishuSandbox([account], rate_limits=False) as sandbox, client_for(sandbox) as client:
        sandbox.inject("malformed_answer", variant=variant)
        first = withdraw_account(client, ledger, intent(account.account_id))
        assert first.status == REVIEW and first.external_order_id in first.message
        again = withdraw_account(client, ledger, intent(account.account_id, try_number=2))
        assert again.status == REVIEW
        assert sandbox.requests["withdraw"] == 1  # never replayed into a different result
    row = ledger.get(first.external_order_id)
    assert row is not None and row.status == REVIEW and row.raw_answer
    assert [r.external_order_id for r in completeness(ledger.rows(**THE_RUN)).open] == [first.external_order_id]


@pytest.mark.parametrize("empty_withdrawal", ["zeros", "error"])
def test_an_empty_account_is_never_a_payment_under_either_reading(ledger: Ledger, empty_withdrawal: str) -> None:
    full, empty = Account("7400000000000000001", point_bonus=3), Account("7400000000000000002")
    with (
        FeishuSandbox([full, empty], rate_limits=False, empty_withdrawal=empty_withdrawal) as sandbox,
        client_for(sandbox) as client,
    ):
        outcomes = {a.account_id: withdraw_account(client, ledger, intent(a.account_id)) for a in (full, empty)}
        assert outcomes[full.account_id].status == PAID
        assert outcomes[empty.account_id].status == (PAID if empty_withdrawal == "zeros" else REJECTED)
        # A bonus confirmed later is paid by the next run (a new order id), under either reading.
        sandbox.credit(empty.account_id, cash_bonus={"CNY": Decimal("2.50")})
        later = Intent(**{**intent(empty.account_id).__dict__, "run_id": "next", "external_order_id": "1" * 19})
        assert withdraw_account(client, ledger, later).status == PAID
        assert_paid_exactly_once(ledger, sandbox)


@pytest.mark.parametrize("replay", ["original", "error"])
def test_a_lost_answer_then_a_deactivation_is_never_recorded_as_nothing_paid(ledger: Ledger, replay: str) -> None:
    (account,) = accounts(1, start=4)
    with FeishuSandbox([account], rate_limits=False, replay_after_deactivate=replay) as sandbox:
        sandbox.inject("drop_after_commit")
        with client_for(sandbox, retry=RetryPolicy(max_attempts=1)) as client:
            assert withdraw_account(client, ledger, intent(account.account_id)).status == SENDING
        sandbox.deactivate(account.account_id)  # the referrer left before the retry
        with client_for(sandbox) as client:
            retry = withdraw_account(client, ledger, intent(account.account_id, try_number=2))
        if replay == "original":
            assert retry.status == PAID
            assert_paid_exactly_once(ledger, sandbox)
        else:
            # Feishu moved money but now refuses to say how much: a person must look, and
            # the payroll export refuses to pretend the run is complete.
            assert retry.status == REVIEW
            assert [r.status for r in completeness(ledger.rows(**THE_RUN)).open] == [REVIEW]


def test_a_fresh_refusal_is_rejected_not_held_for_review(ledger: Ledger) -> None:
    with FeishuSandbox([Account("7500000000000000001", point_bonus=1, enabled=False)], rate_limits=False) as sandbox:
        with client_for(sandbox) as client:
            outcome = withdraw_account(client, ledger, intent("7500000000000000001"))
        assert outcome.status == REJECTED and outcome.code == 1002555
        assert completeness(ledger.rows(**THE_RUN), ["7500000000000000001"]).not_paid


CHILD = """
import sqlite3, sys
from airflow_provider_feishu_hire.client import FeishuClient
from airflow_provider_feishu_hire.ledger import Intent, Ledger
from airflow_provider_feishu_hire.pace import RateLimiter, SharedPace
from airflow_provider_feishu_hire.payout import withdraw_batch
from airflow_provider_feishu_hire.withdrawal import derive_external_order_id
from tests.conftest import connect_to
url, dialect, where, ids, per_second = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(","), float(sys.argv[5])
run = {run!r}
ledger = Ledger(connect_to(dialect, where), dialect)
shared = sys.argv[6] == "shared"
pace = lambda key, limit: SharedPace(ledger.reserve_wait, "{app_id}:" + key, limit, 1.0) if shared \\
    else RateLimiter(limit, 1.0)
client = FeishuClient("{app_id}", "{secret}", url, withdraw_limiter=pace("withdraw", per_second),
                      assets_limiter=pace("get_account_assets", 8))
intent = lambda a: Intent(derive_external_order_id(**run, referral_account_id=a), a, (1, 2), "{app_id}", **run)
summary = withdraw_batch(client, ledger, ids, intent_for=intent, max_workers=2, check_balances=True,
                         lease_check_seconds=0.2)
print(f"paid={{summary.paid}} superseded={{summary.superseded}}")
"""


def start_worker(  # type: ignore[no-untyped-def]
    sandbox: FeishuSandbox, ledger: Ledger, ids: list[str], home: Path, per_second: float, pace: str = "local"
):
    """A batch in its own process, with its own temp folder (as if on another machine), sharing only the ledger."""
    home.mkdir()
    where = ledger_location(ledger)
    code = CHILD.format(run=RUN, app_id=DEFAULT_APP_ID, secret=DEFAULT_APP_SECRET)
    env = {**os.environ, "TMPDIR": str(home), "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-c", code, sandbox.url, ledger.dialect, where, ",".join(ids), str(per_second), pace]
    return subprocess.Popen(args, cwd=home, env=env, stdout=subprocess.PIPE, text=True)


def ledger_location(ledger: Ledger) -> str:
    conn = ledger._connection()
    if ledger.dialect == "sqlite":
        return str(conn.execute("PRAGMA database_list").fetchone()[2])
    if ledger.dialect == "mysql":
        user, db = (v.decode() if isinstance(v, bytes) else v for v in (conn.user, conn.db))
        return f"mysql://{user}@{conn.host}:{conn.port}/{db}"
    info = conn.info
    return f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"


def paid_in_sandbox(sandbox: FeishuSandbox) -> int:
    return len(sandbox.state()["ledger"])


def test_a_batch_killed_on_one_worker_is_resumed_exactly_once_on_another(ledger: Ledger, tmp_path: Path) -> None:
    everyone = accounts(40)
    ids = [a.account_id for a in everyone]
    with FeishuSandbox(everyone, rate_limits=False) as sandbox:
        child = start_worker(sandbox, ledger, ids, tmp_path / "worker-x", per_second=40)
        deadline = time.monotonic() + 60
        while paid_in_sandbox(sandbox) < 12:
            assert child.poll() is None and time.monotonic() < deadline, "the batch ended before it was killed"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)  # the worker dies mid-batch, requests in flight
        child.wait()
        assert 12 <= paid_in_sandbox(sandbox) < 40

        # Try 2 runs on worker Y: nothing of X's disk, only the shared ledger; balances are checked.
        with other_worker(ledger) as on_y, client_for(sandbox) as client:
            summary = batch(client, on_y, ids, check_balances=True)
        assert summary.paid == 40 and summary.carried_over >= 1 and summary.skipped == 0
        assert_paid_exactly_once(ledger, sandbox)


def test_a_zombie_try_beside_its_retry_loses_and_doubles_nothing(ledger: Ledger, tmp_path: Path) -> None:
    everyone = accounts(30, start=100)
    ids = [a.account_id for a in everyone]
    with FeishuSandbox(everyone, rate_limits=False) as sandbox:
        zombie = start_worker(sandbox, ledger, ids, tmp_path / "zombie", per_second=60)
        while paid_in_sandbox(sandbox) < 3 and zombie.poll() is None:
            time.sleep(0.01)
        with other_worker(ledger) as retry_ledger, client_for(sandbox, withdraw_limiter=RateLimiter(60, 1.0)) as client:
            summary = batch(client, retry_ledger, list(reversed(ids)), check_balances=True)
        assert zombie.wait(timeout=60) == 0
        assert summary.open == 0 and summary.rejected == 0
        assert_paid_exactly_once(ledger, sandbox)
        assert {row.status for row in ledger.rows(**THE_RUN)} == {PAID}


def test_threads_of_two_tries_racing_on_one_account_record_one_payment(ledger: Ledger) -> None:
    (account,) = accounts(1, start=9)
    with FeishuSandbox([account], rate_limits=False) as sandbox, client_for(sandbox) as client:
        results = []

        def try_(n: int) -> None:
            with other_worker(ledger) as mine:
                results.append(withdraw_account(client, mine, intent(account.account_id, try_number=n)).status)

        threads = [threading.Thread(target=try_, args=(n,)) for n in range(1, 5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert set(results) <= {PAID, CARRIED_OVER} and len(results) == 4
        assert_paid_exactly_once(ledger, sandbox)


def test_a_client_paced_at_the_servers_limit_is_never_rate_limited(ledger: Ledger) -> None:
    everyone = accounts(25)
    with (
        # A sliding window, the strictest reading; the pace leaves 10% for this shared, noisy machine's jitter.
        FeishuSandbox(everyone, withdraw_limit=(10, 1.0)) as sandbox,
        client_for(sandbox, withdraw_limiter=RateLimiter(9, 1.0)) as client,
    ):
        summary = batch(client, ledger, [a.account_id for a in everyone], max_workers=4)
        assert sandbox.requests["rate_limited"] == 0
    assert summary.paid == 25


def test_the_sandbox_enforces_its_limit_on_an_unpaced_client(tmp_path: Path) -> None:
    everyone = accounts(12)
    path = tmp_path / "ledger.db"
    with Ledger(lambda: sqlite3.connect(path, check_same_thread=False, isolation_level=None), "sqlite") as ledger:
        ledger.migrate()
        with FeishuSandbox(everyone, withdraw_limit=(5, 1.0)) as sandbox, client_for(sandbox) as client:
            summary = batch(client, ledger, [a.account_id for a in everyone], max_workers=4)
            assert sandbox.requests["rate_limited"] > 0  # and the client waited out every 429
            assert_paid_exactly_once(ledger, sandbox)
    assert summary.paid == 12


@pytest.mark.parametrize("pace", ["shared", "local"])
def test_one_pace_shared_through_the_ledger_keeps_two_workers_within_feishus_limit(
    ledger: Ledger, tmp_path: Path, pace: str
) -> None:
    """Two workers each paced at the limit: alone they are fine, together only a shared pace stays under it."""
    everyone = accounts(24, start=300)
    ids = [a.account_id for a in everyone]
    # A sliding window, the strictest reading; each worker alone is paced 10% under it (this machine is noisy).
    with FeishuSandbox(everyone, withdraw_limit=(10, 1.0)) as sandbox:
        workers = [
            start_worker(sandbox, ledger, ids[:12], tmp_path / "x", per_second=9, pace=pace),
            start_worker(sandbox, ledger, ids[12:], tmp_path / "y", per_second=9, pace=pace),
        ]
        assert [worker.wait(timeout=120) for worker in workers] == [0, 0]
        if pace == "shared":
            assert sandbox.requests["rate_limited"] == 0
        else:
            assert sandbox.requests["rate_limited"] > 0  # the sandbox notices; the client's retries absorb it
        assert_paid_exactly_once(ledger, sandbox)


def test_the_shared_pace_hands_out_slots_an_interval_apart(ledger: Ledger) -> None:
    """Measured by the ledger's own record of the next slot (its clock), not this busy machine's scheduling."""
    pace = SharedPace(ledger.reserve_wait, "cli_app:withdraw", limit=50, period=1.0)
    next_slots = []
    for _ in range(20):
        ledger.reserve_wait(pace.pace_key, pace.interval)
        ((next_slot,),) = ledger_sql(ledger, "SELECT next_slot FROM feishu_hire_pace WHERE pace_key = ?", pace.pace_key)
        next_slots.append(float(next_slot))
    gaps = [b - a for a, b in itertools.pairwise(next_slots)]
    assert min(gaps) >= pace.interval - 1e-6  # epoch seconds in a double: a few hundred ns of rounding


def test_a_worker_with_a_skewed_clock_does_not_stall_the_others(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18: slots were wall-clock times from each worker; one an hour ahead made every other wait an hour."""
    interval = 0.1
    if ledger.dialect == "postgresql":  # PostgreSQL's clock decides: a worker's own clock plays no part
        with monkeypatch.context() as skewed:
            skewed.setattr(time, "time", lambda: 1e10)  # this worker's clock is centuries ahead
            assert ledger.reserve_wait("cli_app:withdraw", interval) <= interval
    else:  # one machine, one clock; a slot written by a skewed clock before is dropped
        ledger_sql(ledger, "INSERT INTO feishu_hire_pace VALUES ('cli_app:withdraw', ?)", time.time() + 3600)
    waits = [ledger.reserve_wait("cli_app:withdraw", interval) for _ in range(3)]
    assert max(waits) <= 3 * interval  # not an hour


def test_an_orphaned_batch_stops_sending_once_its_retry_has_started(ledger: Ledger, tmp_path: Path) -> None:
    """The worker died but its task process lives on: it must not keep spending the app's rate beside the retry."""
    everyone = accounts(40, start=400)
    ids = [a.account_id for a in everyone]
    with FeishuSandbox(everyone, rate_limits=False) as sandbox:
        orphan = start_worker(sandbox, ledger, ids, tmp_path / "orphan", per_second=10)
        while paid_in_sandbox(sandbox) < 3 and orphan.poll() is None:
            time.sleep(0.01)
        with other_worker(ledger) as on_y, client_for(sandbox) as client:
            retry = withdraw_batch(
                client, on_y, list(reversed(ids)), intent_for=lambda a: intent(a, try_number=2), check_balances=True
            )
        out, _ = orphan.communicate(timeout=60)
        assert "superseded=try 2 of this task has started" in out
        assert retry.paid == 40 and retry.superseded == ""
        assert_paid_exactly_once(ledger, sandbox)


@pytest.mark.parametrize("login", ["wrong secret", "token refused twice"])
def test_a_failed_login_on_a_retry_after_an_unknown_send_leaves_it_for_the_next_try(ledger: Ledger, login: str) -> None:
    """A try whose login is refused never reached the withdraw endpoint: no ``review``, and the next try pays once."""
    (account,) = accounts(1, start=900)
    with FeishuSandbox([account], rate_limits=False) as sandbox:
        sandbox.inject("drop_after_commit")  # Feishu paid; the answer was lost; the worker died
        with client_for(sandbox, retry=RetryPolicy(max_attempts=1)) as client:
            assert withdraw_account(client, ledger, intent(account.account_id)).status == SENDING
        if login == "wrong secret":
            bad = FeishuClient(DEFAULT_APP_ID, "not-the-secret", sandbox.url, retry=FAST_RETRY)
        else:
            bad = client_for(sandbox, retry=RetryPolicy(max_attempts=1))
            sandbox.inject("revoke_token", times=2)  # the gateway refuses the token, and the fresh one too
        with bad:
            second = withdraw_account(bad, ledger, intent(account.account_id, try_number=2))
        assert second.status == SENDING
        assert ledger.get(intent(account.account_id).external_order_id).status == SENDING  # type: ignore[union-attr]
        sandbox.faults.clear()
        with client_for(sandbox) as client:
            third = withdraw_account(client, ledger, intent(account.account_id, try_number=3))
        assert third.status == PAID
        assert len(sandbox.state()["ledger"]) == 1
        assert_paid_exactly_once(ledger, sandbox)
