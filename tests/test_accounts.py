"""The rest of the referral-account API through the client, against the sandbox over HTTP."""

from __future__ import annotations

from decimal import Decimal

import pytest

from airflow_provider_feishu_hire.client import FeishuClient
from airflow_provider_feishu_hire.exceptions import FeishuAPIError
from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_ID, DEFAULT_APP_SECRET, Account, FeishuSandbox
from tests.conftest import FAST_RETRY


def client_for(sandbox: FeishuSandbox) -> FeishuClient:
    return FeishuClient(DEFAULT_APP_ID, DEFAULT_APP_SECRET, sandbox.url, retry=FAST_RETRY)


def test_register_pay_deactivate_enable(sandbox: FeishuSandbox) -> None:
    with client_for(sandbox) as client:
        account = client.register_referral_account(mobile="13800138000", user_id_type="open_id")
        account_id = account["account_id"]
        assert account["status"] == 1 and account_id.isdigit()
        assert client.register_referral_account(email="a.referrer@example.com")["account_id"] != account_id
        sandbox.credit(account_id, point_bonus=10)
        data = client.withdraw_referral_account(account_id, [1], "7300000000000000001")
        assert data["withdrawal_details"]["point_bonus"] == 10
        assert client.deactivate_referral_account(account_id)["status"] == 2
        with pytest.raises(FeishuAPIError, match="1002555"):
            client.withdraw_referral_account(account_id, [1], "7300000000000000002")
        assert client.enable_referral_account(account_id)["status"] == 1
        assert client.get_account_assets(account_id)["account"]["status"] == 1


def test_a_register_whose_answer_was_lost_returns_the_same_account(sandbox: FeishuSandbox) -> None:
    """Register is not idempotent at Feishu; where it answers the existing account, the client's retry is safe."""
    with client_for(sandbox) as client:
        sandbox.inject("drop_after_commit", endpoint="register")
        first = client.register_referral_account(email="lost@example.com")
        assert client.register_referral_account(email="lost@example.com")["account_id"] == first["account_id"]


def test_under_the_other_reading_a_duplicate_register_is_refused_naming_the_referrer() -> None:
    with FeishuSandbox(rate_limits=False, reregister="error") as sandbox, client_for(sandbox) as client:
        client.register_referral_account(email="twice@example.com")
        with pytest.raises(FeishuAPIError, match=r"1002557.*twice@example\.com"):
            client.register_referral_account(email="twice@example.com")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "exactly one"),
        ({"mobile": "13800138000", "email": "x@example.com"}, "exactly one"),
        ({"mobile": "138-0013"}, "mobile"),
        ({"mobile": "13800138000", "mobile_code": "CN"}, "mobile_code"),
        ({"email": "not an email"}, "email"),
        ({"email": "x@example.com", "user_id_type": "employee_no"}, "user_id_type"),
    ],
)
def test_bad_register_input_is_named_before_sending(sandbox: FeishuSandbox, kwargs: dict[str, str], field: str) -> None:
    with client_for(sandbox) as client, pytest.raises(ValueError, match=field):
        client.register_referral_account(**kwargs)
    assert sandbox.state()["requests"].get("register", 0) == 0


def test_reconciliation_names_every_account_where_feishu_and_we_disagree() -> None:
    accounts = [Account(f"7310000000000000{n:03d}", point_bonus=10 * n, cash_bonus={"CNY": Decimal(1)}) for n in (1, 2)]
    with FeishuSandbox(accounts, rate_limits=False) as sandbox, client_for(sandbox) as client:
        trans_times = [
            int(client.withdraw_referral_account(a.account_id, [1, 2], f"73200000000000000{n}")["trans_time"])
            for n, a in enumerate(accounts)
        ]
        start, end = min(trans_times), max(trans_times)
        agreed = {accounts[0].account_id: 10, accounts[1].account_id: 20}
        assert client.reconcile_referral_accounts(start, end, agreed) == []
        failed = client.reconcile_referral_accounts(start, end, {accounts[0].account_id: 10})  # we lost one
        assert failed == [
            {
                "account_id": accounts[1].account_id,
                "total_withdraw_reward_info": {"point_bonus": 20},
                "total_recharge_reward_info": {"point_bonus": 0},
            }
        ]
        with pytest.raises(ValueError, match="start_trans_time"):
            client.reconcile_referral_accounts(end, start, agreed)


def test_the_hook_offers_the_same_calls_through_the_connection(feishu_connection: FeishuSandbox) -> None:
    from airflow_provider_feishu_hire.hooks.feishu_hire import FeishuHireHook

    hook = FeishuHireHook()
    account_id = hook.register_referral_account(email="hooked@example.com")["account_id"]
    assert hook.deactivate_referral_account(account_id)["status"] == 2
    assert hook.enable_referral_account(account_id, "open_id")["status"] == 1
    assert hook.get_account_assets(account_id, "open_id")["account"]["referrer"]["email"] == "hooked@example.com"
    assert hook.reconcile_referral_accounts(0, 1, {}) == []
