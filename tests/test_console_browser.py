"""The payouts console as finance lives a payday: a real Airflow (``make airflow``'s stack) in headless Chromium.

One Airflow for the module, one payroll run of three accounts that all hold points. The
sandbox's ``malformed_answer`` fault garbles the answer to the second withdrawal Feishu
receives (the money moves; the answer's points are not a whole number), so that order is
``review``; and because the other two are paid around it, the run's reconciliation finds
Feishu counting points the ledger does not know of: a mismatch the sandbox made. The tasks
of a run run one at a time (``max_active_tasks_per_dag = 1``), so "second received" is
"second paid", inside the window of the other two.

Then, in the console: the run's withdrawals and totals; the review row found under *Needs
attention*; settled by ``admin``, who cannot confirm it; refused to ``viewer``; confirmed by
``approver``; the run's export cleared (the next payroll), and the settled order in the new
batch, announced by an asset event, its CSV downloaded and read; the reconciliation's
mismatch; and no console at all without a login. The tests run in file order. Screenshots as
in ``test_browser.py`` (``FEISHU_HIRE_SCREENSHOTS=docs/screenshots`` renews the README's).
"""

from __future__ import annotations

import csv
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.airflow_api import Api
from tests.browser import launched_browser, logged_in, shot, sync_api  # noqa: F401  (the fixture `browser`)
from tests.conftest import LocalAirflow, free_port, wait_for

pytestmark = pytest.mark.browser

DAG_ID = "example_feishu_referral_payroll"
ACCOUNTS = ["7001000000000000001", "7001000000000000003", "7001000000000000004"]  # the sandbox's, all with points
CONSOLE = "/feishu-payouts/"
expect = sync_api.expect


@dataclass
class Payday:
    run_id: str
    review_order: str
    review_account: str
    truth: dict[str, Any]  # what Feishu (the sandbox) recorded for the review order
    paid_points: int  # the two orders paid without trouble


def sandbox(airflow: LocalAirflow, path: str, body: object = None) -> Any:
    request = urllib.request.Request(
        airflow.sandbox_url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read() or b"null")


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAirflow]:
    home = tmp_path_factory.mktemp("console_browser_airflow")
    local = LocalAirflow(home, port=free_port(), sandbox_port=free_port(), free_log_ports=True)
    local.settings["core"]["simple_auth_manager_users"] += ",viewer:viewer"  # reads, may not act
    local.settings["core"]["max_active_tasks_per_dag"] = "1"  # the withdrawals one after another: see above
    try:
        local.start(log=home / "standalone.log")
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def admin_api(airflow: LocalAirflow) -> Api:
    return Api(airflow)


@pytest.fixture(scope="module")
def payday(airflow: LocalAirflow, admin_api: Api) -> Payday:
    """The run, finished: two orders paid, one in review, the export and the reconciliation failed saying why."""
    wait_for(lambda: admin_api.try_get(f"/dags/{DAG_ID}"), f"{DAG_ID} to be parsed")
    sandbox(airflow, "/_sandbox/faults", {"kind": "malformed_answer", "variant": "fractional_points", "after": 1})
    conf = {"referral_account_ids": ACCOUNTS, "require_approval": False, "output_dir": str(airflow.home / "payroll")}
    run_id = admin_api.trigger(DAG_ID, "console_payday", conf)
    assert admin_api.finished(DAG_ID, run_id, timeout=600) == "failed"
    states = admin_api.task_states(DAG_ID, run_id)
    assert (states["export_payroll"], states["reconcile_with_feishu"]) == ("failed", "failed"), states
    paid = sandbox(airflow, "/_sandbox/state")["data"]["ledger"]
    assert [entry["referral_account_id"] for entry in paid].count(paid[1]["referral_account_id"]) == 1
    truth = paid[1]  # the second withdrawal Feishu received: its answer was garbled
    return Payday(
        run_id,
        truth["external_order_id"],
        truth["referral_account_id"],
        truth,
        sum(int(e["withdrawal_details"]["point_bonus"]) for i, e in enumerate(paid) if i != 1),
    )


@pytest.fixture(scope="module")
def admin(browser: Any, airflow: LocalAirflow) -> Any:
    return logged_in(browser, airflow.url, airflow.login)


@pytest.fixture(scope="module")
def approver(browser: Any, airflow: LocalAirflow) -> Any:
    return logged_in(browser, airflow.url, airflow.approver)


@pytest.fixture(scope="module")
def viewer(browser: Any, airflow: LocalAirflow) -> Any:
    return logged_in(browser, airflow.url, ("viewer", airflow.password("viewer")))


def console(page: Any, airflow: LocalAirflow) -> None:
    """Open the console and wait until its first answers are drawn."""
    page.goto(airflow.url + CONSOLE)
    expect(page.locator("#me")).to_contain_text("Signed in as")
    expect(page.locator("#chart-totals")).not_to_be_empty()
    expect(page.locator("#attention")).not_to_be_empty()


def order_json(page: Any, airflow: LocalAirflow, order: str) -> Any:
    """The console's API as the page's user (its Airflow login cookie)."""
    answer = page.request.get(f"{airflow.url}{CONSOLE}api/withdrawals/{order}")
    assert answer.ok, answer.text()
    return answer.json()


def test_without_a_login_there_is_no_console(browser: Any, airflow: LocalAirflow) -> None:
    stranger = browser.new_context().new_page()
    stranger.goto(airflow.url + CONSOLE)
    expect(stranger.locator("input[name=username]")).to_be_visible()  # Airflow's login, not the console
    assert CONSOLE not in stranger.url.split("?")[0]
    assert stranger.request.get(f"{airflow.url}{CONSOLE}api/withdrawals").status == 401
    stranger.context.close()


def test_the_console_in_airflows_navigation_shows_the_runs_withdrawals_and_totals(
    airflow: LocalAirflow, payday: Payday, admin: Any
) -> None:
    admin.goto(airflow.url)
    admin.get_by_role("button", name="Browse").click()
    admin.get_by_role("menuitem", name="Feishu payouts").click()
    admin.wait_for_url("**/plugin/feishu-payouts")
    frame = admin.frame_locator("iframe")
    expect(frame.get_by_role("heading", name="Feishu payouts")).to_be_visible()
    expect(frame.locator("#chart-totals")).to_contain_text(f"2 withdrawals, {payday.paid_points} points")
    expect(frame.locator("#attention")).to_contain_text("In review (1)")
    shot(admin, "console")

    console(admin, airflow)
    admin.locator("#filters input[name=run_id]").fill(payday.run_id)
    admin.locator("#filters button").click()
    totals = admin.locator("#withdrawal-totals")
    expect(totals).to_contain_text(f"Run {payday.run_id}: 3 withdrawals (2 paid, 1 review); paid {payday.paid_points}")
    rows = admin.locator("#withdrawals tbody tr")
    expect(rows).to_have_count(3)
    for account in ACCOUNTS:
        expect(admin.locator("#withdrawals").get_by_role("cell", name=account, exact=True)).to_be_visible()
    review = rows.filter(has_text=payday.review_order)
    expect(review.locator(".status-review")).to_have_text("review")
    # The task that sent it, linked to Airflow's task page.
    expect(review.get_by_role("link", name="withdraw_referral_account", exact=False)).to_have_attribute(
        "href",
        f"/dags/{DAG_ID}/runs/{payday.run_id}/tasks/withdraw_referral_account/mapped/"
        f"{ACCOUNTS.index(payday.review_account)}",  # mapped over the accounts in their order
    )
    totals.scroll_into_view_if_needed()
    admin.locator("#withdrawals").scroll_into_view_if_needed()
    shot(admin, "console-withdrawals")


def test_a_review_row_is_settled_by_one_person_and_confirmed_by_another(
    airflow: LocalAirflow, payday: Payday, admin: Any, approver: Any, viewer: Any
) -> None:
    truth = payday.truth["withdrawal_details"]
    points = int(truth["point_bonus"])
    cash = {c["currency_type"]: c["amount"] for c in truth["cash_bonus"]}
    # admin finds it under Needs attention, reads Feishu's raw answer, and proposes what Feishu's own records say.
    console(admin, airflow)
    attention = admin.locator("#attention")
    expect(attention).to_contain_text("Money may have moved")
    attention.get_by_role("link", name=payday.review_order).first.click()
    order = admin.locator("#order")
    expect(order.locator("pre")).to_contain_text(f"{points}.5")  # the garbled answer, as kept
    form = admin.locator("#propose")
    expect(form).to_be_visible()
    form.locator("input[name=trans_time]").fill(payday.truth["trans_time"])
    form.locator("input[name=point_bonus]").fill(str(points))
    form.locator("input[name=cash]").fill(", ".join(f"{c}={a}" for c, a in cash.items()))
    form.locator("textarea[name=evidence]").fill(
        f"Feishu admin console, referral account {payday.review_account}: withdrawal {payday.review_order} "
        f"at {payday.truth['trans_time']}, {points} points"
    )
    form.scroll_into_view_if_needed()
    shot(admin, "console-settle")
    form.get_by_role("button", name="Propose").click()
    settlements = order.locator("table").last
    expect(settlements).to_contain_text("admin")
    # The proposer cannot confirm: the console says so and the row stays in review.
    settlements.get_by_role("button", name="Confirm").click()
    expect(admin.locator("#error")).to_contain_text("another person must confirm it")
    assert order_json(admin, airflow, payday.review_order)["status"] == "review"

    # A viewer sees the row and the proposal, may not propose, and is refused the confirmation.
    console(viewer, airflow)
    pending = viewer.locator("#attention").locator("table").last
    expect(pending).to_contain_text(payday.review_order)
    viewer.locator("#attention").get_by_role("link", name=payday.review_order).first.click()
    expect(viewer.locator("#order")).to_be_visible()
    expect(viewer.locator("#propose")).to_be_hidden()
    pending.get_by_role("button", name="Confirm").click()
    expect(viewer.locator("#error")).to_contain_text(f"403: you may not edit DAG {DAG_ID}")
    assert order_json(viewer, airflow, payday.review_order)["status"] == "review"

    # approver, a second person with edit access, confirms: the order is paid with what was proposed.
    console(approver, airflow)
    waiting = approver.locator("#attention")
    expect(waiting).to_contain_text("Settlements waiting for a second person (1)")
    waiting.scroll_into_view_if_needed()
    shot(approver, "console-confirm")
    waiting.get_by_role("button", name="Confirm").click()
    expect(waiting).to_contain_text("Nothing needs attention.")
    row = order_json(approver, airflow, payday.review_order)
    assert (row["status"], row["point_bonus"], row["cash_bonus"]) == ("paid", points, cash)
    assert row["trans_time"] == int(payday.truth["trans_time"])
    (settlement,) = row["settlements"]
    assert (settlement["proposed_by"], settlement["confirmed_by"]) == ("admin", "approver")  # in the ledger


def test_the_settled_order_joins_the_next_payroll_batch_and_its_csv(
    airflow: LocalAirflow, payday: Payday, admin_api: Api, admin: Any, tmp_path: Path
) -> None:
    # The next payroll: the run's export, cleared, claims what no batch holds and announces its batches.
    admin_api.retrying(
        "POST",
        f"/dags/{DAG_ID}/clearTaskInstances",
        {"dry_run": False, "dag_run_id": payday.run_id, "task_ids": ["export_payroll"], "only_failed": False},
    )
    wait_for(
        lambda: admin_api.task_states(DAG_ID, payday.run_id)["export_payroll"] == "success",
        "the cleared export to succeed",
        timeout=300,
    )
    console(admin, airflow)
    batches = admin.locator("#batches tbody tr")
    expect(batches).to_have_count(2)
    newest = batches.first
    expect(newest).to_contain_text(f"{int(payday.truth['withdrawal_details']['point_bonus'])}")
    batch_id = int(newest.locator("td").first.inner_text())
    # Which asset event carried it: the one the cleared export emitted, which announces both of its batches.
    events = f"/assets/events?source_dag_id={DAG_ID}&source_run_id={payday.run_id}"
    (event,) = wait_for(lambda: admin_api.try_get(events), "the run's asset events")["asset_events"]
    assert sorted(event["extra"]["payroll_batch_ids"]) == [batch_id - 1, batch_id]
    link = newest.get_by_role("link", name=f"feishu_hire_payroll event {event['id']}")
    expect(link).to_have_attribute("href", f"/dags/{DAG_ID}/runs/{payday.run_id}/tasks/export_payroll/asset_events")
    expect(batches.last.get_by_role("link", name=f"feishu_hire_payroll event {event['id']}")).to_be_visible()

    newest.get_by_role("link", name=str(batch_id), exact=True).click()
    members = admin.locator("#batch-members")
    expect(members.locator("tbody tr")).to_have_count(1)
    expect(members).to_contain_text(payday.review_order)
    admin.locator("#batches").scroll_into_view_if_needed()
    shot(admin, "console-payroll-batches")
    with admin.expect_download() as download:
        members.get_by_role("link", name="download the CSV").click()
    saved = tmp_path / "batch.csv"
    download.value.save_as(saved)
    with saved.open(newline="") as handle:
        lines = list(csv.DictReader(handle))
    truth = payday.truth["withdrawal_details"]
    expected = {("points", "", str(truth["point_bonus"]))} | {
        ("cash", c["currency_type"], c["amount"]) for c in truth["cash_bonus"]
    }
    assert {(r["bonus_type"], r["currency"], r["amount"]) for r in lines} == expected
    assert {(r["external_order_id"], r["referral_account_id"], r["payroll_batch_id"]) for r in lines} == {
        (payday.review_order, payday.review_account, str(batch_id))
    }

    # The event's link leads to Airflow's own page of the events that task emitted.
    link.click()
    admin.wait_for_url(f"**/dags/{DAG_ID}/runs/{payday.run_id}/tasks/export_payroll/asset_events")
    expect(admin.get_by_text("feishu_hire_payroll").first).to_be_visible()


def test_the_reconciliation_mismatch_the_sandbox_made(airflow: LocalAirflow, payday: Payday, admin: Any) -> None:
    console(admin, airflow)
    admin.locator("#only-mismatched").check()
    found = admin.locator("#reconciliations tbody tr")
    expect(found).to_have_count(1)
    points = int(payday.truth["withdrawal_details"]["point_bonus"])
    expect(found).to_contain_text("1 mismatch")
    expect(found).to_contain_text(f"account {payday.review_account}: ledger 0, Feishu {points}")
    expect(found).to_contain_text(f"{DAG_ID} / {payday.run_id}")
    admin.locator("#reconciliations").scroll_into_view_if_needed()
    shot(admin, "console-reconciliation")
