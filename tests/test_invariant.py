"""Generated schedules of retries, clears, re-ordered lists, zombie tries and faults, checked against Feishu.

Hypothesis draws the accounts, then a few tries of one DAG run's withdrawal task: each try
sees the account list in another order (grown or shrunk, as a query without ORDER BY
would), meets faults (5xx, gateway pages, answers lost after Feishu committed, revoked
tokens), gives up after one or two attempts per call (as a killed worker leaves its last
send without an outcome), and sometimes runs beside a zombie copy of itself on another
"worker" (its own ledger connections). Bonuses are credited between tries. A last clean
try stands for Airflow's final retry. Then the invariant must hold against the sandbox's
own ledger, and no withdrawal may be left without a known outcome.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_feishu_hire.client import FeishuClient, RetryPolicy
from airflow_provider_feishu_hire.ledger import OPEN_STATUSES, Intent, Ledger
from airflow_provider_feishu_hire.payout import withdraw_batch
from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_ID, DEFAULT_APP_SECRET, Account, FeishuSandbox
from airflow_provider_feishu_hire.withdrawal import derive_external_order_id
from tests.conftest import LEDGER_DATABASES, assert_paid_exactly_once, ledger_connection

RUN = {"dag_id": "payroll", "run_id": "scheduled__2026-11-01T00:00:00+00:00", "task_id": "withdraw"}
FAULTS = ("http_500", "drop_after_commit", "html_page", "revoke_token")
IDS = [f"78{n:017d}" for n in range(8)]


def intent(account_id: str) -> Intent:
    order_id = derive_external_order_id(**RUN, referral_account_id=account_id)
    return Intent(order_id, account_id, (1, 2), DEFAULT_APP_ID, **RUN)


tries = st.fixed_dictionaries(
    {
        "accounts": st.lists(st.sampled_from(IDS), min_size=1, max_size=8),  # order, repeats, growth, shrinkage
        "faults": st.lists(st.tuples(st.sampled_from(FAULTS), st.integers(1, 3)), max_size=3),
        "attempts": st.integers(1, 2),
        "check_balances": st.booleans(),
        "zombie": st.booleans(),
        "credit": st.lists(st.tuples(st.sampled_from(IDS), st.integers(0, 50), st.integers(0, 9999)), max_size=2),
    }
)
balances = st.lists(st.tuples(st.integers(0, 500), st.integers(0, 99999)), min_size=len(IDS), max_size=len(IDS))


@pytest.fixture(params=LEDGER_DATABASES)
def new_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Ledger]:
    """A fresh, empty ledger for each generated example."""
    dialect = request.param
    return lambda: Ledger(
        ledger_connection(request, dialect, Path(tempfile.mkdtemp(dir=tmp_path)) / "ledger.db"), dialect
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(balances=balances, schedule=st.lists(tries, min_size=1, max_size=4), empty=st.sampled_from(["zeros", "error"]))
def test_any_schedule_of_retries_clears_zombies_and_faults_pays_each_withdrawal_once(
    new_ledger: Callable[[], Ledger], balances: list[tuple[int, int]], schedule: list[dict[str, Any]], empty: str
) -> None:
    accounts = [
        Account(account_id, point_bonus=points, cash_bonus={"CNY": Decimal(cents) / 100} if cents else {})
        for account_id, (points, cents) in zip(IDS, balances, strict=True)
    ]
    ledger = new_ledger()
    ledger.migrate()
    listed: set[str] = set()
    with ledger, FeishuSandbox(accounts, rate_limits=False, empty_withdrawal=empty) as sandbox:
        for step in schedule:
            for kind, times in step["faults"]:
                sandbox.inject(kind, times=times)
            for account_id, points, cents in step["credit"]:
                sandbox.credit(account_id, point_bonus=points, cash_bonus={"CNY": Decimal(cents) / 100})
            listed.update(step["accounts"])
            retry = RetryPolicy(max_attempts=step["attempts"], backoff_base=0.001, backoff_max=0.002, budget=5)

            def one_try(on: Ledger, ids: list[str], retry: RetryPolicy = retry, check: bool = step["check_balances"]):  # type: ignore[no-untyped-def]
                with FeishuClient(DEFAULT_APP_ID, DEFAULT_APP_SECRET, sandbox.url, timeout=2, retry=retry) as client:
                    withdraw_batch(client, on, ids, intent_for=intent, check_balances=check, max_workers=3)

            if step["zombie"]:
                with Ledger(ledger._connect, ledger.dialect) as elsewhere:
                    zombie = threading.Thread(target=one_try, args=(elsewhere, list(reversed(step["accounts"]))))
                    zombie.start()
                    one_try(ledger, step["accounts"])
                    zombie.join()
            else:
                one_try(ledger, step["accounts"])

        sandbox.faults.clear()
        with FeishuClient(DEFAULT_APP_ID, DEFAULT_APP_SECRET, sandbox.url, timeout=2) as client:  # the last retry
            withdraw_batch(client, ledger, sorted(listed), intent_for=intent, check_balances=True)

        assert_paid_exactly_once(ledger, sandbox)
        assert not ledger.rows(statuses=OPEN_STATUSES)
        paid_accounts = {entry["referral_account_id"] for entry in sandbox.state()["ledger"]}
        assert paid_accounts <= listed  # nobody outside the run's lists was touched
