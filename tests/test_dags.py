"""Real DAG runs (``airflow dags test``) against the sandbox: the few tests that need Airflow itself.

Each run costs seconds, so only what needs a scheduler, XCom and task retries is here.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_SECRET, Account, FeishuSandbox, demo_accounts
from tests.conftest import ROOT, AirflowRunner, connection_json

EXAMPLE = ROOT / "example_dags" / "example_feishu_referral_payroll.py"
BATCH_EXAMPLE = ROOT / "example_dags" / "example_feishu_referral_batch_payroll.py"
CHECKS = Path(__file__).parent / "dags" / "feishu_operator_checks.py"


@pytest.fixture
def runner(airflow_runner: AirflowRunner) -> AirflowRunner:
    airflow_runner.add_dag(EXAMPLE)
    airflow_runner.add_dag(BATCH_EXAMPLE)
    airflow_runner.add_dag(CHECKS)
    return airflow_runner


def run(runner: AirflowRunner, sandbox: FeishuSandbox, dag_id: str, conf: dict[str, object], **extra: object):  # type: ignore[no-untyped-def]
    return runner.dags_test(
        dag_id,
        conf,
        AIRFLOW_CONN_FEISHU_HIRE_DEFAULT=connection_json(sandbox.url, **extra),
        AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY="1",
    )


def logs_of(runner: AirflowRunner, done) -> str:  # type: ignore[no-untyped-def]
    files = [p.read_text(errors="replace") for p in (runner.home / "logs").rglob("*") if p.is_file()]
    return "\n".join([done.stdout, done.stderr, *files])


def assert_no_secret(sandbox: FeishuSandbox, text: str) -> None:
    assert sandbox.issued_tokens, "the run never fetched a token"
    for secret in [DEFAULT_APP_SECRET, *sandbox.issued_tokens]:
        assert secret not in text


def payroll_totals(path: Path) -> dict[tuple[str, str, str], Decimal]:
    with path.open(newline="") as handle:
        return {
            (row["referral_account_id"], row["bonus_type"], row["currency"]): Decimal(row["amount"])
            for row in csv.DictReader(handle)
        }


def balances(accounts: list[Account]) -> dict[tuple[str, str, str], Decimal]:
    expected: dict[tuple[str, str, str], Decimal] = {}
    for account in accounts:
        if account.point_bonus:
            expected[(account.account_id, "points", "")] = Decimal(account.point_bonus)
        for currency, amount in account.cash_bonus.items():
            if amount:
                expected[(account.account_id, "cash", currency)] = amount
    return expected


def test_example_payroll_dag_pays_every_account_once_and_exports_to_the_cent(
    runner: AirflowRunner, tmp_path: Path
) -> None:
    accounts = [a for a in demo_accounts() if a.enabled]
    ids = [a.account_id for a in accounts]
    with FeishuSandbox(demo_accounts(), rate_limits=False) as sandbox:
        done = run(
            runner,
            sandbox,
            "example_feishu_referral_payroll",
            {"referral_account_ids": ids, "output_dir": str(tmp_path)},
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

        ledger = sandbox.state()["ledger"]
        assert sorted(entry["referral_account_id"] for entry in ledger) == sorted(ids)
        (csv_path,) = tmp_path.glob("payroll_*.csv")
        assert payroll_totals(csv_path) == balances(accounts)
        with csv_path.open(newline="") as handle:
            orders = {row["referral_account_id"]: row["external_order_id"] for row in csv.DictReader(handle)}
        assert orders == {
            e["referral_account_id"]: e["external_order_id"] for e in ledger if e["referral_account_id"] in orders
        }
        labels = runner.query(
            "SELECT rendered_map_index FROM task_instance WHERE dag_id = ? AND task_id = ? AND run_id = ?",
            "example_feishu_referral_payroll",
            "withdraw_referral_account",
            runner.query(
                "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
                "example_feishu_referral_payroll",
            )[0][0],
        )
        assert sorted(label for (label,) in labels) == sorted(ids)
        assert_no_secret(sandbox, logs_of(runner, done))


def test_operator_templates_bonus_types_mapping_and_xcom(runner: AirflowRunner, tmp_path: Path) -> None:
    output = tmp_path / "xcom.json"
    conf = {
        "points_account": "7001000000000000001",
        "order_id": "9000000000000000001",
        "mapped_accounts": ["7001000000000000003", "7001000000000000004"],
        "output": str(output),
    }
    with FeishuSandbox(demo_accounts(), rate_limits=False) as sandbox:
        done = run(runner, sandbox, "feishu_operator_checks", conf)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        state = sandbox.state()
        xcom = json.loads(output.read_text())

        assert xcom["points_only"] == {
            "referral_account_id": "7001000000000000001",
            "external_order_id": "9000000000000000001",
            "trans_time": state["ledger"][0]["trans_time"],
            "withdrawal_details": {"point_bonus": 1200, "cash_bonus": []},
        }
        assert state["accounts"]["7001000000000000001"]["cash_bonus"] == [
            {"currency_type": "CNY", "amount": Decimal("3000.00")}
        ]  # points only: the cash stays
        assert [m["referral_account_id"] for m in xcom["mapped"]] == conf["mapped_accounts"]
        assert xcom["mapped"][1]["withdrawal_details"]["cash_bonus"] == [
            {"currency_type": "CNY", "amount": "0.10"},
            {"currency_type": "HKD", "amount": "0.20"},
        ]
        mapped_orders = {m["external_order_id"] for m in xcom["mapped"]}
        assert len(mapped_orders) == 2 and all(o.isdigit() for o in mapped_orders)
        rendered = " ".join(
            str(row) for row in runner.query("SELECT rendered_fields FROM rendered_task_instance_fields")
        )
        xcoms = " ".join(str(row) for row in runner.query("SELECT value FROM xcom"))
        assert_no_secret(sandbox, logs_of(runner, done) + rendered + xcoms)


def ti_states(runner: AirflowRunner, dag_id: str) -> dict[tuple[str, int], tuple[str, int]]:
    (run_id,) = runner.query("SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", dag_id)[0]
    rows = runner.query(
        "SELECT task_id, map_index, state, try_number FROM task_instance WHERE dag_id = ? AND run_id = ?",
        dag_id,
        run_id,
    )
    return {(task, index): (state, tries) for task, index, state, tries in rows}


def test_a_deactivated_account_fails_alone_and_the_others_still_reach_payroll(
    runner: AirflowRunner, tmp_path: Path
) -> None:
    ids = ["7001000000000000001", "7001000000000000009"]  # the second is deactivated
    with FeishuSandbox(demo_accounts(), rate_limits=False) as sandbox:
        done = run(
            runner,
            sandbox,
            "example_feishu_referral_payroll",
            {"referral_account_ids": ids, "output_dir": str(tmp_path)},
        )
        assert sandbox.requests["withdraw"] == 2  # the deactivated account was not retried
        ledger = sandbox.state()["ledger"]
    assert done.returncode != 0 and "1002555" in done.stdout + done.stderr
    states = ti_states(runner, "example_feishu_referral_payroll")
    assert states[("withdraw_referral_account", 0)] == ("success", 1)
    assert states[("withdraw_referral_account", 1)] == ("failed", 1)  # AirflowFailException: no retries
    assert states[("export_payroll", -1)][0] == "failed"  # wrote the payroll, then said who is missing
    (csv_path,) = tmp_path.glob("payroll_*.csv")
    assert {key[0] for key in payroll_totals(csv_path)} == {"7001000000000000001"}
    assert [e["referral_account_id"] for e in ledger] == ["7001000000000000001"]


@pytest.fixture
def many_accounts() -> Iterator[list[Account]]:
    yield [
        Account(
            f"70020000000000000{n:02d}",
            point_bonus=10 * n,
            cash_bonus={"CNY": Decimal(n) / 100 + Decimal("0.07")},
        )
        for n in range(1, 9)
    ]


def test_mapped_payroll_under_faults_pays_every_account_exactly_once(
    runner: AirflowRunner, tmp_path: Path, many_accounts: list[Account]
) -> None:
    ids = [a.account_id for a in many_accounts]
    expected = balances(many_accounts)
    with FeishuSandbox(many_accounts, rate_limits=False) as sandbox:
        # Two attempts per call, so three 500s in a row also exhaust one task try and
        # need Airflow's retry, which must reuse the task instance's external_order_id.
        sandbox.inject("http_500", times=3)
        sandbox.inject("drop_after_commit", times=2)
        sandbox.inject("slow", seconds=1.0)
        sandbox.inject("html_page")
        sandbox.inject("revoke_token", status=200)
        sandbox.inject("rate_limit", seconds=1)
        sandbox.inject("http_500", endpoint="token")
        done = run(
            runner,
            sandbox,
            "example_feishu_referral_payroll",
            {"referral_account_ids": ids, "output_dir": str(tmp_path)},
            timeout=0.5,
            max_attempts=2,
            backoff_base=0.05,
            backoff_max=0.1,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert sandbox.faults == []  # every fault was met
        ledger = sandbox.state()["ledger"]
        assert sorted(entry["referral_account_id"] for entry in ledger) == sorted(ids)  # each exactly once
        (csv_path,) = tmp_path.glob("payroll_*.csv")
        assert payroll_totals(csv_path) == expected
        retried = runner.query(
            "SELECT count(*) FROM task_instance WHERE dag_id = ? AND task_id = ? AND try_number > 1",
            "example_feishu_referral_payroll",
            "withdraw_referral_account",
        )
        assert retried[0][0] >= 1  # Airflow itself retried at least one account
        assert_no_secret(sandbox, logs_of(runner, done))


def test_batch_example_pays_everyone_once_skips_empty_accounts_and_exports(
    runner: AirflowRunner, tmp_path: Path
) -> None:
    accounts = [a for a in demo_accounts() if a.enabled]
    ids = [a.account_id for a in accounts]
    conf = {"referral_account_ids": ids, "output_dir": str(tmp_path / "out"), "results_dir": str(tmp_path / "journals")}
    with FeishuSandbox(demo_accounts(), rate_limits=False) as sandbox:
        done = run(runner, sandbox, "example_feishu_referral_batch_payroll", conf)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        ledger = sandbox.state()["ledger"]
        assert sandbox.requests["token"] == 1  # one token for the whole batch
        assert_no_secret(sandbox, logs_of(runner, done))
    paid = sorted(e["referral_account_id"] for e in ledger)
    assert paid == sorted(a.account_id for a in accounts if a.point_bonus or a.cash_bonus)  # empty one skipped
    (csv_path,) = (tmp_path / "out").glob("payroll_*.csv")
    assert payroll_totals(csv_path) == balances(accounts)


def test_batch_pays_the_others_exports_them_then_fails_without_retry_on_a_bad_account(
    runner: AirflowRunner, tmp_path: Path
) -> None:
    good = ["7001000000000000001", "7001000000000000002", "7001000000000000003"]
    conf = {
        "referral_account_ids": [good[0], "7001000000000000009", *good[1:]],
        "output_dir": str(tmp_path / "out"),
        "results_dir": str(tmp_path / "journals"),
    }
    with FeishuSandbox(demo_accounts(), rate_limits=False) as sandbox:
        done = run(runner, sandbox, "example_feishu_referral_batch_payroll", conf)
        ledger = sandbox.state()["ledger"]
    assert done.returncode != 0
    assert sorted(e["referral_account_id"] for e in ledger) == good
    assert "1 referral accounts failed permanently" in done.stdout + done.stderr
    states = ti_states(runner, "example_feishu_referral_batch_payroll")
    assert states[("withdraw_referral_accounts", -1)] == ("failed", 1)
    assert states[("export_payroll", -1)][0] == "failed"
    (csv_path,) = (tmp_path / "out").glob("payroll_*.csv")
    assert {key[0] for key in payroll_totals(csv_path)} == set(good)
    (journal,) = (tmp_path / "journals").glob("*.jsonl")
    assert any('"code":1002555' in line for line in journal.read_text().splitlines())
