"""The payouts console behind a real ``airflow standalone``: Airflow's login, its simple auth manager's roles,
the plugin registered through the provider's metadata, and a review row settled by two people.

One Airflow for the whole module (it is slow to start on a shared machine). Its users:
``admin`` (admin), ``approver`` (user: may edit DAGs) and ``viewer`` (viewer: reads only). The
withdrawals are made in this process through the ledger and the Feishu sandbox — a paid one
and one whose answer the sandbox's ``malformed_answer`` fault garbles (``review``) — under the
example payroll DAG's id, so Airflow's permissions on that DAG decide who sees and settles them.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest

from airflow_provider_feishu_hire.client import FeishuClient
from airflow_provider_feishu_hire.ledger import (
    PAID,
    REVIEW,
    Intent,
    Ledger,
    Mismatch,
    PayrollScope,
    Reconciliation,
    TaskTry,
)
from airflow_provider_feishu_hire.payout import withdraw_account
from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_ID, DEFAULT_APP_SECRET, Account, FeishuSandbox
from tests.conftest import FAST_RETRY, LocalAirflow, free_port, wait_for

DAG = "example_feishu_referral_payroll"
RUN = "console_payday"
PAID_ACCOUNT = Account("7300000000000000001", point_bonus=30, cash_bonus={"CNY": Decimal("120.55")})
REVIEW_ACCOUNT = Account("7300000000000000002", point_bonus=25, cash_bonus={"CNY": Decimal("10.05")})


@dataclass
class Console:
    local: LocalAirflow
    ledger: Ledger
    review_order: str
    paid_order: str
    first_batch: int

    def token(self, user: str) -> str:
        body = json.dumps({"username": user, "password": self.local.password(user)}).encode()
        request = urllib.request.Request(
            self.local.url + "/auth/token", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return str(json.loads(answer.read())["access_token"])

    def call(self, method: str, path: str, *, user: str | None, body: object = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:  # fmt: skip
        """(HTTP status, parsed JSON or text) of a request to the console, as ``user`` (None: not logged in)."""
        sent = {**({"Authorization": f"Bearer {self.token(user)}"} if user else {}), **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        request = urllib.request.Request(self.local.url + path, data=data, headers=sent, method=method)
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=60) as answer:
                status, raw, kind = answer.status, answer.read(), answer.headers.get("content-type", "")
        except urllib.error.HTTPError as exc:
            status, raw, kind = exc.code, exc.read(), exc.headers.get("content-type", "")
        text = raw.decode()
        return status, json.loads(text) if "json" in kind and text else text


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _payout(ledger: Ledger, sandbox: FeishuSandbox) -> tuple[str, str]:
    """One account paid, one in review (the sandbox commits the withdrawal but garbles its answer)."""
    orders = []
    with FeishuClient(DEFAULT_APP_ID, DEFAULT_APP_SECRET, sandbox.url, retry=FAST_RETRY) as client:
        for number, account in enumerate((PAID_ACCOUNT, REVIEW_ACCOUNT)):
            if account is REVIEW_ACCOUNT:
                sandbox.inject("malformed_answer", variant="null_amount")
            order = f"69000000000000000{number}1"
            intent = Intent(order, account.account_id, (1, 2), DEFAULT_APP_ID, DAG, RUN, "withdraw", number)
            withdraw_account(client, ledger, intent)
            orders.append(order)
    return orders[0], orders[1]


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    tmp = tmp_path_factory.mktemp("console")
    ledger_path = tmp / "ledger.db"
    ledger = Ledger(lambda: sqlite3.connect(ledger_path, check_same_thread=False, isolation_level=None), "sqlite")
    ledger.migrate()
    with FeishuSandbox([PAID_ACCOUNT, REVIEW_ACCOUNT], rate_limits=False) as sandbox:
        paid_order, review_order = _payout(ledger, sandbox)
    batch = ledger.make_payroll_batch(PayrollScope("run", dag_id=DAG, run_id=RUN), TaskTry(DAG, RUN, "export_payroll"))
    assert batch is not None and [m.external_order_id for m in batch.members] == [paid_order]
    mismatch = Mismatch(PAID_ACCOUNT.account_id, 30, 55)  # Feishu says more was paid than the ledger knows
    record = Reconciliation(DEFAULT_APP_ID, 0, 2**40, {PAID_ACCOUNT.account_id: 30}, (mismatch,))
    ledger.record_reconciliation(record, dag_id=DAG, run_id=RUN, task_id="reconcile")
    local = LocalAirflow(tmp / "home", port=free_port(), sandbox_port=free_port(), free_log_ports=True)
    local.settings["core"]["simple_auth_manager_users"] += ",viewer:viewer"
    local.env.update(
        AIRFLOW_CONN_FEISHU_HIRE_LEDGER=json.dumps({"conn_type": "sqlite", "host": str(ledger_path)}),
    )
    try:
        local.start(log=tmp / "standalone.log")
        made = Console(local, ledger, review_order, paid_order, batch.id)
        # Permissions follow DAGs Airflow knows: wait until the dag-processor has parsed the example.
        wait_for(lambda: made.call("GET", f"/api/v2/dags/{DAG}", user="admin")[0] == 200, f"{DAG} parsed")
        yield made
    finally:
        local.stop()
        ledger.close()


API = "/feishu-payouts/api"


def test_the_plugin_is_registered_and_its_view_is_in_the_navigation(console: Console) -> None:
    status, plugins = console.call("GET", "/api/v2/plugins", user="admin")
    assert status == 200
    (plugin,) = [p for p in plugins["plugins"] if p["name"] == "feishu_hire_payouts"]
    (view,) = plugin["external_views"]
    assert (view["href"], view["url_route"], view["destination"]) == ("/feishu-payouts/", "feishu-payouts", "nav")
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/feishu-payouts"


def test_without_login_the_api_is_401_and_the_page_goes_to_the_login(console: Console) -> None:
    for path in ("/withdrawals", "/needs-attention", f"/withdrawals/{console.review_order}", "/payroll-batches",
                 f"/payroll-batches/{console.first_batch}/csv", "/reconciliations", "/paid-per-day"):  # fmt: skip
        assert console.call("GET", API + path, user=None)[0] == 401, path
    assert console.call("POST", f"{API}/settlements/1/confirm", user=None, body={})[0] == 401
    assert console.call("GET", API + "/withdrawals", user=None, headers={"Authorization": "Bearer forged"})[0] == 403
    status, _ = console.call("GET", "/feishu-payouts/", user=None)
    assert status in (302, 303, 307)
    # With the UI's session cookie, the page is served (from the wheel: no CDN anywhere in it).
    status, page = console.call(
        "GET", "/feishu-payouts/", user=None, headers={"Cookie": f"_token={console.token('viewer')}"}
    )
    assert status == 200 and "Feishu payouts" in page and "http" not in page.replace("http://www.w3.org", "")


def test_a_viewer_reads_rows_and_money_but_cannot_settle(console: Console) -> None:
    status, found = console.call("GET", f"{API}/withdrawals?dag_id={DAG}&run_id={RUN}", user="viewer")
    assert status == 200
    rows = {row["external_order_id"]: row for row in found["withdrawals"]}
    assert rows[console.paid_order]["status"] == PAID
    assert rows[console.paid_order]["cash_bonus"] == {"CNY": "120.55"} and rows[console.paid_order]["point_bonus"] == 30
    assert rows[console.paid_order]["payroll_batch_id"] == console.first_batch
    assert rows[console.review_order]["status"] == REVIEW
    status, detail = console.call("GET", f"{API}/withdrawals/{console.review_order}", user="viewer")
    assert status == 200 and detail["raw_answer"] and detail["may_edit"] is False
    body = {"paid": False, "evidence": "viewer guesses"}
    assert (
        console.call("POST", f"{API}/withdrawals/{console.review_order}/settlements", user="viewer", body=body)[0]
        == 403
    )
    assert console.ledger.settlements(console.review_order) == []


def test_bad_input_and_unknown_ids_are_refused(console: Console) -> None:
    assert console.call("GET", f"{API}/withdrawals?status=lost", user="admin")[0] == 422
    assert console.call("GET", f"{API}/withdrawals?date_from=yesterday", user="admin")[0] == 422
    assert console.call("GET", f"{API}/withdrawals?limit=100000", user="admin")[0] == 422
    assert console.call("GET", f"{API}/withdrawals?dag_id=no_such_dag", user="admin")[0] == 403
    assert console.call("GET", f"{API}/withdrawals/404404", user="admin")[0] == 404
    assert console.call("GET", f"{API}/payroll-batches/999999", user="admin")[0] == 404
    assert console.call("POST", f"{API}/settlements/999999/confirm", user="admin", body={})[0] == 404


def test_a_review_row_settled_by_one_confirmed_by_another_joins_the_next_batch(console: Console) -> None:
    order = console.review_order
    body = {"paid": True, "trans_time": 1_764_756_000_000, "point_bonus": 25, "cash_bonus": {"CNY": "10.05"},
            "evidence": "Feishu admin console shows the withdrawal: 25 points, 10.05 CNY"}  # fmt: skip
    status, proposal = console.call("POST", f"{API}/withdrawals/{order}/settlements", user="admin", body=body)
    assert status == 201, proposal
    assert proposal["proposed_by"] == "admin"
    confirm = f"{API}/settlements/{proposal['id']}/confirm"
    status, refused = console.call("POST", confirm, user="admin", body={})
    assert status == 403 and "another person" in refused["detail"]
    assert console.ledger.get(order).status == REVIEW  # type: ignore[union-attr]
    assert console.call("POST", confirm, user="viewer", body={})[0] == 403
    status, row = console.call("POST", confirm, user="approver", body={})
    assert status == 200, row
    assert row["status"] == PAID and row["point_bonus"] == 25 and row["cash_bonus"] == {"CNY": "10.05"}
    (settlement,) = console.ledger.settlements(order)
    assert (settlement.proposed_by, settlement.confirmed_by) == ("admin", "approver")
    # The run's next export claims it: what the export does, in this process.
    scope, maker = PayrollScope("run", dag_id=DAG, run_id=RUN), TaskTry(DAG, RUN, "export_payroll", try_number=2)
    batch = console.ledger.make_payroll_batch(scope, maker)
    assert batch is not None
    status, listed = console.call("GET", f"{API}/payroll-batches?dag_id={DAG}", user="viewer")
    assert status == 200 and [b["id"] for b in listed["payroll_batches"]][:2] == [batch.id, console.first_batch]
    # Made in this process, announced by no export: Airflow's metadata database holds no asset event of them.
    assert [b["asset_events"] for b in listed["payroll_batches"]][:2] == [[], []]
    status, shown = console.call("GET", f"{API}/payroll-batches/{batch.id}", user="viewer")
    assert [m["external_order_id"] for m in shown["members"]] == [order]
    assert (shown["point_bonus"], shown["cash_bonus"]) == (25, {"CNY": "10.05"})
    status, text = console.call("GET", f"{API}/payroll-batches/{batch.id}/csv", user="viewer")
    lines = list(csv.DictReader(io.StringIO(text)))
    assert status == 200 and {(r["external_order_id"], r["bonus_type"], r["amount"]) for r in lines} == {
        (order, "points", "25"), (order, "cash", "10.05")
    }  # fmt: skip
    status, attention = console.call("GET", f"{API}/needs-attention", user="viewer")
    assert attention["review"]["rows"] == [] and attention["pending_settlements"]["rows"] == []


def test_reconciliation_mismatch_and_paid_per_day(console: Console) -> None:
    status, found = console.call("GET", f"{API}/reconciliations?only_mismatched=true", user="viewer")
    assert status == 200
    assert found["reconciliations"][0]["mismatches"] == [
        {"referral_account_id": PAID_ACCOUNT.account_id, "ledger_point_bonus": 30, "feishu_point_bonus": 55}
    ]
    row = console.ledger.get(console.paid_order)
    assert row is not None and row.withdrawal is not None
    day = datetime.fromtimestamp(row.withdrawal.trans_time / 1000, timezone.utc).date().isoformat()
    status, per_day = console.call("GET", f"{API}/paid-per-day?date_from={day}&date_to={day}", user="viewer")
    assert status == 200
    assert per_day["days"] == [{"day": day, "withdrawals": 1, "point_bonus": 30, "cash_bonus": {"CNY": "120.55"}}]
