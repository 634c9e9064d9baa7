"""Real DAG runs (``airflow dags test``) against the sandbox: the few tests that need Airflow itself.

Each run costs seconds, so only what needs a scheduler, XCom, retries and clears is here.
Every run ends with the invariant checked against the sandbox's own ledger.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import sys
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from airflow_provider_feishu_hire.ledger import Ledger
from airflow_provider_feishu_hire.sandbox import (
    DEFAULT_APP_SECRET,
    DEFAULT_TENANT_KEY,
    Account,
    FeishuSandbox,
    demo_accounts,
)
from tests.conftest import (
    ROOT,
    AirflowRunner,
    PayrollLine,
    PostgresServer,
    assert_paid_exactly_once,
    connection_json,
    ledger_payroll,
    postgres_ledger_connection,
    sandbox_payroll,
)

pytestmark = pytest.mark.lowest  # also run on the lowest supported Airflow (Makefile: pytest-lowest)

EXAMPLE = ROOT / "example_dags" / "example_feishu_referral_payroll.py"
BATCH_EXAMPLE = ROOT / "example_dags" / "example_feishu_referral_batch_payroll.py"
CHECKS = Path(__file__).parent / "dags" / "feishu_operator_checks.py"
LIFECYCLE = Path(__file__).parent / "dags" / "feishu_account_lifecycle.py"
PAYROLL_DAG = "example_feishu_referral_payroll"
BATCH_DAG = "example_feishu_referral_batch_payroll"


@pytest.fixture
def runner(airflow_runner: AirflowRunner) -> AirflowRunner:
    airflow_runner.add_dag(EXAMPLE)
    airflow_runner.add_dag(BATCH_EXAMPLE)
    airflow_runner.add_dag(CHECKS)
    return airflow_runner


@pytest.fixture
def ledger_file(tmp_path: Path) -> Iterator[Path]:
    """A ledger of this test's own (the runner's AIRFLOW_HOME is shared by the whole session)."""
    yield tmp_path / "ledger.db"


def sqlite_ledger(path: Path) -> Ledger:
    return Ledger(lambda: sqlite3.connect(path, check_same_thread=False, isolation_level=None), "sqlite")


def run(runner: AirflowRunner, sandbox: FeishuSandbox, dag_id: str, conf: dict[str, object], *args: str, **env: str):  # type: ignore[no-untyped-def]
    extra = {key: value for key, value in env.items() if not key.startswith("AIRFLOW")}
    airflow_env = {key: value for key, value in env.items() if key.startswith("AIRFLOW")}
    return runner.airflow(
        "dags",
        "test",
        dag_id,
        *args,
        "--conf",
        json.dumps({"require_approval": False, **conf}),  # unattended unless a test asks for approval
        AIRFLOW_CONN_FEISHU_HIRE_DEFAULT=connection_json(sandbox.url, **extra),
        AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY="1",
        **airflow_env,
    )


def run_at(runner: AirflowRunner, sandbox: FeishuSandbox, conf: dict[str, object], env: dict[str, str]):  # type: ignore[no-untyped-def]
    """The example payroll DAG's run of 2026-11-01: a second call clears and re-runs the same DAG run."""
    return runner.run(
        [sys.executable, str(Path(__file__).parent / "dag_run_at.py"), PAYROLL_DAG, "2026-11-01T00:00:00+00:00",
         json.dumps({"require_approval": False, **conf})],
        AIRFLOW_CONN_FEISHU_HIRE_DEFAULT=connection_json(sandbox.url),
        PYTHONPATH=str(ROOT),
        **env,
    )  # fmt: skip


def ledger_env(path: Path) -> dict[str, str]:
    return {"AIRFLOW_CONN_FEISHU_HIRE_LEDGER": json.dumps({"conn_type": "sqlite", "host": str(path)})}


def failed(runner: AirflowRunner, done) -> str:  # type: ignore[no-untyped-def]
    """The tail of the run's output and of its task logs, for an assertion message."""
    return logs_of(runner, done)[-6000:]


def logs_of(runner: AirflowRunner, done) -> str:  # type: ignore[no-untyped-def]
    files = [p.read_text(errors="replace") for p in (runner.home / "logs").rglob("*") if p.is_file()]
    return "\n".join([done.stdout, done.stderr, *files])


def assert_no_secret(sandbox: FeishuSandbox, *texts: str) -> None:
    assert sandbox.issued_tokens, "the run never fetched a token"
    for secret in [DEFAULT_APP_SECRET, *sandbox.issued_tokens, *sandbox.issued_app_tokens]:
        assert all(secret not in text for text in texts)


def csv_lines(path: Path) -> Counter[PayrollLine]:
    with path.open(newline="") as handle:
        return Counter(
            (r["referral_account_id"], r["external_order_id"], r["bonus_type"], r["currency"], r["amount"])
            for r in csv.DictReader(handle)
        )


def last_run_id(runner: AirflowRunner, dag_id: str) -> str:
    return str(runner.query("SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", dag_id)[0][0])


def ti_states(runner: AirflowRunner, dag_id: str) -> dict[tuple[str, int], tuple[str, int]]:
    rows = runner.query(
        "SELECT task_id, map_index, state, try_number FROM task_instance WHERE dag_id = ? AND run_id = ?",
        dag_id,
        last_run_id(runner, dag_id),
    )
    return {(task, index): (state, tries) for task, index, state, tries in rows}


def test_example_payroll_dag_with_the_embedded_ledger_pays_once_and_exports_from_it(runner: AirflowRunner) -> None:
    embedded = runner.home / "feishu_hire_ledger.db"
    embedded.unlink(missing_ok=True)
    accounts = [a for a in demo_accounts() if a.enabled]
    ids = [a.account_id for a in accounts]
    with FeishuSandbox(demo_accounts(), rate_limits=False) as sandbox:
        done = run(runner, sandbox, PAYROLL_DAG, {"referral_account_ids": ids})  # default output_dir
        assert done.returncode == 0, failed(runner, done)
        with sqlite_ledger(embedded) as ledger:
            assert_paid_exactly_once(ledger, sandbox)
            (reconciled,) = ledger.reconciliations(sandbox.app_id)  # the run's window, agreed with Feishu
            (approval,) = ledger.approvals(PAYROLL_DAG, last_run_id(runner, PAYROLL_DAG))
        assert reconciled.mismatches == ()
        assert (approval.decision, approval.accounts) == (
            "not required",
            len([a for a in accounts if a.point_bonus or any(a.cash_bonus.values())]),
        )
        assert sandbox.requests["reconciliation"] == 1
        run_id = last_run_id(runner, PAYROLL_DAG)
        (csv_path,) = (runner.home / "feishu_hire_payroll" / PAYROLL_DAG).glob("payroll_*.csv")
        assert csv_lines(csv_path) == sandbox_payroll(sandbox)
        labels = runner.query(
            "SELECT rendered_map_index FROM task_instance WHERE dag_id = ? AND task_id = ? AND run_id = ?",
            PAYROLL_DAG,
            "withdraw_referral_account",
            run_id,
        )
        assert sorted(label for (label,) in labels) == sorted(ids)
        assert_no_secret(sandbox, logs_of(runner, done), embedded.read_bytes().decode("latin-1"))


def test_a_run_recreated_with_its_old_start_date_sends_nothing_and_keeps_the_first_batch_on_postgres(
    runner: AirflowRunner, postgres: PostgresServer, tmp_path: Path
) -> None:
    """``DAG.test`` under a fixed run id deletes the run and creates it again with the same start date.

    Nothing Airflow hands a task tells that run from the deleted one but its task instances'
    ids: the ledger refuses its withdrawals before sending (a re-created run must not replay
    the deleted run's payments as its own), and the run fails saying so. A run re-created
    with a new start date (any trigger through the UI or the REST API) pays under new order
    ids instead: tests/test_payroll_batches_dag.py.
    """
    a, b, n = (Account(f"7600000000000000{i}", point_bonus=100 * int(i), cash_bonus={"CNY": Decimal(5)}) for i in "123")
    uri = postgres.new_database()
    env = {"AIRFLOW_CONN_FEISHU_HIRE_LEDGER": uri}
    out = tmp_path / "payroll"
    with FeishuSandbox([a, b, n], rate_limits=False) as sandbox:
        conf: dict[str, object] = {"referral_account_ids": [a.account_id, b.account_id], "output_dir": str(out)}
        first = run_at(runner, sandbox, conf, env)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        run_id = last_run_id(runner, PAYROLL_DAG)
        paid = sandbox.state()["ledger"]
        conf["referral_account_ids"] = [n.account_id, b.account_id, a.account_id]
        second = run_at(runner, sandbox, conf, env)
        assert second.returncode == 1
        assert "created again under the same run_id" in logs_of(runner, second)
        assert last_run_id(runner, PAYROLL_DAG) == run_id
        assert sandbox.state()["ledger"] == paid  # nothing sent, nothing paid twice
        with Ledger(postgres_ledger_connection(uri), "postgresql") as ledger:
            assert_paid_exactly_once(ledger, sandbox)
            (batch,) = ledger.payroll_batches()
        (csv_path,) = (out / PAYROLL_DAG).glob("payroll_*.csv")
        assert csv_lines(csv_path) == sandbox_payroll(sandbox)  # A's 100 points and 500.00 CNY, in batch 1
        import psycopg2

        with psycopg2.connect(uri) as db, db.cursor() as cur:
            cur.execute(
                "SELECT referral_account_id, bonus_type, currency, amount, payroll_batch_id FROM feishu_hire_payroll"
            )
            table = sorted(cur.fetchall())
        assert [(r[0], r[1], r[2], str(r[3]), r[4]) for r in table] == sorted(
            [(x.account_id, "cash", "CNY", "5.00", batch.id) for x in (a, b)]
            + [(x.account_id, "points", "", str(x.point_bonus), batch.id) for x in (a, b)]
        )
        assert_no_secret(sandbox, logs_of(runner, second), repr(table))


def test_operator_templates_bonus_types_mapping_and_xcom(
    runner: AirflowRunner, tmp_path: Path, ledger_file: Path
) -> None:
    output = tmp_path / "xcom.json"
    conf = {
        "points_account": "7001000000000000001",
        "bonus_type": "[1]",  # a rendered list
        "order_id": "9000000000000000001",
        "mapped_accounts": ["7001000000000000003", "7001000000000000004"],
        "output": str(output),
    }
    with FeishuSandbox(demo_accounts(), rate_limits=False) as sandbox:
        done = run(runner, sandbox, "feishu_operator_checks", conf, **ledger_env(ledger_file))
        assert done.returncode == 0, failed(runner, done)
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
        with sqlite_ledger(ledger_file) as ledger:
            assert_paid_exactly_once(ledger, sandbox)
        rendered = " ".join(
            str(row) for row in runner.query("SELECT rendered_fields FROM rendered_task_instance_fields")
        )
        xcoms = " ".join(str(row) for row in runner.query("SELECT value FROM xcom"))
        assert_no_secret(sandbox, logs_of(runner, done), rendered, xcoms, ledger_file.read_bytes().decode("latin-1"))


def test_bad_input_fails_at_once_without_retries_and_sends_nothing(
    runner: AirflowRunner, tmp_path: Path, ledger_file: Path
) -> None:
    conf = {"points_account": "abc/../x", "mapped_accounts": ["7001000000000000003"], "output": str(tmp_path / "x")}
    with FeishuSandbox(demo_accounts(), rate_limits=False) as sandbox:
        done = run(runner, sandbox, "feishu_operator_checks", conf, **ledger_env(ledger_file))
        assert done.returncode != 0
        states = ti_states(runner, "feishu_operator_checks")
        assert states[("points_only", -1)] == ("failed", 1)  # no Airflow retries for bad input
        assert "referral_account_id 'abc/../x' is not a referral account id" in done.stdout + done.stderr
        assert states[("mapped", 0)][0] == "success"  # nothing already done is lost
        assert [e["referral_account_id"] for e in sandbox.state()["ledger"]] == ["7001000000000000003"]

        # The example DAG's trigger form refuses such an id before any task starts.
        refused = run(runner, sandbox, PAYROLL_DAG, {"referral_account_ids": ["abc/../x"]}, **ledger_env(ledger_file))
        assert refused.returncode != 0
        assert sandbox.requests["withdraw"] == 1


def test_a_deactivated_account_fails_alone_and_the_others_still_reach_payroll(
    runner: AirflowRunner, tmp_path: Path, ledger_file: Path
) -> None:
    ids = ["7001000000000000001", "7001000000000000009"]  # the second is deactivated
    with FeishuSandbox(demo_accounts(), rate_limits=False) as sandbox:
        done = run(
            runner,
            sandbox,
            PAYROLL_DAG,
            {"referral_account_ids": ids, "output_dir": str(tmp_path)},
            **ledger_env(ledger_file),
        )
        assert sandbox.requests["withdraw"] == 2  # the deactivated account was not retried
        with sqlite_ledger(ledger_file) as ledger:
            assert_paid_exactly_once(ledger, sandbox)
        truth = sandbox_payroll(sandbox)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "1002555" in output
    assert "1 referral account not paid: account 7001000000000000009" in output  # the facts first, plural right
    states = ti_states(runner, PAYROLL_DAG)
    assert states[("withdraw_referral_account", 0)] == ("success", 1)
    assert states[("withdraw_referral_account", 1)] == ("failed", 1)  # AirflowFailException: no retries
    assert states[("export_payroll", -1)] == ("failed", 1)  # wrote the payroll, then said who is missing
    (csv_path,) = (tmp_path / PAYROLL_DAG).glob("payroll_*.csv")
    assert csv_lines(csv_path) == truth


def test_mapped_payroll_under_faults_pays_every_account_exactly_once(
    runner: AirflowRunner, tmp_path: Path, ledger_file: Path
) -> None:
    accounts = [
        Account(f"70020000000000000{n:02d}", point_bonus=10 * n, cash_bonus={"CNY": Decimal(n) / 100 + Decimal("0.07")})
        for n in range(1, 9)
    ]
    ids = [a.account_id for a in accounts]
    with FeishuSandbox(accounts, rate_limits=False) as sandbox:
        # Two attempts per call, so three 500s in a row also exhaust one task try and
        # need Airflow's retry, which must reuse the external_order_id.
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
            PAYROLL_DAG,
            {"referral_account_ids": ids, "output_dir": str(tmp_path)},
            timeout=0.5,
            max_attempts=2,
            backoff_base=0.05,
            backoff_max=0.1,
            **ledger_env(ledger_file),
        )
        assert done.returncode == 0, failed(runner, done)
        assert sandbox.faults == []  # every fault was met
        assert sorted(e["referral_account_id"] for e in sandbox.state()["ledger"]) == sorted(ids)
        with sqlite_ledger(ledger_file) as ledger:
            assert_paid_exactly_once(ledger, sandbox)
        (csv_path,) = (tmp_path / PAYROLL_DAG).glob("payroll_*.csv")
        assert csv_lines(csv_path) == sandbox_payroll(sandbox)
        retried = runner.query(
            "SELECT count(*) FROM task_instance WHERE dag_id = ? AND task_id = ? AND run_id = ? AND try_number > 1",
            PAYROLL_DAG,
            "withdraw_referral_account",
            last_run_id(runner, PAYROLL_DAG),
        )
        assert retried[0][0] >= 1  # Airflow itself retried at least one account
        assert_no_secret(sandbox, logs_of(runner, done), ledger_file.read_bytes().decode("latin-1"))


def test_batch_example_pays_everyone_once_skips_empty_accounts_and_exports(
    runner: AirflowRunner, tmp_path: Path, ledger_file: Path
) -> None:
    ids = [a.account_id for a in demo_accounts() if a.enabled]
    conf = {"referral_account_ids": ids, "output_dir": str(tmp_path)}
    with FeishuSandbox(demo_accounts(), rate_limits=False) as sandbox:
        done = run(runner, sandbox, BATCH_DAG, conf, **ledger_env(ledger_file))
        assert done.returncode == 0, failed(runner, done)
        assert sandbox.requests["token"] == 3  # one each for the preview, the whole batch and the reconciliation
        assert sandbox.requests["reconciliation"] == 1
        assert "7001000000000000005" not in {e["referral_account_id"] for e in sandbox.state()["ledger"]}  # empty
        with sqlite_ledger(ledger_file) as ledger:
            assert_paid_exactly_once(ledger, sandbox)
            assert [r.mismatches for r in ledger.reconciliations(sandbox.app_id)] == [()]
        (csv_path,) = (tmp_path / BATCH_DAG).glob("payroll_*.csv")
        assert csv_lines(csv_path) == sandbox_payroll(sandbox)
        assert_no_secret(sandbox, logs_of(runner, done))


def test_the_trigger_form_chooses_the_connection_every_feishu_task_uses(
    runner: AirflowRunner, ledger_file: Path
) -> None:
    """A connection made by hand, chosen in the trigger form: feishu_hire_default (here: nowhere) is never used."""
    ids = ["7001000000000000001", "7001000000000000002"]
    with FeishuSandbox(demo_accounts(), rate_limits=False) as sandbox:
        done = runner.airflow(
            "dags", "test", BATCH_DAG, "--conf",
            json.dumps({"referral_account_ids": [f" {ids[0]} ", ids[1]], "require_approval": False,
                        "feishu_hire_conn_id": "feishu_hand_made"}),
            AIRFLOW_CONN_FEISHU_HAND_MADE=connection_json(sandbox.url),
            AIRFLOW_CONN_FEISHU_HIRE_DEFAULT=connection_json("https://127.0.0.1:9"),
            **ledger_env(ledger_file),
        )  # fmt: skip
        assert done.returncode == 0, failed(runner, done)
        assert sorted(e["referral_account_id"] for e in sandbox.state()["ledger"]) == ids  # the pasted space trimmed
        assert sandbox.requests["reconciliation"] == 1 and sandbox.requests["assets"] >= 2  # preview and batch too


def test_batch_pays_the_others_exports_them_then_fails_without_retry_on_a_bad_account(
    runner: AirflowRunner, tmp_path: Path, ledger_file: Path
) -> None:
    good = ["7001000000000000001", "7001000000000000002", "7001000000000000003"]
    conf = {"referral_account_ids": [good[0], "7001000000000000009", *good[1:]], "output_dir": str(tmp_path)}
    with FeishuSandbox(demo_accounts(), rate_limits=False) as sandbox:
        done = run(runner, sandbox, BATCH_DAG, conf, **ledger_env(ledger_file))
        assert sorted(e["referral_account_id"] for e in sandbox.state()["ledger"]) == good
        truth = sandbox_payroll(sandbox)
    assert done.returncode != 0
    assert "1 referral account not paid (first: 7001000000000000009, rejected" in done.stdout + done.stderr
    states = ti_states(runner, BATCH_DAG)
    assert states[("withdraw_referral_accounts", -1)] == ("failed", 1)
    assert states[("export_payroll", -1)][0] == "failed"
    (csv_path,) = (tmp_path / BATCH_DAG).glob("payroll_*.csv")
    assert csv_lines(csv_path) == truth


@pytest.mark.parametrize("app_type", ["custom", "isv"])
def test_a_dag_registers_waits_pays_deactivates_and_reconciles(
    runner: AirflowRunner, ledger_file: Path, app_type: str
) -> None:
    """The whole life of two accounts in one DAG run, with a self-built app and with a store app."""
    runner.add_dag(LIFECYCLE)
    emails = ["ann@example.com", "bo@example.com"]
    with FeishuSandbox([], rate_limits=False, app_type=app_type) as sandbox:
        env = ledger_env(ledger_file)
        if app_type == "isv":  # the store app's ticket, as the user's event receiver stores it
            env.update(
                app_type="isv", tenant_key=DEFAULT_TENANT_KEY, AIRFLOW_VAR_FEISHU_HIRE_APP_TICKET=sandbox.app_ticket
            )
        conf = {"emails": emails, "sandbox_url": sandbox.url}
        done = run(runner, sandbox, "feishu_account_lifecycle", conf, **env)
        assert done.returncode == 0, failed(runner, done)
        state = sandbox.state()
        # The ledger keys a store app's records by its customer tenant too.
        app = sandbox.app_id if app_type == "custom" else f"{sandbox.app_id}@{DEFAULT_TENANT_KEY}"
        with sqlite_ledger(ledger_file) as ledger:
            ids = [ledger.registered_account(app, email) for email in emails]
            assert None not in ids
            assert_paid_exactly_once(ledger, sandbox)
            (reconciled,) = ledger.reconciliations(app)
        assert sorted(e["referral_account_id"] for e in state["ledger"]) == sorted(ids)  # each paid once
        assert [state["accounts"][i]["status"] for i in ids] == [1, 2]  # the leaver deactivated
        assert reconciled.mismatches == () and sandbox.requests["reconciliation"] == 1
        assert ti_states(runner, "feishu_account_lifecycle")[("wait_for_bonus", -1)][0] == "success"
        if app_type == "isv":
            assert sandbox.issued_app_tokens and sandbox.requests["app_token"] >= 1
        logs = logs_of(runner, done)
        assert_no_secret(sandbox, logs)
        assert sandbox.app_ticket not in logs


def test_two_tenants_of_one_store_app_never_answer_for_each_other(runner: AirflowRunner, ledger_file: Path) -> None:
    """One store app installed by two companies, one ledger: each run registers, pays, batches and reconciles its own.

    The same referrers, and the same account ids, in both companies: nothing one tenant's run
    recorded answers for the other's (a registration reused, a reconciliation of the other's
    totals, a payroll batch holding the other's withdrawals).
    """
    runner.add_dag(LIFECYCLE)
    emails = ["ann@example.com", "bo@example.com"]
    with (
        FeishuSandbox([], rate_limits=False, app_type="isv", tenant_key="company_a") as a,
        FeishuSandbox([], rate_limits=False, app_type="isv", tenant_key="company_b") as b,
    ):
        for tenant in (a, b):
            env = ledger_env(ledger_file)
            env.update(
                app_type="isv", tenant_key=tenant.tenant_key, AIRFLOW_VAR_FEISHU_HIRE_APP_TICKET=tenant.app_ticket
            )
            done = run(runner, tenant, "feishu_account_lifecycle", {"emails": emails, "sandbox_url": tenant.url}, **env)
            assert done.returncode == 0, failed(runner, done)
        with sqlite_ledger(ledger_file) as ledger:
            for tenant in (a, b):
                app = f"{tenant.app_id}@{tenant.tenant_key}"
                # Each company's Feishu registered its own referrers: B's run asked B, not A's records.
                assert tenant.requests["register"] == len(emails)
                assert {ledger.registered_account(app, email) for email in emails} == set(tenant.state()["accounts"])
                (reconciled,) = ledger.reconciliations(app)  # against this tenant's Feishu, matching
                assert reconciled.mismatches == () and tenant.requests["reconciliation"] == 1
            # Every batch holds one company's withdrawals only, and together they are what both paid.
            orders = {t.tenant_key: {e["external_order_id"] for e in t.state()["ledger"]} for t in (a, b)}
            assert orders["company_a"] and not orders["company_a"] & orders["company_b"]
            batches = ledger.payroll_batches()
            assert len(batches) == 2
            for batch in batches:
                members = {row.external_order_id for row in batch.members}
                assert members in (orders["company_a"], orders["company_b"])
            assert ledger_payroll(ledger) == sandbox_payroll(a) + sandbox_payroll(b)


def test_a_refused_login_on_the_retry_after_an_unknown_send_is_no_review_and_the_next_try_pays_once(
    runner: AirflowRunner, ledger_file: Path
) -> None:
    """Try 1's answer is lost after Feishu paid; try 2's token is refused; try 3 resends the order id: paid once."""
    runner.add_dag(EXAMPLE)
    account = Account("7300000000000000001", 10, {"CNY": Decimal("1.00")})
    with FeishuSandbox([account], rate_limits=False) as sandbox:
        sandbox.inject("drop_after_commit")  # try 1: Feishu paid, the answer never came
        sandbox.inject("revoke_token", times=2)  # try 2: the gateway refuses its token, and the fresh one too
        conf = {"referral_account_ids": [account.account_id]}
        done = run(runner, sandbox, PAYROLL_DAG, conf, max_attempts=1, **ledger_env(ledger_file))
        assert done.returncode == 0, failed(runner, done)
        assert ti_states(runner, PAYROLL_DAG)[("withdraw_referral_account", 0)] == ("success", 3)
        with sqlite_ledger(ledger_file) as ledger:
            (row,) = ledger.rows(dag_id=PAYROLL_DAG)
            # Try 2 never reached the withdraw endpoint: it left the order sending, not in review.
            assert (row.status, row.sends) == ("paid", 3)
            attempts = ledger.attempts(row.external_order_id)
            assert [a["try_number"] for a in attempts] == [1, 2, 3]
            assert_paid_exactly_once(ledger, sandbox)
        assert len(sandbox.state()["ledger"]) == 1
