"""The provider as a person meets it: a real Airflow (``make airflow``) in headless Chromium.

One Airflow for the module, four DAG runs; the approved one pays through the connection
made by hand, chosen in the trigger form. Needs Debian's chromium (``make test``
installs it where it can). Screenshots go to ``test-artifacts/browser/``, or to the folder
named by ``FEISHU_HIRE_SCREENSHOTS`` (``FEISHU_HIRE_SCREENSHOTS=docs/screenshots`` renews
the README's). The tests run in file order: the run with nothing to pay and the rejected
payout must find the sandbox's balances untouched, before the approved one withdraws them.
"""

from __future__ import annotations

import csv
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from airflow_provider_feishu_hire.balance import parse_account_assets
from airflow_provider_feishu_hire.client import FeishuClient
from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_SECRET, demo_accounts
from tests.browser import launched_browser, logged_in, shot, sync_api  # noqa: F401  (the fixture `browser`)
from tests.conftest import ROOT

pytestmark = pytest.mark.browser

DAG_ID = "example_feishu_referral_payroll"
IMPORT_DAG_ID = "example_feishu_payroll_import"
ACCOUNT_IDS = [a.account_id for a in demo_accounts() if a.enabled]
PAYABLE = [a for a in demo_accounts() if a.enabled and (a.point_bonus or a.cash_bonus)]
BY_HAND = "feishu_hire_by_hand"
UNKNOWN = "7001000000000000099"
EMPTY = "7001000000000000005"  # enabled, nothing to withdraw
DEACTIVATED = "7001000000000000009"

sys.path.insert(0, str(ROOT / "scripts"))
from local_airflow import APP_ID, LocalAirflow, free_port  # noqa: E402


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAirflow]:
    home = tmp_path_factory.mktemp("browser_airflow")
    local = LocalAirflow(home, port=free_port(), sandbox_port=free_port(), free_log_ports=True)
    try:
        local.start(log=home / "standalone.log")
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def page(browser: Any, airflow: LocalAirflow) -> Any:
    """The admin, who makes the connection and triggers the payouts."""
    return logged_in(browser, airflow.url, airflow.login)


@pytest.fixture(scope="module")
def approver_page(browser: Any, airflow: LocalAirflow) -> Any:
    """A second person: whoever triggered a run cannot approve it."""
    return logged_in(browser, airflow.url, airflow.approver)


def api(airflow: LocalAirflow, path: str, body: dict[str, Any] | None = None) -> Any:
    """GET (or POST ``body``) Airflow's REST API, retried while the api-server is too busy to answer in time.

    Six Airflow processes and the task processes share two cores: while tasks start, a
    request can outlast its timeout. Asking again is safe for the reads and the one
    trigger (a POST that timed out has not been answered, so the test fails on the
    resulting extra run rather than passing wrongly).
    """
    user, password = airflow.login
    for _ in range(5):
        try:
            token_request = urllib.request.Request(
                f"{airflow.url}/auth/token",
                data=json.dumps({"username": user, "password": password}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(token_request, timeout=20) as answer:
                token = json.loads(answer.read())["access_token"]
            request = urllib.request.Request(
                f"{airflow.url}{path}",
                data=json.dumps(body).encode() if body is not None else None,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=20) as answer:
                return json.loads(answer.read())
        except (TimeoutError, urllib.error.URLError) as exc:
            # A read answered 500 (the api-server's SQLite was busy) is asked again; any other refusal stands.
            if isinstance(exc, urllib.error.HTTPError) and not (exc.code == 500 and body is None):
                raise
            time.sleep(2)
    raise AssertionError(f"Airflow's API did not answer {path}")


def wait_for(what: str, check: Any, timeout: float = 240) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(2)


def task_states(airflow: LocalAirflow, run_id: str) -> dict[str, list[str | None]]:
    tis = api(airflow, f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
    states: dict[str, list[str | None]] = {}
    for ti in tis:
        states.setdefault(ti["task_id"], []).append(ti["state"])
    return states


def run_state(airflow: LocalAirflow, dag_id: str, run_id: str) -> str | None:
    state = api(airflow, f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]
    return state if state in ("success", "failed") else None


def decide(airflow: LocalAirflow, page: Any, run_id: str, button: str, screenshot: str | None = None) -> None:
    """Wait until the run asks for a decision, then click ``button`` on its Required Action tab."""
    wait_for(
        "approve_payout to await input",
        lambda: task_states(airflow, run_id).get("approve_payout") == ["awaiting_input"],
    )
    # Airflow 3.3.2 races a decision made before the scheduler has seen the parked task's
    # process exit: the resumed task is then failed as "changed externally" and retried,
    # asking again. A person takes longer than that; the test waits for the scheduler's word.
    parked = (
        "Received executor event with state success for task instance "
        f"TaskInstanceKey(dag_id='{DAG_ID}', task_id='approve_payout', run_id='{run_id}'"
    )
    wait_for(
        "the scheduler to see approve_payout parked", lambda: parked in (airflow.home / "standalone.log").read_text()
    )
    page.goto(f"{airflow.url}/dags/{DAG_ID}/runs/{run_id}/tasks/approve_payout/required_actions")
    payable = len(PAYABLE)
    sync_api.expect(page.get_by_text(f"Pay {payable} referral accounts", exact=False).first).to_be_visible()
    for account in PAYABLE:  # an account large in two units is in two tables
        sync_api.expect(page.get_by_role("cell", name=account.account_id, exact=True).first).to_be_visible()
    if screenshot:
        shot(page, screenshot)
    page.get_by_role("button", name=button, exact=True).click()
    wait_for(f"run {run_id} to finish", lambda: run_state(airflow, DAG_ID, run_id))


def balances(airflow: LocalAirflow) -> dict[str, tuple[int, dict[str, Decimal]]]:
    """Every account's confirmed balance, as Feishu (the sandbox) answers it over HTTP."""
    with FeishuClient(APP_ID, DEFAULT_APP_SECRET, airflow.sandbox_url) as client:
        read = {
            account_id: parse_account_assets(account_id, client.get_account_assets(account_id))
            for account_id in ACCOUNT_IDS
        }
    return {account_id: (b.point_bonus, dict(b.cash_bonus)) for account_id, b in read.items()}


def test_a_connection_made_by_hand_in_the_form_tests_green(airflow: LocalAirflow, page: Any) -> None:
    sandbox_port = airflow.sandbox_url.rsplit(":", 1)[1]
    page.goto(airflow.url + "/connections")
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    dialog.locator("input[name=connection_id]").fill(BY_HAND)
    dialog.get_by_role("combobox", name="Connection Type").fill("Feishu")
    page.get_by_role("option", name="Feishu Hire").click()
    for label in ("API base URL", "App ID", "App Secret", "Port"):
        sync_api.expect(dialog.get_by_text(label, exact=True)).to_be_visible()
    for standard in ("Login", "Password", "Host", "Schema"):  # relabelled or hidden
        sync_api.expect(dialog.get_by_text(standard, exact=True)).to_have_count(0)
    # The sandbox as a person would enter it: its address, and its port in Port.
    dialog.locator("input[name=host]").fill("http://127.0.0.1")
    dialog.locator("input[name=port]").fill(sandbox_port)
    dialog.locator("input[name=login]").fill(APP_ID)
    dialog.locator("input[name=password]").fill(DEFAULT_APP_SECRET)
    shot(page, "connection-form")
    dialog.get_by_text("Extra Fields", exact=True).click()
    for label in ("Request timeout (seconds)", "Attempts per call", "Withdrawals per minute"):
        sync_api.expect(dialog.get_by_text(label, exact=True)).to_be_visible()
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/api/v2/connections")):
        dialog.get_by_role("button", name="Save").click()
    stored = api(airflow, f"/api/v2/connections/{BY_HAND}")
    assert (stored["host"], stored["port"], stored["login"]) == ("http://127.0.0.1", int(sandbox_port), APP_ID)

    # Test from the list, as a person would: the button sends the row's own host and port.
    page.goto(airflow.url + "/connections")
    row = page.get_by_role("row").filter(has_text=BY_HAND)
    with page.expect_response(lambda r: r.url.endswith("/api/v2/connections/test")) as answer:
        row.get_by_label("Test Connection").click()
    assert answer.value.status == 200, answer.value.text()
    result = answer.value.json()
    assert result["status"] is True, result
    assert f"Connected to http://127.0.0.1:{sandbox_port} as app {APP_ID}" in result["message"]
    assert DEFAULT_APP_SECRET not in page.content()


def test_nothing_to_pay_asks_nobody_and_names_who_could_not_be_read(airflow: LocalAirflow, page: Any) -> None:
    before = balances(airflow)
    conf = {"referral_account_ids": [EMPTY, DEACTIVATED, UNKNOWN]}
    run_id = api(airflow, f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})["dag_run_id"]

    assert wait_for(f"run {run_id} to finish", lambda: run_state(airflow, DAG_ID, run_id)) == "failed"
    states = task_states(airflow, run_id)
    assert states["approve_payout"] == ["failed"] and states["withdraw_referral_account"] == ["upstream_failed"]
    page.goto(f"{airflow.url}/dags/{DAG_ID}/runs/{run_id}/tasks/approve_payout/required_actions")
    sync_api.expect(page.get_by_role("button", name="Approve", exact=True)).to_have_count(0)  # nobody was asked
    page.goto(f"{airflow.url}/dags/{DAG_ID}/runs/{run_id}/tasks/approve_payout")
    sync_api.expect(
        page.get_by_text("Nothing to pay, so no one was asked to approve", exact=False).first
    ).to_be_visible()
    for named in (f"Cannot pay {DEACTIVATED}: deactivated", f"Cannot pay {UNKNOWN}: Feishu error 1002553"):
        sync_api.expect(page.get_by_text(named, exact=False).first).to_be_visible()
    shot(page, "nothing-to-pay")
    assert balances(airflow) == before


def test_a_rejected_payout_stands_out_and_pays_nothing(airflow: LocalAirflow, page: Any, approver_page: Any) -> None:
    before = balances(airflow)
    assert any(points or cash for points, cash in before.values())  # there is money that could move
    run_id = api(airflow, f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None})["dag_run_id"]

    decide(airflow, approver_page, run_id, "Reject")

    assert run_state(airflow, DAG_ID, run_id) == "failed"
    states = task_states(airflow, run_id)
    assert states["approve_payout"] == ["failed"]
    assert states["withdraw_referral_account"] == ["upstream_failed"]
    assert balances(airflow) == before
    assert not list(airflow.home.rglob(f"{DAG_ID}/payroll_*.csv"))
    page.goto(f"{airflow.url}/dags/{DAG_ID}/runs/{run_id}/tasks/approve_payout")
    sync_api.expect(
        page.get_by_text(re.compile(r"Rejected by approver at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: nothing paid")).first
    ).to_be_visible()
    shot(page, "rejected")


def test_an_approved_payout_pays_each_account_and_announces_the_payroll(
    airflow: LocalAirflow, page: Any, approver_page: Any
) -> None:
    page.goto(f"{airflow.url}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    # Airflow's trigger form will not send the param's empty default; the payroll goes under the home.
    dialog.locator("#element_output_dir").fill(str(airflow.home / "payroll"))
    # Pay through the connection made by hand in the form above, chosen here rather than in the DAG.
    chosen = dialog.locator("#element_feishu_hire_conn_id")
    chosen.fill(BY_HAND)
    chosen.scroll_into_view_if_needed()
    shot(page, "trigger-form")
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/dagRuns")) as answer:
        dialog.get_by_role("button", name="Trigger").click()
    run_id = answer.value.json()["dag_run_id"]

    decide(airflow, approver_page, run_id, "Approve", screenshot="approval")
    assert run_state(airflow, DAG_ID, run_id) == "success"
    for task_id in ("preview_payout", "withdraw_referral_account/0", "reconcile_with_feishu"):
        ti = api(airflow, f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}")
        assert ti["rendered_fields"]["feishu_hire_conn_id"] == BY_HAND, (task_id, ti["rendered_fields"])

    run_url = f"{airflow.url}/dags/{DAG_ID}/runs/{run_id}"
    page.goto(run_url)
    sync_api.expect(page.get_by_text("Success", exact=True).first).to_be_visible()
    sync_api.expect(page.get_by_role("link", name="export_payroll").first).to_be_visible()
    shot(page, "grid")
    page.goto(f"{run_url}/tasks/withdraw_referral_account/mapped")
    for account_id in ACCOUNT_IDS:  # each mapped instance is labelled by its account id
        sync_api.expect(page.get_by_role("link", name=account_id, exact=True)).to_be_visible()
    shot(page, "mapped-withdrawals")
    page.get_by_role("link", name="7001000000000000001", exact=True).click()
    sync_api.expect(page.get_by_text("Withdrew referral account 7001000000000000001")).to_be_visible()
    sync_api.expect(page.get_by_text("points 1200, cash 3000.00 CNY")).to_be_visible()
    assert DEFAULT_APP_SECRET not in page.content()

    # The money moved, and the ledger's payroll says so: every payable account, under .airflow's home.
    assert all(points == 0 and not any(cash.values()) for points, cash in balances(airflow).values())
    page.goto(f"{run_url}/tasks/export_payroll")
    points = sum(a.point_bonus for a in PAYABLE)
    sync_api.expect(page.get_by_text(re.compile(rf"Payroll batch \d+: .*, {points} points")).first).to_be_visible()
    (csv_path,) = (airflow.home / "payroll" / DAG_ID).glob("payroll_*.csv")
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["referral_account_id"] for row in rows} == {a.account_id for a in PAYABLE}

    # The export announced the payroll: an asset event with its totals, and the import DAG ran on it.
    query = urllib.parse.urlencode({"source_dag_id": DAG_ID, "source_run_id": run_id})
    (event,) = api(airflow, f"/api/v2/assets/events?{query}")["asset_events"]
    assert event["uri"] == "feishu_hire_payroll" or event.get("name") == "feishu_hire_payroll", event
    (batch,) = event["extra"]["payroll_batches"]
    assert (batch["point_bonus"], batch["csv"]) == (points, str(csv_path))
    page.goto(f"{run_url}/tasks/export_payroll/asset_events")  # the events this task emitted
    sync_api.expect(page.get_by_text("feishu_hire_payroll").first).to_be_visible()
    shot(page, "payroll-asset-event")
    imports = wait_for(
        "the payroll import DAG to run on the asset event",
        lambda: api(airflow, f"/api/v2/dags/{IMPORT_DAG_ID}/dagRuns")["dag_runs"],
    )
    wait_for("the payroll import to finish", lambda: run_state(airflow, IMPORT_DAG_ID, imports[0]["dag_run_id"]))
    assert run_state(airflow, IMPORT_DAG_ID, imports[0]["dag_run_id"]) == "success"
