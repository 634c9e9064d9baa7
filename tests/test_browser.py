"""The provider as a person meets it: a real Airflow (``make airflow``) in headless Chromium.

Needs Debian's chromium (``make test`` installs it where it can). Screenshots go to
``test-artifacts/browser/``.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_SECRET, demo_accounts
from tests.conftest import ROOT

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
DAG_ID = "example_feishu_referral_payroll"
ACCOUNTS = [a for a in demo_accounts() if a.enabled]

if not Path(CHROMIUM).exists():
    pytest.skip(
        "Chromium is not installed (apt-get install chromium); the browser test cannot run here",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api")
sys.path.insert(0, str(ROOT / "scripts"))
from local_airflow import LocalAirflow, free_port  # noqa: E402


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
def page(airflow: LocalAirflow) -> Iterator[Any]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.set_default_timeout(30_000)
        user, password = airflow.login
        tab.goto(airflow.url)
        tab.locator("input[name=username]").fill(user)
        tab.locator("input[name=password]").fill(password)
        tab.locator("button[type=submit]").click()
        tab.wait_for_url(airflow.url + "/")
        yield tab
        browser.close()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_connection_form_has_the_feishu_fields_and_the_test_passes(airflow: LocalAirflow, page: Any) -> None:
    page.goto(airflow.url + "/connections")
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("combobox", name="Connection Type").fill("Feishu")
    page.get_by_role("option", name="Feishu Hire").click()
    for label in ("API base URL", "App ID", "App Secret"):
        sync_api.expect(dialog.get_by_label(label, exact=True)).to_be_visible()
    sync_api.expect(dialog.get_by_label("Login", exact=True)).to_have_count(0)
    sync_api.expect(dialog.get_by_label("Schema", exact=True)).to_have_count(0)
    shot(page, "01-connection-form")
    dialog.get_by_text("Extra Fields", exact=True).click()
    for label in ("Request timeout (seconds)", "Attempts per call", "Withdrawals per minute"):
        sync_api.expect(dialog.get_by_text(label, exact=True)).to_be_visible()
    shot(page, "02-connection-form-extra-fields")
    dialog.get_by_role("button", name="Close").click()

    row = page.get_by_role("row").filter(has_text="feishu_hire_default")
    with page.expect_response(lambda r: r.url.endswith("/api/v2/connections/test")) as answer:
        row.get_by_label("Test Connection").click()
    result = answer.value.json()
    assert result["status"] is True, result
    assert "hire:referral_account scope granted" in result["message"]
    shot(page, "03-connection-tested")


def api_get(airflow: LocalAirflow, path: str) -> dict[str, Any]:
    user, password = airflow.login
    token_request = urllib.request.Request(
        f"{airflow.url}/auth/token",
        data=json.dumps({"username": user, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(token_request, timeout=10) as answer:
        token = json.loads(answer.read())["access_token"]
    request = urllib.request.Request(f"{airflow.url}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


def test_trigger_the_payroll_dag_and_read_each_account_in_the_ui(
    airflow: LocalAirflow, page: Any, tmp_path: Path
) -> None:
    page.goto(f"{airflow.url}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.locator("#element_output_dir").fill(str(tmp_path))
    shot(page, "04-trigger-form")
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/dagRuns")) as answer:
        dialog.get_by_role("button", name="Trigger").click()
    run_id = answer.value.json()["dag_run_id"]

    deadline = time.monotonic() + 180
    state = "queued"
    while state not in ("success", "failed"):
        assert time.monotonic() < deadline, f"the run is still {state}"
        time.sleep(2)
        try:
            state = api_get(airflow, f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        except (TimeoutError, urllib.error.URLError):
            # Six Airflow processes and the task processes share two cores: while the tasks start,
            # the api-server can take longer than a request's timeout. Ask again until the deadline.
            continue
    assert state == "success"

    run_url = f"{airflow.url}/dags/{DAG_ID}/runs/{run_id}"
    page.goto(f"{run_url}/tasks/withdraw_referral_account/mapped")
    for account in ACCOUNTS:  # each mapped instance is labelled by its account id
        sync_api.expect(page.get_by_role("link", name=account.account_id, exact=True)).to_be_visible()
    shot(page, "05-mapped-withdrawals")

    page.get_by_role("link", name="7001000000000000001", exact=True).click()
    sync_api.expect(page.get_by_text("Withdrew referral account 7001000000000000001")).to_be_visible()
    sync_api.expect(page.get_by_text("points 1200, cash 3000.00 CNY")).to_be_visible()
    shot(page, "06-withdrawal-log")
    assert DEFAULT_APP_SECRET not in page.content()

    (csv_path,) = tmp_path.glob(f"{DAG_ID}/payroll_*.csv")
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["referral_account_id"] for row in rows} == {
        a.account_id for a in ACCOUNTS if a.point_bonus or a.cash_bonus
    }
