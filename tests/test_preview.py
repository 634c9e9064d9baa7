"""The payout preview an approver sees: balances read from the sandbox over HTTP, totals exact to the cent."""

from __future__ import annotations

from decimal import Decimal

import pytest

from airflow_provider_feishu_hire.client import FeishuClient
from airflow_provider_feishu_hire.preview import LARGEST_SHOWN, preview_payout
from airflow_provider_feishu_hire.sandbox import Account, FeishuSandbox
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
    assert [b.referral_account_id for b in preview.largest()][:2] == ["7302", "7407"]
    assert len(preview.largest()) == LARGEST_SHOWN
    xcom = preview.as_xcom()
    assert xcom["cash_bonus"] == {"CNY": "1028.15", "USD": "2.50"}  # strings, to the cent
    assert xcom["subject"] == "Pay 10 referral accounts: 46 points, 1028.15 CNY, 2.50 USD?"
    assert "whole balance" in xcom["markdown"] and "| 7302 | 0 | 1000.05 CNY |" in xcom["markdown"]


def test_only_the_kinds_to_be_withdrawn_are_counted(client: FeishuClient) -> None:
    preview = preview_payout(client, ["7301", "7302", "7400"], [1])  # points only
    assert (preview.point_bonus, preview.cash_bonus) == (11, {})
    assert [b.referral_account_id for b in preview.payable] == ["7301", "7400"]


def test_nothing_is_withdrawn_by_a_preview(client: FeishuClient) -> None:
    preview_payout(client, [a.account_id for a in ACCOUNTS], [1, 2])
    sandbox: FeishuSandbox = client.sandbox  # type: ignore[attr-defined]
    assert sandbox.ledger == [] and sandbox.requests["withdraw"] == 0
    assert sandbox.requests["assets"] == len(ACCOUNTS)
