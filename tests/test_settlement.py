"""Settling a ``review`` order takes two people and evidence, through the command, against a ledger and the sandbox.

The sandbox pays an order and answers with amounts that do not parse (its ``malformed_answer``
fault): the ledger keeps the raw answer in ``review`` and never re-sends it. ``python -m
airflow_provider_feishu_hire.settlement`` shows what is known, one person proposes what
Feishu paid, the same person cannot confirm it, a second person does; the order is then
paid and joins the next payroll batch, to the cent of Feishu's own ledger.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from airflow_provider_feishu_hire.client import FeishuClient
from airflow_provider_feishu_hire.ledger import PAID, REVIEW, RUN_SCOPE, Intent, Ledger, PayrollScope
from airflow_provider_feishu_hire.payout import withdraw_account
from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_ID, DEFAULT_APP_SECRET, Account, FeishuSandbox
from tests.conftest import FAST_RETRY, ROOT, assert_paid_exactly_once, connection_json

ACCOUNT = "7900000000000000123"
ORDER = "7412589630258749999"
INTENT = Intent(ORDER, ACCOUNT, (1, 2), DEFAULT_APP_ID, "payroll", "manual__settle", "withdraw")


def settle(tmp_path: Path, sandbox: FeishuSandbox, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "AIRFLOW_HOME": str(tmp_path / "home"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_FEISHU_HIRE_LEDGER": json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "ledger.db")}),
        "AIRFLOW_CONN_FEISHU_HIRE_DEFAULT": connection_json(sandbox.url),
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "airflow_provider_feishu_hire.settlement", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_a_review_order_is_settled_by_two_people_and_joins_the_next_batch(tmp_path: Path) -> None:
    with FeishuSandbox([Account(ACCOUNT, 25, {"CNY": Decimal("10.00")})], rate_limits=False) as sandbox:
        ledger = Ledger(lambda: sqlite3.connect(tmp_path / "ledger.db", isolation_level=None), "sqlite")
        ledger.migrate()
        sandbox.inject("malformed_answer", variant="text_amount")
        with FeishuClient(DEFAULT_APP_ID, DEFAULT_APP_SECRET, sandbox.url, retry=FAST_RETRY) as client:
            assert withdraw_account(client, ledger, INTENT).status == REVIEW

        listed = settle(tmp_path, sandbox, "list")
        assert listed.returncode == 0 and ORDER in listed.stdout and "review" in listed.stdout
        shown = settle(tmp_path, sandbox, "show", ORDER)
        assert shown.returncode == 0, shown.stderr
        assert "raw answer" in shown.stdout and "attempt: try 1 of withdraw" in shown.stdout
        assert "Feishu's balance now: 0 points, cash none" in shown.stdout

        (paid,) = sandbox.state()["ledger"]  # what Feishu's own record says: the person's evidence
        trans_time = paid["trans_time"]
        refused = settle(tmp_path, sandbox, "propose", ORDER, "--paid", "--trans-time", str(trans_time),
                         "--points", "25", "--cash", "CNY=10.00", "--evidence", "   ", "--by", "alice")  # fmt: skip
        assert refused.returncode == 2 and "evidence is empty" in refused.stderr
        evidence = f"Feishu console: order {ORDER}, 25 points and 10.00 CNY"
        proposed = settle(tmp_path, sandbox, "propose", ORDER, "--paid", "--trans-time", str(trans_time),
                          "--points", "25", "--cash", "CNY=10.00", "--evidence", evidence, "--by", "alice")  # fmt: skip
        assert proposed.returncode == 0, proposed.stderr
        assert ledger.get(ORDER).status == REVIEW  # type: ignore[union-attr]  # one person is not enough
        (proposal,) = ledger.settlements(ORDER)

        own = settle(tmp_path, sandbox, "confirm", str(proposal.id), "--by", "alice")
        assert own.returncode == 2 and "another person must confirm" in own.stderr
        assert ledger.get(ORDER).status == REVIEW  # type: ignore[union-attr]
        confirmed = settle(tmp_path, sandbox, "confirm", str(proposal.id), "--by", "bob")
        assert confirmed.returncode == 0, confirmed.stderr
        row = ledger.get(ORDER)
        assert row is not None and row.status == PAID and "alice and bob" in (row.error_msg or "")
        again = settle(tmp_path, sandbox, "confirm", str(proposal.id), "--by", "carol")
        assert again.returncode == 2 and "confirmed by bob already" in again.stderr

        batch = ledger.make_payroll_batch(PayrollScope(RUN_SCOPE, "payroll", "manual__settle"), INTENT.task_try)
        assert batch is not None and [r.external_order_id for r in batch.members] == [ORDER]
        assert_paid_exactly_once(ledger, sandbox)
        assert sandbox.requests["withdraw"] == 1  # never re-sent
        ledger.close()
