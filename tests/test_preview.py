"""The payout preview an approver sees: balances read from the sandbox over HTTP, totals exact to the cent."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from airflow_provider_feishu_hire.client import FeishuClient
from airflow_provider_feishu_hire.preview import LARGEST_SHOWN, preview_payout
from airflow_provider_feishu_hire.sandbox import Account, FeishuSandbox
from tests.conftest import AirflowRunner, connection_json
from tests.test_payout import client_for

ACCOUNTS = [
    Account("7301", point_bonus=10, cash_bonus={"CNY": Decimal("0.10"), "USD": Decimal("2.50")}),
    Account("7302", point_bonus=0, cash_bonus={"CNY": Decimal("1000.05")}),
    Account("7303", point_bonus=0, cash_bonus={}),  # nothing to pay
    Account("7304", point_bonus=7, cash_bonus={"CNY": Decimal("3.00")}, enabled=False),
] + [Account(f"74{i:02d}", point_bonus=i + 1, cash_bonus={"CNY": Decimal(i)}) for i in range(8)]


@pytest.fixture
def client() -> FeishuClient:
    with FeishuSandbox(ACCOUNTS) as sandbox, client_for(sandbox) as made:
        made.sandbox = sandbox  # type: ignore[attr-defined]
        yield made  # type: ignore[misc]


def test_totals_are_exact_and_name_who_cannot_be_paid(client: FeishuClient) -> None:
    ids = [a.account_id for a in ACCOUNTS] + ["7399"]  # 7399 does not exist
    preview = preview_payout(client, ids, [1, 2])
    assert preview.accounts == len(ids)
    assert preview.point_bonus == 10 + sum(range(1, 9))
    assert preview.cash_bonus == {"CNY": Decimal("0.10") + Decimal("1000.05") + sum(range(8)), "USD": Decimal("2.50")}
    assert sorted(preview.not_payable) == ["7304", "7399"]
    assert "deactivated" in preview.not_payable["7304"] and "1002553" in preview.not_payable["7399"]
    assert preview.nothing_to_pay() is None
    xcom = preview.as_xcom()
    assert xcom["cash_bonus"] == {"CNY": "1028.15", "USD": "2.50"}  # strings, to the cent
    # The question itself names who will not be paid; the body says why.
    assert (
        xcom["subject"]
        == "Pay 10 referral accounts: 46 points, 1028.15 CNY, 2.50 USD? Cannot pay 2 accounts: 7304, 7399"
    )
    assert "- 7399: Feishu error 1002553" in xcom["markdown"] and "- 7304: deactivated" in xcom["markdown"]
    assert "whole balance" in xcom["markdown"] and xcom["nothing_to_pay"] is None


def test_largest_payouts_are_ranked_in_each_unit_on_its_own(client: FeishuClient) -> None:
    """Points and each currency apart, largest first: no exchange rate is invented to rank them together."""
    preview = preview_payout(client, [a.account_id for a in ACCOUNTS], [1, 2])
    ranked = {unit: [b.referral_account_id for b in found] for unit, found in preview.largest().items()}
    assert ranked == {
        "points": ["7301", "7407", "7406", "7405", "7404"],
        "CNY": ["7302", "7407", "7406", "7405", "7404"],
        "USD": ["7301"],
    }
    assert all(len(found) <= LARGEST_SHOWN for found in ranked.values())
    markdown = preview.markdown()
    points_table = markdown.index("| Largest in points |")
    cny_table = markdown.index("| Largest in CNY |")
    assert points_table < markdown.index("| 7301 | 10 | 0.10 CNY, 2.50 USD |") < cny_table
    assert markdown.index("| 7302 | 0 | 1000.05 CNY |") > cny_table


def test_a_big_point_payout_reads_above_a_small_mixed_one() -> None:
    """The case a person stumbled on: 80 points with 0.10 CNY was listed above 450 points."""
    accounts = [
        Account("7601", point_bonus=80, cash_bonus={"CNY": Decimal("0.10")}),
        Account("7602", point_bonus=450, cash_bonus={}),
    ]
    with FeishuSandbox(accounts, rate_limits=False) as sandbox, client_for(sandbox) as client:
        preview = preview_payout(client, ["7601", "7602"], [1, 2])
    markdown = preview.markdown()
    assert markdown.index("| 7602 | 450 | — |") < markdown.index("| 7601 | 80 | 0.10 CNY |")
    assert [b.referral_account_id for b in preview.largest()["CNY"]] == ["7601"]


def test_nothing_payable_says_why_instead_of_asking(client: FeishuClient) -> None:
    unreadable = preview_payout(client, ["7399", "7304", "7303"], [1, 2])
    assert unreadable.nothing_to_pay() == (
        "Nothing to pay, so no one was asked to approve: 7304 (deactivated); "
        f"7399 ({unreadable.not_payable['7399']}); 1 account with a zero balance"
    )
    assert "1002553" in unreadable.not_payable["7399"]
    empty = preview_payout(client, ["7303"], [1, 2])
    assert (
        empty.as_xcom()["nothing_to_pay"]
        == "Nothing to pay, so no one was asked to approve: 1 account with a zero balance"
    )
    assert empty.not_payable == {}


def test_only_the_kinds_to_be_withdrawn_are_counted(client: FeishuClient) -> None:
    preview = preview_payout(client, ["7301", "7302", "7400"], [1])  # points only
    assert (preview.point_bonus, preview.cash_bonus) == (11, {})
    assert [b.referral_account_id for b in preview.payable] == ["7301", "7400"]


def test_nothing_is_withdrawn_by_a_preview(client: FeishuClient) -> None:
    preview_payout(client, [a.account_id for a in ACCOUNTS], [1, 2])
    sandbox: FeishuSandbox = client.sandbox  # type: ignore[attr-defined]
    assert sandbox.ledger == [] and sandbox.requests["withdraw"] == 0
    assert sandbox.requests["assets"] == len(ACCOUNTS)


CHOSEN_CONNECTION_DAG = """
import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_feishu_hire.operators.approval import ReferralPayoutPreviewOperator
from airflow_provider_feishu_hire.operators.reconciliation import ReferralReconcileOperator

with DAG(
    "feishu_chosen_connection",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    params={"feishu_hire_conn_id": Param("feishu_hire_default", type="string")},
):
    conn = "{{ params.feishu_hire_conn_id }}"
    ReferralPayoutPreviewOperator(task_id="preview", referral_account_ids=["7302"], feishu_hire_conn_id=conn)
    ReferralReconcileOperator(task_id="reconcile", feishu_hire_conn_id=conn)
"""


def test_the_person_who_triggers_chooses_the_connection(airflow_runner: AirflowRunner, tmp_path: Path) -> None:
    """The preview and the reconciliation template their connection id: a DAG param picks a hand-made one."""
    dag_file = tmp_path / "feishu_chosen_connection.py"
    dag_file.write_text(CHOSEN_CONNECTION_DAG)
    airflow_runner.add_dag(dag_file)
    with FeishuSandbox(ACCOUNTS, rate_limits=False) as sandbox:
        done = airflow_runner.dags_test(
            "feishu_chosen_connection",
            {"feishu_hire_conn_id": "feishu_hire_by_hand"},  # there is no feishu_hire_default here
            AIRFLOW_CONN_FEISHU_HIRE_BY_HAND=connection_json(sandbox.url),
        )
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        assert sandbox.requests["assets"] == 1 and sandbox.requests["token"] >= 1
