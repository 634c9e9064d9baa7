"""A distributed deployment: CeleryExecutor with two workers as if on two machines, PostgreSQL and Redis.

What only a real deployment shows: one run's tasks on different workers, a task's process
killed mid-batch, a whole worker killed and restarted, Feishu failing mid-run, and a task
orphaned by its worker that goes on paying while Airflow runs its retry on another. After
each, every account was paid exactly once and the run's payroll (the ``feishu_hire_payroll``
table every worker writes to) is complete to the cent: checked against the sandbox's own
ledger and against the balances the accounts started with.

The stack (``scripts/celery_stack.py``) starts once for the module, with the provider
installed as a package in ``.venv-celery``; the scenarios run one after another, each with
accounts of its own, so each checks its own run and all of them the whole ledger. Needs
Debian's redis-server and PostgreSQL (``make test`` installs both).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import psycopg2
import pytest

from airflow_provider_feishu_hire.ledger import Ledger
from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_SECRET, Account, FeishuSandbox, demo_accounts
from tests.conftest import ROOT, PayrollLine, assert_paid_exactly_once, postgres_ledger_connection, sandbox_payroll

sys.path.insert(0, str(ROOT / "scripts"))
from celery_stack import CeleryStack

pytestmark = pytest.mark.distributed

PAYROLL_DAG = "example_feishu_referral_payroll"
BATCH_DAG = "example_feishu_referral_batch_payroll"
WITHDRAW = "withdraw_referral_account"  # the mapped example's task
BATCH_WITHDRAW = "withdraw_referral_accounts"  # the batch example's task
T = TypeVar("T")


def make_accounts(series: int, count: int, *, empty: int = 0) -> list[Account]:
    """Accounts of one scenario's own: points, cents, a second currency on some; the last ``empty`` hold nothing."""
    made = []
    for n in range(count):
        account_id = f"71{series:02d}{n:015d}"
        if n >= count - empty:
            made.append(Account(account_id))
            continue
        cash = {"CNY": Decimal(n * 101 + 7) / 100}
        if n % 3 == 0:
            cash["USD"] = Decimal("0.01") * (n + 1)
        made.append(Account(account_id, point_bonus=(n * 37) % 500, cash_bonus=cash))
    return made


DEMO = [a for a in demo_accounts() if a.enabled]  # example_feishu_referral_payroll's default account list
BOTH_EXAMPLES = make_accounts(1, 8, empty=1)
TASK_KILLED = make_accounts(2, 40, empty=1)
WORKER_KILLED = make_accounts(3, 10)
FAULTS = make_accounts(4, 8)
ORPHANED = make_accounts(5, 70)


def ids(accounts: list[Account]) -> list[str]:
    return [a.account_id for a in accounts]


# -- the stack ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def feishu() -> Iterator[FeishuSandbox]:
    """One sandbox for the module, in this process: its ledger is the truth every scenario is checked against.

    It enforces Feishu's published rate limits (100 withdrawals a minute, 10 balance reads a
    second), which also make a batch of 40 last 24 s: long enough to be killed mid-run.
    """
    everyone = [*demo_accounts(), *BOTH_EXAMPLES, *TASK_KILLED, *WORKER_KILLED, *FAULTS, *ORPHANED]
    with FeishuSandbox(everyone) as sandbox:
        # The event-driven example DAG is on the stack too: keep its long connection out, so
        # only the runs these scenarios start withdraw anything.
        sandbox.inject("busy", endpoint="ws_endpoint", times=1_000_000)
        yield sandbox


@pytest.fixture(scope="module")
def stack(feishu: FeishuSandbox) -> Iterator[CeleryStack]:
    airflow = metadata.version("apache-airflow")
    if tuple(int(part) for part in airflow.split(".")[:2]) < (3, 3):
        pytest.skip(f"the stack is Airflow 3.3's, not {airflow}'s: `make test` runs it on the current Airflow only")
    missing = missing_servers()
    if missing:
        if os.environ.get("FEISHU_HIRE_TEST_POSTGRES") == "required":
            pytest.fail(missing)
        pytest.skip(missing)
    with CeleryStack(sandbox_url=feishu.url) as running:
        yield running


def missing_servers() -> str | None:
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (Debian's redis-server; `make test` installs it)"
    if not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
        return "PostgreSQL is not installed (Debian's postgresql; `make test` installs it)"
    return None


@pytest.fixture(scope="module")
def ledger(stack: CeleryStack) -> Iterator[Ledger]:
    with Ledger(postgres_ledger_connection(stack.ledger_uri), "postgresql") as opened:
        yield opened


@pytest.fixture(autouse=True)
def whole_stack(stack: CeleryStack, feishu: FeishuSandbox) -> Iterator[None]:
    """Each scenario starts with both workers up and no faults left over from another."""
    for number in (1, 2):
        if stack.processes[f"worker{number}"].poll() is not None:
            stack.restart_worker(number)
    yield
    with feishu.lock:
        feishu.faults.clear()


# -- what every scenario checks ---------------------------------------------------------------


def assert_run_paid_exactly_once(
    stack: CeleryStack, feishu: FeishuSandbox, ledger: Ledger, dag_id: str, run_id: str, accounts: list[Account]
) -> None:
    """Every account with money was withdrawn once, and the run's payroll holds exactly what Feishu paid it."""
    assert_paid_exactly_once(ledger, feishu)  # the whole ledger against everything Feishu paid, no order id twice
    mine = set(ids(accounts))
    withdrawals = Counter(
        e["referral_account_id"] for e in feishu.state()["ledger"] if e["referral_account_id"] in mine
    )
    assert all(n == 1 for n in withdrawals.values()), withdrawals  # an empty second withdrawal would hide in payroll
    assert {a.account_id for a in accounts if has_money(a)} <= set(withdrawals)
    truth = Counter({line: n for line, n in sandbox_payroll(feishu).items() if line[0] in mine})
    assert payroll_table(stack, dag_id, run_id) == truth
    assert Counter((line[0], *line[2:]) for line in truth.elements()) == starting_balances(accounts)
    assert all(
        not balance["point_bonus"] and not balance["cash_bonus"]
        for account_id, balance in feishu.state()["accounts"].items()
        if account_id in mine
    )
    statuses = Counter(row.status for row in ledger.rows(dag_id=dag_id, run_id=run_id))
    assert set(statuses) <= {"paid", "skipped"}, statuses
    # Every task on every worker, a retry beside its orphan included, shares one pace per app.
    assert feishu.requests["rate_limited"] == 0


def has_money(account: Account) -> bool:
    return bool(account.point_bonus or any(account.cash_bonus.values()))


def starting_balances(accounts: list[Account]) -> Counter[tuple[str, str, str, str]]:
    """(account, bonus type, currency, amount) of everything the accounts held before the run."""
    lines: Counter[tuple[str, str, str, str]] = Counter()
    for a in accounts:
        if a.point_bonus:
            lines[(a.account_id, "points", "", str(a.point_bonus))] += 1
        for currency, amount in a.cash_bonus.items():
            if amount:
                lines[(a.account_id, "cash", currency, f"{amount:.2f}")] += 1
    return lines


def payroll_table(stack: CeleryStack, dag_id: str, run_id: str) -> Counter[PayrollLine]:
    """The run's rows of ``feishu_hire_payroll`` in the ledger's database, as written by the export task."""
    with psycopg2.connect(stack.ledger_uri) as db, db.cursor() as cur:
        cur.execute(
            "SELECT referral_account_id, external_order_id, bonus_type, currency, amount FROM feishu_hire_payroll "
            "WHERE dag_id = %s AND run_id = %s",
            (dag_id, run_id),
        )
        rows = cur.fetchall()
    return Counter((account, order, kind, currency, str(amount)) for account, order, kind, currency, amount in rows)


def attempts_by_try(stack: CeleryStack, run_id: str) -> dict[int, tuple[str, str, int]]:
    """try number -> (first and last send's start, sends): who sent what when, from the ledger's attempt table."""
    with psycopg2.connect(stack.ledger_uri) as db, db.cursor() as cur:
        cur.execute(
            "SELECT try_number, min(started_at), max(started_at), count(*) FROM feishu_hire_withdrawal_attempt "
            "WHERE run_id = %s GROUP BY try_number",
            (run_id,),
        )
        return {row[0]: (row[1], row[2], row[3]) for row in cur.fetchall()}


def paid_so_far(feishu: FeishuSandbox, accounts: list[Account]) -> int:
    mine = set(ids(accounts))
    return sum(1 for e in feishu.state()["ledger"] if e["referral_account_id"] in mine)


def wait_until(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.3)
    return result


def running(stack: CeleryStack, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
    return [
        ti
        for ti in stack.task_instances(dag_id, run_id)
        if ti["task_id"] == task_id and ti["state"] == "running" and ti["hostname"]
    ]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def report(stack: CeleryStack, dag_id: str, run_id: str) -> str:
    """What a failed assertion should show: every try and its worker, the task logs' errors, the workers' output."""
    lines = []
    for ti in stack.task_instances(dag_id, run_id):
        for attempt in stack.tries(dag_id, run_id, ti["task_id"], ti["map_index"]):
            lines.append(
                f"{attempt['task_id']}[{attempt['map_index']}] try {attempt['try_number']}: "
                f"{attempt['state']} on {attempt['hostname']}"
            )
    for log in sorted(stack.root.glob(f"logs/dag_id={dag_id}/run_id={run_id}/**/*.log")):
        errors = [line for line in log.read_text(errors="replace").splitlines() if '"error"' in line]
        if errors:
            lines += [f"--- {log.relative_to(stack.root)}", *(line[:600] for line in errors[-8:])]
    for name in ("scheduler", "worker1", "worker2"):
        lines += [f"--- {name}", stack.output(name, tail=1500)]
    return "\n".join(lines)


def finish(stack: CeleryStack, dag_id: str, run_id: str, timeout: float = 180) -> None:
    state = stack.wait(dag_id, run_id, timeout)
    assert state == "success", f"{dag_id} {run_id} ended {state}\n{report(stack, dag_id, run_id)}"


# -- the scenarios --------------------------------------------------------------------------


def test_both_examples_run_across_both_workers_and_pay_exactly_once(
    stack: CeleryStack, feishu: FeishuSandbox, ledger: Ledger
) -> None:
    # Its default account list (the sandbox's demo accounts); unattended, as test_approval_dag covers approval.
    mapped = stack.trigger(PAYROLL_DAG, {"require_approval": False})
    batch = stack.trigger(BATCH_DAG, {"referral_account_ids": ids(BOTH_EXAMPLES), "require_approval": False})
    finish(stack, PAYROLL_DAG, mapped)
    finish(stack, BATCH_DAG, batch)

    assert_run_paid_exactly_once(stack, feishu, ledger, PAYROLL_DAG, mapped, DEMO)
    assert_run_paid_exactly_once(stack, feishu, ledger, BATCH_DAG, batch, BOTH_EXAMPLES)
    workers = {
        ti["hostname"] for run in ((PAYROLL_DAG, mapped), (BATCH_DAG, batch)) for ti in stack.task_instances(*run)
    }
    assert workers == {"worker1", "worker2"}
    summary = stack.xcom(BATCH_DAG, batch, BATCH_WITHDRAW)
    assert (summary["paid"], summary["skipped"], summary["open"]) == (len(BOTH_EXAMPLES) - 1, 1, 0)


def test_a_batch_whose_process_is_killed_mid_run_is_resumed_by_its_retry_and_pays_exactly_once(
    stack: CeleryStack, feishu: FeishuSandbox, ledger: Ledger
) -> None:
    """SIGKILL with withdrawals in flight: the retry, on whichever worker, carries over and resends."""
    run = stack.trigger(BATCH_DAG, {"referral_account_ids": ids(TASK_KILLED), "require_approval": False})
    (ti,) = wait_until(lambda: running(stack, BATCH_DAG, run, BATCH_WITHDRAW), 90, "the batch to run")
    wait_until(lambda: paid_so_far(feishu, TASK_KILLED) >= 8, 60, "the batch to pay 8 accounts")
    pid = wait_until(lambda: stack.task_pid(ti["id"]), 10, "the batch's process")
    os.kill(pid, signal.SIGKILL)
    paid_by_the_killed_try = paid_so_far(feishu, TASK_KILLED)
    assert paid_by_the_killed_try < len(TASK_KILLED) - 10  # killed mid-run, not at its end

    finish(stack, BATCH_DAG, run)
    assert_run_paid_exactly_once(stack, feishu, ledger, BATCH_DAG, run, TASK_KILLED)
    tries = stack.tries(BATCH_DAG, run, BATCH_WITHDRAW)
    assert [t["state"] for t in tries] == ["failed", "success"], tries
    summary = stack.xcom(BATCH_DAG, run, BATCH_WITHDRAW)
    assert (summary["paid"], summary["skipped"], summary["open"]) == (len(TASK_KILLED) - 1, 1, 0)
    assert summary["carried_over"] >= paid_by_the_killed_try - 4  # at most 4 threads' answers were lost
    assert set(attempts_by_try(stack, run)) == {1, 2}


def test_a_worker_killed_during_a_mapped_run_loses_nothing_and_pays_nothing_twice(
    stack: CeleryStack, feishu: FeishuSandbox, ledger: Ledger
) -> None:
    """The machine dies: its tasks are failed after the heartbeat timeout and retried; it comes back empty."""
    feishu.inject("slow", seconds=3.0, times=len(WORKER_KILLED))  # each withdrawal takes 3 s: killed in flight
    run = stack.trigger(PAYROLL_DAG, {"referral_account_ids": ids(WORKER_KILLED), "require_approval": False})
    first = wait_until(lambda: running(stack, PAYROLL_DAG, run, WITHDRAW), 90, "a withdrawal to run")
    victim = first[0]["hostname"]
    time.sleep(1.5)  # its call to Feishu is under way
    killed = {ti["map_index"] for ti in running(stack, PAYROLL_DAG, run, WITHDRAW) if ti["hostname"] == victim}
    assert killed, f"no withdrawal was running on {victim} any more"
    number = int(victim.removeprefix("worker"))
    stack.kill_worker(number)
    time.sleep(3)
    stack.restart_worker(number)

    finish(stack, PAYROLL_DAG, run, timeout=240)
    assert_run_paid_exactly_once(stack, feishu, ledger, PAYROLL_DAG, run, WORKER_KILLED)
    tries = {map_index: stack.tries(PAYROLL_DAG, run, WITHDRAW, map_index) for map_index in killed}
    assert all(attempts[-1]["state"] == "success" for attempts in tries.values()), tries
    # Each was killed in flight, unless it finished in the moment between looking and killing.
    assert any((attempts[0]["hostname"], attempts[0]["state"]) == (victim, "failed") for attempts in tries.values())


def test_faults_from_feishu_during_a_mapped_run_never_pay_twice(
    stack: CeleryStack, feishu: FeishuSandbox, ledger: Ledger
) -> None:
    faults = [
        {"kind": "http_500", "times": 3},
        {"kind": "drop_after_commit", "times": 2},  # Feishu paid, the answer never came
        {"kind": "html_page", "times": 2},
        {"kind": "http_500", "endpoint": "token"},
    ]
    for fault in faults:  # as a person would: over the sandbox's HTTP control endpoint
        request = urllib.request.Request(
            f"{feishu.url}/_sandbox/faults", json.dumps(fault).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request) as answer:
            assert json.loads(answer.read())["code"] == 0
    run = stack.trigger(PAYROLL_DAG, {"referral_account_ids": ids(FAULTS), "require_approval": False})

    finish(stack, PAYROLL_DAG, run)
    assert feishu.faults == []  # every fault was met
    assert_run_paid_exactly_once(stack, feishu, ledger, PAYROLL_DAG, run, FAULTS)
    # Retries log what went wrong, on every worker: never the App Secret or a token.
    texts = [path.read_text(errors="replace") for path in stack.root.rglob("*") if path.suffix in (".log", ".out")]
    assert feishu.issued_tokens
    for secret in (DEFAULT_APP_SECRET, *feishu.issued_tokens):
        assert not any(secret in text for text in texts)


def test_an_orphaned_task_still_paying_beside_its_retry_pays_nothing_twice(
    stack: CeleryStack, feishu: FeishuSandbox, ledger: Ledger
) -> None:
    """Only the worker's main process dies: the task's supervisor dies with it, the task itself does not.

    Nobody heartbeats for the task, so Airflow starts try 2 on a worker while try 1 is
    still sending; both claim the same order ids in the ledger.
    """
    run = stack.trigger(BATCH_DAG, {"referral_account_ids": ids(ORPHANED), "require_approval": False})
    (ti,) = wait_until(lambda: running(stack, BATCH_DAG, run, BATCH_WITHDRAW), 90, "the batch to run")
    wait_until(lambda: paid_so_far(feishu, ORPHANED) >= 4, 60, "the batch to pay 4 accounts")
    orphan = wait_until(lambda: stack.task_pid(ti["id"]), 10, "the batch's process")
    number = int(ti["hostname"].removeprefix("worker"))
    killed_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    stack.kill_worker_main_process(number)

    wait_until(
        lambda: any(
            t["try_number"] == 2 and t["state"] == "running" for t in stack.tries(BATCH_DAG, run, BATCH_WITHDRAW)
        ),
        90,
        "Airflow to retry the orphaned batch",
    )
    stack.restart_worker(number)
    finish(stack, BATCH_DAG, run, timeout=240)
    wait_until(lambda: not alive(orphan), 60, "the orphan to finish")

    assert_run_paid_exactly_once(stack, feishu, ledger, BATCH_DAG, run, ORPHANED)
    tries = stack.tries(BATCH_DAG, run, BATCH_WITHDRAW)
    assert [t["state"] for t in tries] == ["failed", "success"], tries
    sends = attempts_by_try(stack, run)
    assert sends[1][1] > killed_at, sends  # the orphan went on sending after its worker died
    assert sends[1][2] < len(ORPHANED), sends  # ...until its retry took the lease: every claim checks it
