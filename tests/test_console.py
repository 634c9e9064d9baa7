"""The payouts console's API in process: rows, money, filters and permissions, with Airflow's auth replaced.

The user and the auth manager are stand-ins whose permissions each test chooses (which DAGs
a user may read, which they may edit), so every permission decision of the console is
exercised, including DAG-level ones the simple auth manager cannot express. The ledger is
a real one (SQLite), written through the ledger's own methods. ``test_console_airflow.py``
runs the same API behind a real ``airflow standalone`` and its login.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from fastapi import HTTPException, Request
from fastapi.testclient import TestClient
from sqlalchemy import update

from airflow_provider_feishu_hire.console import app as console
from airflow_provider_feishu_hire.console import queries
from airflow_provider_feishu_hire.ledger import (
    REVIEW,
    Intent,
    Ledger,
    Mismatch,
    PayrollScope,
    Reconciliation,
    TaskTry,
    schema,
)
from airflow_provider_feishu_hire.payroll import COLUMNS
from airflow_provider_feishu_hire.withdrawal import Withdrawal

PAYDAY = "payday"
OTHER = "other_dag"
T0 = int(datetime(2026, 11, 30, 9, tzinfo=timezone.utc).timestamp() * 1000)  # a Monday morning, UTC
DAY = 86_400_000


@dataclass
class FakeUser:
    name: str

    def get_name(self) -> str:
        return self.name


@dataclass
class FakeAuth:
    """Which DAGs each user may read and edit, as an auth manager would answer."""

    read: dict[str, set[str]] = field(default_factory=dict)
    edit: dict[str, set[str]] = field(default_factory=dict)

    def get_authorized_dag_ids(self, *, user: FakeUser, method: str = "GET") -> set[str]:
        return set((self.read if method == "GET" else self.edit).get(user.name, set()))

    def is_authorized_dag(self, *, method: str, user: FakeUser, details: Any = None, access_entity: Any = None) -> bool:
        return details.id in self.get_authorized_dag_ids(user=user, method="GET" if method == "GET" else "PUT")


def pay(ledger: Ledger, order: str, account: str, *, dag: str = PAYDAY, run: str = "run1", points: int = 0,
        cash: dict[str, str] | None = None, at: int = T0, app: str = "cli_app") -> None:  # fmt: skip
    intent = Intent(order, account, (1, 2), app, dag, run, "withdraw", 0)
    claim = ledger.claim(intent)
    money = {c: Decimal(a) for c, a in (cash or {}).items()}
    ledger.record_paid(claim, Withdrawal(account, order, at, points, money))


def unreadable(ledger: Ledger, order: str, account: str, *, dag: str = PAYDAY, run: str = "run1") -> None:
    claim = ledger.claim(Intent(order, account, (1, 2), "cli_app", dag, run, "withdraw", 1))
    ledger.record_unreadable(claim, '{"withdrawal_details": {"point_bonus": null}}', "point_bonus is null")


@pytest.fixture
def ledger(ledger: Ledger) -> Ledger:
    """conftest's empty ledger (SQLite and PostgreSQL), with a payday's rows: paid, in review, batched, reconciled."""
    made = ledger
    pay(made, "1001", "7001", points=10, cash={"CNY": "100.10"})
    pay(made, "1002", "7002", points=5, cash={"CNY": "0.95", "USD": "2.50"}, at=T0 + 3_600_000)
    pay(made, "1003", "7003", points=7, cash={"CNY": "1.00"}, at=T0 + DAY)
    pay(made, "2001", "7100", dag=OTHER, points=1000, cash={"CNY": "999.99"})
    unreadable(made, "1004", "7004")
    made.make_payroll_batch(PayrollScope("run", dag_id=PAYDAY, run_id="run1"), TaskTry(PAYDAY, "run1", "export"))
    made.record_reconciliation(
        Reconciliation("cli_app", T0, T0 + DAY, {"7001": 10}, (Mismatch("7001", 10, 15),)),
        dag_id=PAYDAY, run_id="run1", task_id="reconcile",
    )  # fmt: skip
    return made


@pytest.fixture
def auth() -> FakeAuth:
    return FakeAuth(
        read={"alice": {PAYDAY, OTHER}, "bob": {PAYDAY, OTHER}, "viewer": {PAYDAY}, "outsider": set()},
        edit={"alice": {PAYDAY, OTHER}, "bob": {PAYDAY, OTHER}},
    )


class Clients:
    """Test clients, each logged in as one user (None: not logged in)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def as_(self, name: str | None) -> TestClient:
        return TestClient(self.app, headers={"x-test-user": name} if name else {})


@pytest.fixture
def clients(ledger: Ledger, auth: FakeAuth) -> Clients:
    app = console.create_app()
    made = Clients(app)

    def user(request: Request) -> FakeUser:
        name = request.headers.get("x-test-user")
        if name is None:
            raise HTTPException(401, "Not authenticated")
        return FakeUser(name)

    app.dependency_overrides[console.get_user] = user
    app.dependency_overrides[console.get_auth_manager] = lambda: auth
    app.dependency_overrides[console.get_ledger] = lambda: ledger
    app.dependency_overrides[console.get_asset_event_finder] = lambda: announced
    return made


def announced(batches: Any) -> dict[int, list[dict[str, Any]]]:
    """Airflow's asset events, as if the export of PAYDAY's run1 had announced batch 1 once."""
    return {
        b["id"]: [{"id": 7, "asset_name": "feishu_hire_payroll", "payroll_batch_ids": [1], "asset_url": "/assets/3"}]
        for b in batches
        if b["id"] == 1
    }


def test_no_login_is_401_on_every_endpoint(clients: Clients) -> None:
    client = clients.as_(None)
    for path in ("withdrawals", "needs-attention", "withdrawals/1001", "payroll-batches", "payroll-batches/1",
                 "payroll-batches/1/csv", "reconciliations", "paid-per-day", "me"):  # fmt: skip
        assert client.get(f"/api/{path}").status_code == 401, path
    assert client.post("/api/withdrawals/1004/settlements", json={"paid": False, "evidence": "x"}).status_code == 401
    assert client.post("/api/settlements/1/confirm", json={}).status_code == 401


def test_withdrawals_show_money_as_decimal_strings_and_only_readable_dags(clients: Clients) -> None:
    found = clients.as_("alice").get("/api/withdrawals", params={"limit": 500}).json()
    by_order = {row["external_order_id"]: row for row in found["withdrawals"]}
    assert set(by_order) == {"1001", "1002", "1003", "1004", "2001"}
    assert by_order["1002"]["cash_bonus"] == {"CNY": "0.95", "USD": "2.50"}
    assert by_order["1001"]["point_bonus"] == 10 and by_order["1001"]["payroll_batch_id"] == 1
    assert by_order["1004"]["status"] == REVIEW and by_order["1004"]["point_bonus"] is None
    assert by_order["1004"]["payroll_batch_id"] is None and by_order["1004"]["attempts"] == 1
    assert by_order["1001"]["task_url"] == "/dags/payday/runs/run1/tasks/withdraw/mapped/0"
    assert by_order["1001"]["trans_time_iso"] == "2026-11-30T09:00:00.000+00:00"
    # The viewer reads only PAYDAY: OTHER's row is not shown, and asking for OTHER is refused.
    viewer = clients.as_("viewer")
    assert {r["dag_id"] for r in viewer.get("/api/withdrawals").json()["withdrawals"]} == {PAYDAY}
    assert viewer.get("/api/withdrawals", params={"dag_id": OTHER}).status_code == 403
    assert clients.as_("outsider").get("/api/withdrawals").json()["withdrawals"] == []


def test_filters_and_pagination(clients: Clients) -> None:
    client = clients.as_("alice")

    def orders(**params: Any) -> list[str]:
        answer = client.get("/api/withdrawals", params=params)
        assert answer.status_code == 200, answer.text
        return sorted(row["external_order_id"] for row in answer.json()["withdrawals"])

    assert orders(dag_id=OTHER) == ["2001"]
    assert orders(status="review") == ["1004"]
    assert orders(referral_account_id="7002") == ["1002"]
    assert orders(payroll_batch_id=1) == ["1001", "1002", "1003"]
    assert orders(app_id="nobody") == []
    today = datetime.now(timezone.utc).date().isoformat()
    assert len(orders(date_from=today, date_to=today)) == 5
    assert orders(date_to="2000-01-01") == []
    first = client.get("/api/withdrawals", params={"limit": 2}).json()
    second = client.get("/api/withdrawals", params={"limit": 2, "offset": 2}).json()
    third = client.get("/api/withdrawals", params={"limit": 2, "offset": 4}).json()
    assert first["more"] and second["more"] and not third["more"]
    seen = [r["external_order_id"] for page in (first, second, third) for r in page["withdrawals"]]
    assert sorted(seen) == ["1001", "1002", "1003", "1004", "2001"]


@pytest.mark.parametrize(
    "params",
    [
        {"status": "lost"},
        {"date_from": "2026-13-01"},
        {"date_from": "2026-12-02", "date_to": "2026-12-01"},
        {"limit": 0},
        {"limit": 501},
        {"offset": -1},
        {"payroll_batch_id": "one"},
        {"dag_id": "x" * 251},
    ],
)
def test_bad_filters_are_refused(clients: Clients, params: dict[str, Any]) -> None:
    assert clients.as_("alice").get("/api/withdrawals", params=params).status_code == 422


def test_unknown_ids_are_404(clients: Clients) -> None:
    client = clients.as_("alice")
    assert client.get("/api/withdrawals/999").status_code == 404
    assert client.get("/api/payroll-batches/99").status_code == 404
    assert client.get("/api/payroll-batches/99/csv").status_code == 404
    assert client.post("/api/withdrawals/999/settlements", json={"paid": False, "evidence": "x"}).status_code == 404
    assert client.post("/api/settlements/99/confirm", json={}).status_code == 404


def test_order_detail_has_attempts_raw_answer_and_settlements(clients: Clients) -> None:
    row = clients.as_("alice").get("/api/withdrawals/1004").json()
    assert row["raw_answer"] == '{"withdrawal_details": {"point_bonus": null}}'
    assert [a["outcome"] for a in row["attempt_list"]] == [REVIEW]
    assert row["settlements"] == [] and row["may_edit"] is True
    assert clients.as_("viewer").get("/api/withdrawals/1004").json()["may_edit"] is False
    assert clients.as_("viewer").get("/api/withdrawals/2001").status_code == 403


def test_settle_by_one_confirm_by_another_then_it_joins_the_next_batch(clients: Clients, ledger: Ledger) -> None:
    order = "/api/withdrawals/1004/settlements"
    body = {"paid": True, "trans_time": T0 + 60_000, "point_bonus": 25, "cash_bonus": {"CNY": "10.05"},
            "evidence": "Feishu console: withdrawal 25 points + 10.05 CNY"}  # fmt: skip
    # A viewer may read the row but not settle it; the outsider may not even read it.
    assert clients.as_("viewer").post(order, json=body).status_code == 403
    assert clients.as_("outsider").post(order, json=body).status_code == 403
    # Money is a decimal string: a float, a bad currency or a negative amount is refused before the ledger.
    alice = clients.as_("alice")
    for bad in ({"CNY": 10.05}, {"cny": "10.05"}, {"CNY": "-1"}, {"CNY": "1e3"}, {"CNY": "0.001"}, {"CNY\n": "1"}):
        assert alice.post(order, json={**body, "cash_bonus": bad}).status_code == 422, bad
    assert alice.post(order, json={**body, "point_bonus": 2.5}).status_code == 422
    assert alice.post(order, json={**body, "cash_bonus": {"CNY": "1.00\n"}}).status_code == 422
    assert alice.post(order, json={**body, "point_bonus": 2**63}).status_code == 422  # not a database error
    # A cross-site form cannot send JSON: a body that is not declared JSON is refused, and so is no body.
    plain = alice.post(order, content=b'{"paid": false, "evidence": "x"}', headers={"Content-Type": "text/plain"})
    assert plain.status_code in (415, 422)
    assert alice.post("/api/settlements/1/confirm").status_code == 422
    assert ledger.settlements("1004") == []
    assert alice.post(order, json={**body, "evidence": "   "}).status_code == 409  # the ledger's own rule
    proposed = alice.post(order, json=body)
    assert proposed.status_code == 201, proposed.text
    settlement = proposed.json()
    assert settlement["proposed_by"] == "alice" and settlement["cash_bonus"] == {"CNY": "10.05"}
    assert ledger.get("1004").status == REVIEW  # nothing changes until a second person confirms
    attention = alice.get("/api/needs-attention").json()
    assert [s["id"] for s in attention["pending_settlements"]["rows"]] == [settlement["id"]]
    confirm = f"/api/settlements/{settlement['id']}/confirm"
    assert alice.post(confirm, json={}).status_code == 403  # the proposer cannot confirm
    assert clients.as_("viewer").post(confirm, json={}).status_code == 403  # no edit access
    confirmed = clients.as_("bob").post(confirm, json={})
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "paid" and confirmed.json()["cash_bonus"] == {"CNY": "10.05"}
    assert ledger.settlements("1004")[0].confirmed_by == "bob"
    assert clients.as_("bob").post(confirm, json={}).status_code == 409  # already confirmed
    assert alice.post(order, json=body).status_code == 409  # paid now: nothing left to settle
    # The next export claims it; the console shows it in that batch and its CSV.
    batch = ledger.make_payroll_batch(PayrollScope("run", dag_id=PAYDAY, run_id="run1"), TaskTry(PAYDAY, "run1", "e"))
    assert batch is not None
    shown = alice.get(f"/api/payroll-batches/{batch.id}").json()
    assert [m["external_order_id"] for m in shown["members"]] == ["1004"]
    assert shown["point_bonus"] == 25 and shown["cash_bonus"] == {"CNY": "10.05"}
    lines = list(csv.DictReader(io.StringIO(alice.get(f"/api/payroll-batches/{batch.id}/csv").text)))
    assert [(r["bonus_type"], r["currency"], r["amount"]) for r in lines] == [("cash", "CNY", "10.05"),
                                                                               ("points", "", "25")]  # fmt: skip
    assert {r["payroll_batch_id"] for r in lines} == {str(batch.id)}


def test_needs_attention_lists_review_and_stuck_rows(clients: Clients, ledger: Ledger) -> None:
    ledger.claim(Intent("1005", "7005", (1, 2), "cli_app", PAYDAY, "run1", "withdraw", 2))  # in flight: not stuck
    found = clients.as_("alice").get("/api/needs-attention").json()
    assert [r["external_order_id"] for r in found["review"]["rows"]] == ["1004"]
    assert found["stuck_sending"]["rows"] == []
    old = Ledger(ledger._connect, ledger.dialect)  # the same ledger from another connection
    with old.engine.begin() as conn:
        conn.execute(update(schema.withdrawal_attempt).values(started_at="2000-01-01T00:00:00.000+00:00"))
    old.close()
    found = clients.as_("alice").get("/api/needs-attention").json()
    assert [r["external_order_id"] for r in found["stuck_sending"]["rows"]] == ["1005"]
    assert clients.as_("outsider").get("/api/needs-attention").json()["review"]["rows"] == []


def test_batches_csv_matches_the_payroll_columns_and_respects_member_dags(clients: Clients, ledger: Ledger) -> None:
    alice = clients.as_("alice")
    (batch,) = alice.get("/api/payroll-batches").json()["payroll_batches"]
    assert batch["withdrawals"] == 3 and batch["accounts"] == 3 and batch["point_bonus"] == 22
    assert batch["cash_bonus"] == {"CNY": "102.05", "USD": "2.50"}
    text = alice.get("/api/payroll-batches/1/csv").text
    assert text.splitlines()[0] == ",".join(COLUMNS)
    assert len(text.splitlines()) == 1 + 7  # 3 points lines, 4 cash lines
    # An app-scope batch holding OTHER's withdrawal is not shown to someone who cannot read OTHER.
    app_batch = ledger.make_payroll_batch(PayrollScope("app", app_id="cli_app"), TaskTry(PAYDAY, "run2", "export"))
    assert app_batch is not None
    assert clients.as_("viewer").get(f"/api/payroll-batches/{app_batch.id}").status_code == 403
    assert clients.as_("viewer").get(f"/api/payroll-batches/{app_batch.id}/csv").status_code == 403
    assert alice.get(f"/api/payroll-batches/{app_batch.id}").status_code == 200
    assert clients.as_("viewer").get("/api/payroll-batches", params={"dag_id": OTHER}).status_code == 403


def test_reconciliations_with_mismatches(clients: Clients) -> None:
    found = clients.as_("alice").get("/api/reconciliations", params={"only_mismatched": True}).json()
    (record,) = found["reconciliations"]
    assert record["agrees"] is False and record["mismatches"] == [
        {"referral_account_id": "7001", "ledger_point_bonus": 10, "feishu_point_bonus": 15}
    ]
    assert clients.as_("outsider").get("/api/reconciliations").json()["reconciliations"] == []


def test_paid_per_day_is_exact_and_readable_only(clients: Clients) -> None:
    params = {"date_from": "2026-11-29", "date_to": "2026-12-02"}
    found = clients.as_("alice").get("/api/paid-per-day", params=params).json()
    assert found["days"] == [
        {"day": "2026-11-30", "withdrawals": 3, "point_bonus": 1015, "cash_bonus": {"CNY": "1101.04", "USD": "2.50"}},
        {"day": "2026-12-01", "withdrawals": 1, "point_bonus": 7, "cash_bonus": {"CNY": "1.00"}},
    ]
    assert found["totals"] == {"withdrawals": 4, "point_bonus": 1022, "cash_bonus": {"CNY": "1102.04", "USD": "2.50"}}
    viewer = clients.as_("viewer").get("/api/paid-per-day", params=params).json()
    assert viewer["totals"]["cash_bonus"] == {"CNY": "102.05", "USD": "2.50"}  # OTHER's 999.99 is not theirs to see
    bad = clients.as_("alice")
    assert bad.get("/api/paid-per-day", params={"date_from": "2020-01-01", "date_to": "2026-01-01"}).status_code == 422
    assert bad.get("/api/paid-per-day", params={"date_from": "2026-12-02", "date_to": "2026-12-01"}).status_code == 422


def test_the_page_redirects_to_login_without_a_session(clients: Clients, monkeypatch: pytest.MonkeyPatch) -> None:
    class Login:
        def get_url_login(self, **kwargs: Any) -> str:
            return "/auth/login?next=" + kwargs["next_url"]

    monkeypatch.setattr(console, "get_auth_manager", lambda: Login())
    answer = clients.as_(None).get("/", follow_redirects=False)
    assert answer.status_code == 307 and answer.headers["location"].startswith("/auth/login")
    assert clients.as_(None).get("/static/console.js").status_code == 200  # code, no data


def test_queries_refuse_an_unknown_status() -> None:
    with pytest.raises(ValueError, match="unknown"):
        queries.WithdrawalFilter(status="lost")


def test_importing_the_plugin_is_cheap_and_builds_nothing() -> None:
    """Airflow imports the plugin in every component: no FastAPI, no ledger, no hook until a request comes."""
    import subprocess
    import sys

    probe = (
        "import sys, airflow_provider_feishu_hire.console.plugin as p; "
        "print(sorted(m for m in ('fastapi', 'airflow_provider_feishu_hire.console.app', "
        "'airflow_provider_feishu_hire.ledger', 'airflow_provider_feishu_hire.hooks.ledger') if m in sys.modules)); "
        "print(p.FeishuPayoutsPlugin.fastapi_apps[0]['url_prefix'], p.FeishuPayoutsPlugin.external_views[0]['href'])"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split("\n")[:2] == ["[]", "/feishu-payouts /feishu-payouts/"]


def test_a_ledger_that_cannot_open_is_a_503_naming_no_detail(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "postgresql://payouts:s3cr3t-password@db.invalid:5432/payouts"
    monkeypatch.setenv("AIRFLOW_CONN_FEISHU_HIRE_LEDGER", secret)
    monkeypatch.setattr(console, "_ledger", None)
    with pytest.raises(HTTPException) as raised:
        console.get_ledger()
    assert raised.value.status_code == 503 and "s3cr3t" not in str(raised.value.detail)
    assert console._ledger is None  # tried again on the next request


# -- every endpoint: who may not, and what it refuses ----------------------------------------------------

PAYDAY_SETTLEMENT = {"paid": False, "evidence": "Feishu shows no withdrawal of this order"}


def test_a_user_who_may_read_nothing_sees_nothing_and_may_do_nothing(clients: Clients, ledger: Ledger) -> None:
    """Lists answer empty (the user may use the console, there is just nothing of theirs); anything named is 403."""
    proposal = ledger.propose_settlement("1004", paid=False, evidence="nothing moved", proposed_by="alice")
    outsider = clients.as_("outsider")
    assert outsider.get("/api/me").json() == {"name": "outsider", "readable_dags": []}
    for path, key in (("withdrawals", "withdrawals"), ("payroll-batches", "payroll_batches"),
                      ("reconciliations", "reconciliations")):  # fmt: skip
        assert outsider.get(f"/api/{path}").json()[key] == [], path
    attention = outsider.get("/api/needs-attention").json()
    assert all(attention[k]["rows"] == [] for k in ("review", "stuck_sending", "needs_approval", "rejected"))
    assert attention["pending_settlements"]["rows"] == []
    assert (
        outsider.get("/api/paid-per-day", params={"date_from": "2026-11-30", "date_to": "2026-12-01"}).json()["days"]
        == []
    )
    for path in ("withdrawals/1004", "payroll-batches/1", "payroll-batches/1/csv", f"withdrawals?dag_id={PAYDAY}",
                 f"payroll-batches?dag_id={PAYDAY}", f"reconciliations?dag_id={PAYDAY}",
                 f"paid-per-day?dag_id={PAYDAY}"):  # fmt: skip
        assert outsider.get(f"/api/{path}").status_code == 403, path
    assert outsider.post("/api/withdrawals/1004/settlements", json=PAYDAY_SETTLEMENT).status_code == 403
    assert outsider.post(f"/api/settlements/{proposal.id}/confirm", json={}).status_code == 403
    assert ledger.settlements("1004")[0].confirmed_by is None


def test_a_viewer_may_read_one_dag_but_not_another_nor_act(clients: Clients, ledger: Ledger) -> None:
    viewer = clients.as_("viewer")
    for path in (f"reconciliations?dag_id={OTHER}", f"paid-per-day?dag_id={OTHER}", "withdrawals/2001"):
        assert viewer.get(f"/api/{path}").status_code == 403, path
    assert viewer.get(f"/api/reconciliations?dag_id={PAYDAY}").status_code == 200
    assert viewer.post("/api/withdrawals/2001/settlements", json=PAYDAY_SETTLEMENT).status_code == 403
    proposal = ledger.propose_settlement("1004", paid=False, evidence="nothing moved", proposed_by="alice")
    assert viewer.post(f"/api/settlements/{proposal.id}/confirm", json={}).status_code == 403
    assert ledger.get("1004").status == REVIEW


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("payroll-batches?limit=0", 422),
        ("payroll-batches?offset=-1", 422),
        ("payroll-batches/0", 422),
        ("payroll-batches/one", 422),
        ("payroll-batches/-1/csv", 422),
        ("reconciliations?only_mismatched=perhaps", 422),
        ("reconciliations?limit=501", 422),
        ("paid-per-day?date_from=30.11.2026", 422),
        ("paid-per-day?date_to=2026-02-30", 422),
        ("paid-per-day?date_from=2026-01-01&date_to=2026-04-03", 422),  # 93 days: 92 is the most
        ("needs-attention?limit=0", 422),
        ("withdrawals?date_to=tomorrow", 422),
        ("withdrawals?payroll_batch_id=0", 422),
        ("withdrawals/" + "9" * 65, 422),
        ("withdrawals/no-such-order", 404),
        ("payroll-batches/424242/csv", 404),
    ],
)
def test_refused_reads(clients: Clients, path: str, status: int) -> None:
    assert clients.as_("alice").get(f"/api/{path}").status_code == status


@pytest.mark.parametrize(
    "body",
    [
        {"evidence": "no outcome given"},
        {"paid": "yes", "evidence": "a string is not a yes"},
        {"paid": False},
        {"paid": False, "evidence": ""},
        {"paid": False, "evidence": "x" * 4001},
        {"paid": True, "evidence": "negative time", "trans_time": -1, "point_bonus": 1},
        {"paid": True, "evidence": "negative points", "trans_time": T0, "point_bonus": -5},
        {"paid": False, "evidence": "who asked", "proposed_by": "bob"},  # the user is Airflow's, never the body's
        {"paid": True, "evidence": "too many", "trans_time": T0, "cash_bonus": {f"C{i:02d}": "1" for i in range(21)}},
    ],
)
def test_refused_proposals(clients: Clients, ledger: Ledger, body: dict[str, Any]) -> None:
    assert clients.as_("alice").post("/api/withdrawals/1004/settlements", json=body).status_code == 422
    assert ledger.settlements("1004") == []


def test_refused_confirmations(clients: Clients, ledger: Ledger) -> None:
    """Unknown ids, a body with anything in it, one's own proposal, and one confirmed already."""
    proposal = ledger.propose_settlement("1004", paid=False, evidence="nothing moved", proposed_by="alice")
    bob = clients.as_("bob")
    assert bob.post("/api/settlements/0/confirm", json={}).status_code == 422
    assert bob.post("/api/settlements/abc/confirm", json={}).status_code == 422
    assert bob.post(f"/api/settlements/{proposal.id}/confirm", json={"confirmed_by": "carol"}).status_code == 422
    refused = clients.as_("alice").post(f"/api/settlements/{proposal.id}/confirm", json={})
    assert refused.status_code == 403 and "another person" in refused.json()["detail"]
    assert ledger.settlements("1004")[0].confirmed_by is None
    assert bob.post(f"/api/settlements/{proposal.id}/confirm", json={}).status_code == 200
    assert clients.as_("alice").post(f"/api/settlements/{proposal.id}/confirm", json={}).status_code in (403, 409)
    assert (ledger.settlements("1004")[0].proposed_by, ledger.settlements("1004")[0].confirmed_by) == ("alice", "bob")


def test_each_batch_names_the_asset_event_that_carried_it(clients: Clients, ledger: Ledger) -> None:
    (batch,) = clients.as_("alice").get("/api/payroll-batches").json()["payroll_batches"]
    assert [e["id"] for e in batch["asset_events"]] == [7]
    assert batch["export_url"] == "/dags/payday/runs/run1/tasks/export"
    assert clients.as_("alice").get("/api/payroll-batches/1").json()["asset_events"][0]["asset_url"] == "/assets/3"
    pay(ledger, "1006", "7006", points=3)
    made = ledger.make_payroll_batch(PayrollScope("run", dag_id=PAYDAY, run_id="run1"), TaskTry(PAYDAY, "run1", "e"))
    assert made is not None
    assert clients.as_("alice").get(f"/api/payroll-batches/{made.id}").json()["asset_events"] == []  # not announced


def test_the_chart_sums_again_a_day_that_gained_a_payment(clients: Clients, ledger: Ledger) -> None:
    """The chart keeps each day's cash with its count of paid withdrawals: a new payment, or a settlement paid
    on a day already shown, changes the count, and that day is summed again."""
    params = {"date_from": "2026-11-29", "date_to": "2026-12-02"}
    alice = clients.as_("alice")
    before = alice.get("/api/paid-per-day", params=params).json()
    assert before["totals"]["cash_bonus"] == {"CNY": "1102.04", "USD": "2.50"}
    pay(ledger, "1007", "7007", points=1, cash={"CNY": "0.01"}, at=T0 + 60_000)
    proposal = ledger.propose_settlement(
        "1004",
        paid=True,
        evidence="Feishu: 2 points, 1.10 USD",
        proposed_by="a",
        trans_time=T0 + DAY,
        point_bonus=2,
        cash_bonus={"USD": Decimal("1.10")},
    )
    ledger.confirm_settlement(proposal.id, "b")
    after = alice.get("/api/paid-per-day", params=params).json()
    assert after["days"] == [
        {"day": "2026-11-30", "withdrawals": 4, "point_bonus": 1016, "cash_bonus": {"CNY": "1101.05", "USD": "2.50"}},
        {"day": "2026-12-01", "withdrawals": 2, "point_bonus": 9, "cash_bonus": {"CNY": "1.00", "USD": "1.10"}},
    ]
    assert after["totals"] == {"withdrawals": 6, "point_bonus": 1025, "cash_bonus": {"CNY": "1102.05", "USD": "3.60"}}
    # Another user's view (other DAGs readable) is kept apart from alice's.
    assert clients.as_("viewer").get("/api/paid-per-day", params=params).json()["totals"]["point_bonus"] == 25


def test_a_runs_withdrawals_come_with_its_totals(clients: Clients) -> None:
    found = clients.as_("alice").get("/api/withdrawals", params={"dag_id": PAYDAY, "run_id": "run1"}).json()
    assert found["totals"] == {
        "withdrawals": 4,
        "statuses": {"paid": 3, "review": 1},
        "paid_point_bonus": 22,
        "paid_cash_bonus": {"CNY": "102.05", "USD": "2.50"},
    }
    assert clients.as_("alice").get("/api/withdrawals").json()["totals"] is None  # every row: no sum of a million
    assert clients.as_("outsider").get("/api/withdrawals", params={"run_id": "run1"}).json()["totals"] == {
        "withdrawals": 0, "statuses": {}, "paid_point_bonus": 0, "paid_cash_bonus": {}
    }  # fmt: skip
