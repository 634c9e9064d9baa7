"""The payroll invariant under generated interleavings, checked against the sandbox's own ledger.

Hypothesis draws a few DAG runs and a schedule of steps: tries of a run's withdrawal task
(faults, lost answers, accounts in any order), zombie tries of a run that wake after a newer
try started, clears, runs deleted and created again under the same run_id, credits between
steps, one balance event delivered to two runs at different times, and payroll exports (per run and per DAG).
A last clean try of every run and its export stand for Airflow's final retries: no DAG-wide
sweep is needed, so a payment the runs' own exports would miss fails the test.
Then every payment Feishu made must be in exactly one payroll batch, to the cent, under the
account it was paid to, and no batch may have changed after it was made.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_feishu_hire.client import FeishuClient, RetryPolicy
from airflow_provider_feishu_hire.ledger import (
    DAG_SCOPE,
    OPEN_STATUSES,
    RUN_SCOPE,
    Intent,
    Ledger,
    PayrollBatch,
    PayrollScope,
    Superseded,
    TaskTry,
)
from airflow_provider_feishu_hire.payout import withdraw_account, withdraw_batch
from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_ID, DEFAULT_APP_SECRET, Account, FeishuSandbox
from airflow_provider_feishu_hire.withdrawal import derive_external_order_id
from tests.conftest import sandbox_payroll
from tests.test_invariant import new_ledger  # noqa: F401 -- the fixture: a fresh ledger per example

DAG = "payroll"
IDS = [f"79{n:017d}" for n in range(6)]
RUNS = ("scheduled__2026-11-01T00:00:00+00:00", "scheduled__2026-12-01T00:00:00+00:00")
FAULTS = ("http_500", "drop_after_commit", "html_page")


class Run:
    """One DAG run as Airflow would drive it: generations (re-creations), clears and tries."""

    def __init__(self, ledger: Ledger, run_id: str) -> None:
        self.ledger, self.run_id = ledger, run_id
        self.incarnation, self.clears, self.tries = 0, 0, 0
        self.recreate()

    def recreate(self) -> None:
        self.incarnation += 1
        self.clears, self.tries = 0, 0
        self.generation = self._generation()

    def clear(self) -> None:
        self.clears += 1
        self.generation = self._generation()

    def _generation(self) -> int:
        start = f"2026-12-0{self.incarnation}T00:{self.clears:02d}:00+00:00"  # a new start_date per clear
        return self.ledger.run_generation(DAG, self.run_id, self.clears, start)

    def next_try(self, task_id: str = "withdraw") -> TaskTry:
        self.tries += 1
        ti_id = f"{self.run_id}/{self.incarnation}/{self.tries}"
        return TaskTry(DAG, self.run_id, task_id, -1, self.tries, ti_id, self.generation)


def intent_for(task: TaskTry, orders: dict[str, str]) -> Callable[[str], Intent]:
    def make(account: str) -> Intent:
        order = orders.get(account) or derive_external_order_id(
            dag_id=DAG, run_id=task.run_id, task_id=task.task_id, referral_account_id=account,
            run_generation=task.run_generation,
        )  # fmt: skip
        return Intent(order, account, (1, 2), DEFAULT_APP_ID, task.dag_id, task.run_id, task.task_id,
                      task.map_index, task.try_number, task.ti_id, task.run_generation)  # fmt: skip

    return make


steps = st.one_of(
    st.tuples(
        st.just("try"),
        st.sampled_from(range(len(RUNS))),
        st.lists(st.sampled_from(IDS), min_size=1, max_size=6),
        st.lists(st.tuples(st.sampled_from(FAULTS), st.integers(1, 2)), max_size=2),
        st.booleans(),  # check_balances
    ),
    st.tuples(
        st.just("zombie"),
        st.sampled_from(range(len(RUNS))),
        st.sampled_from(IDS),
        st.lists(st.sampled_from(IDS), min_size=1, max_size=6),
    ),
    st.tuples(st.just("clear"), st.sampled_from(range(len(RUNS)))),
    st.tuples(st.just("recreate"), st.sampled_from(range(len(RUNS)))),
    st.tuples(st.just("credit"), st.sampled_from(IDS), st.integers(0, 40), st.integers(0, 9999)),
    st.tuples(
        st.just("event"),
        st.sampled_from(IDS),
        st.integers(0, 1),  # the event's version: the same event comes again, or another one
        st.sampled_from(range(len(RUNS))),
        st.booleans(),  # the first run exports before the second gets the event
        st.integers(0, 20),  # points credited in between
    ),
    st.tuples(st.just("export"), st.sampled_from([*range(len(RUNS)), "dag"])),
)


def batch_lines(batches: list[PayrollBatch]) -> Counter[tuple[str, str, str, str, str]]:
    lines: Counter[tuple[str, str, str, str, str]] = Counter()
    for batch in batches:
        for row in batch.members:
            assert row.withdrawal is not None
            for bonus_type, currency, amount in row.withdrawal.payroll_items():
                lines[(row.referral_account_id, row.external_order_id, bonus_type, currency, amount)] += 1
    return lines


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    balances=st.lists(  # often empty: skips, and payments after them, are where payroll went wrong
        st.tuples(st.sampled_from([0, 0, 7, 250]), st.sampled_from([0, 0, 1, 12345])),
        min_size=len(IDS),
        max_size=len(IDS),
    ),
    schedule=st.lists(steps, min_size=1, max_size=10),
)
def test_every_payment_is_in_exactly_one_payroll_batch_whatever_runs_tries_and_events_do(
    new_ledger: Callable[[], Ledger],  # noqa: F811 -- pytest's fixture, imported above
    balances: list[tuple[int, int]],
    schedule: list[tuple[Any, ...]],
) -> None:
    accounts = [
        Account(account_id, point_bonus=points, cash_bonus={"CNY": Decimal(cents) / 100} if cents else {})
        for account_id, (points, cents) in zip(IDS, balances, strict=True)
    ]
    ledger = new_ledger()
    ledger.migrate()
    with ledger, FeishuSandbox(accounts, rate_limits=False) as sandbox:
        runs = [Run(ledger, run_id) for run_id in RUNS]
        listed: list[dict[str, str]] = [{} for _ in RUNS]  # per run: account -> chosen order id ("" = derived)
        made: dict[int, PayrollBatch] = {}
        tried_since_export = [False for _ in RUNS]  # clearing a withdrawal clears the export after it too
        quick = RetryPolicy(max_attempts=1, backoff_base=0.001, backoff_max=0.002, budget=5)

        def client(retry: RetryPolicy = quick) -> FeishuClient:
            return FeishuClient(DEFAULT_APP_ID, DEFAULT_APP_SECRET, sandbox.url, timeout=2, retry=retry)

        def run_try(n: int, ids: list[str], check: bool, retry: RetryPolicy = quick) -> None:
            task = runs[n].next_try()
            tried_since_export[n] = True
            orders = {a: o for a, o in listed[n].items() if o}
            with client(retry) as feishu:
                withdraw_batch(feishu, ledger, ids, intent_for=intent_for(task, orders), check_balances=check)

        def export(scope: PayrollScope, by: TaskTry) -> None:
            batch = ledger.make_payroll_batch(scope, by)
            if batch is not None:
                made[batch.id] = batch

        for step in schedule:
            kind = step[0]
            if kind == "try":
                _, n, ids, faults, check = step
                for fault, times in faults:
                    sandbox.inject(fault, times=times)
                listed[n].update({a: listed[n].get(a, "") for a in ids})
                run_try(n, ids, check)
                sandbox.faults.clear()
            elif kind == "zombie":
                # A try starts and stalls (its worker looks dead); Airflow's next try runs; then the stalled
                # one wakes and goes on with an account, as if it had read a balance before stalling.
                _, n, account, ids = step
                stalled = runs[n].next_try()
                assert ledger.take_lease(stalled).held
                listed[n].update({a: listed[n].get(a, "") for a in ids})
                run_try(n, ids, check=True)
                sent = sandbox.requests["withdraw"]
                with client() as feishu, pytest.raises(Superseded):
                    withdraw_account(feishu, ledger, intent_for(stalled, {})(account), check_balance=True)
                assert sandbox.requests["withdraw"] == sent, "a superseded try reached Feishu"
            elif kind == "clear":
                runs[step[1]].clear()
            elif kind == "recreate":
                runs[step[1]].recreate()  # asked to pay the same accounts, with its events again
            elif kind == "credit":
                _, account, points, cents = step
                sandbox.credit(account, point_bonus=points, cash_bonus={"CNY": Decimal(cents) / 100})
            elif kind == "event":
                # A balance event reaches run n; the run may export, a credit may come, and Airflow hands the
                # same event to the other run (issue 16's first case when the first run found nothing).
                _, account, version, first, export_between, points = step
                order = derive_external_order_id(
                    dag_id=DAG, run_id=f"assets_update-{account}-{version}", task_id="withdraw",
                    referral_account_id=account,
                )  # fmt: skip
                for n in (first, 1 - first):
                    if listed[n].get(account, order) == order:
                        listed[n][account] = order
                        run_try(n, [account], check=True)
                    if n == first:
                        if export_between:
                            run = runs[n]
                            export(PayrollScope(RUN_SCOPE, DAG, run.run_id, run.generation), run.next_try("export"))
                            tried_since_export[n] = False
                        sandbox.credit(account, point_bonus=points)
            elif kind == "export":
                target = step[1]
                if target == "dag":
                    export(PayrollScope(DAG_SCOPE, DAG), TaskTry(DAG, "monthly", "export", -1, 1))
                else:
                    run = runs[target]
                    export(PayrollScope(RUN_SCOPE, DAG, run.run_id, run.generation), run.next_try("export"))
                    tried_since_export[target] = False

        sandbox.faults.clear()
        for n in range(len(RUNS)):  # Airflow's last, clean retry of each run that has work left, then its export
            if any(row.status in OPEN_STATUSES for row in ledger.rows(dag_id=DAG, run_id=RUNS[n])):
                run_try(n, list(listed[n]), check=True, retry=RetryPolicy(backoff_base=0.001, backoff_max=0.002))
            if tried_since_export[n]:
                run = runs[n]
                export(PayrollScope(RUN_SCOPE, DAG, run.run_id, run.generation), run.next_try("export"))

        assert not ledger.rows(statuses=OPEN_STATUSES)
        batches = ledger.payroll_batches()
        assert {batch.id: batch for batch in batches} == made, "a batch changed after it was made"
        assert batch_lines(batches) == sandbox_payroll(sandbox), "a payment in no batch, in two, or changed"
        orders = [entry["external_order_id"] for entry in sandbox.state()["ledger"]]
        assert len(orders) == len(set(orders)), "Feishu saw one order id twice as a new withdrawal"
