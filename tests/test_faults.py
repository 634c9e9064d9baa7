"""Every fault Feishu or the network can throw at a withdrawal ends with the money moved exactly once."""

from __future__ import annotations

import logging
import time
from decimal import Decimal

import pytest

from airflow_provider_feishu_hire.exceptions import FeishuAPIError
from airflow_provider_feishu_hire.hooks.feishu_hire import FeishuHireHook
from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_SECRET, FeishuSandbox
from tests.conftest import connection_json

ACCOUNT = "7001000000000000001"  # 1200 points and 3000.00 CNY
ORDER_ID = "4000000000000000001"


@pytest.fixture
def hook(sandbox: FeishuSandbox, monkeypatch: pytest.MonkeyPatch) -> FeishuHireHook:
    monkeypatch.setenv(
        "AIRFLOW_CONN_FEISHU_HIRE_DEFAULT",
        connection_json(sandbox.url, timeout=0.5, max_attempts=4, backoff_base=0.05, backoff_max=0.2, retry_budget=10),
    )
    return FeishuHireHook()


def _secrets(sandbox: FeishuSandbox) -> list[str]:
    return [DEFAULT_APP_SECRET, *sandbox.issued_tokens]


@pytest.mark.parametrize(
    ("fault", "tokens_fetched"),
    [
        pytest.param({"kind": "http_500", "times": 2}, 1, id="http-500-system-error"),
        pytest.param({"kind": "html_page", "times": 2}, 1, id="html-502-from-a-gateway"),
        pytest.param({"kind": "html_page", "status": 429, "seconds": 1}, 1, id="html-429-from-a-gateway"),
        pytest.param({"kind": "html_page", "status": 200}, 1, id="html-200-from-a-proxy"),  # may follow a commit
        pytest.param({"kind": "rate_limit", "seconds": 1}, 1, id="429-with-reset-header"),
        pytest.param({"kind": "rate_limit", "status": 400, "seconds": 1}, 1, id="99991400-as-http-400"),
        pytest.param({"kind": "revoke_token", "status": 400}, 2, id="token-revoked-http-400"),
        pytest.param({"kind": "revoke_token", "status": 200}, 2, id="token-revoked-http-200"),
        pytest.param({"kind": "drop_after_commit"}, 1, id="committed-then-connection-dropped"),
        pytest.param({"kind": "slow", "seconds": 1.5}, 1, id="answer-slower-than-timeout"),
        pytest.param({"kind": "http_500", "endpoint": "token"}, 1, id="token-endpoint-500"),
        pytest.param({"kind": "drop_after_commit", "endpoint": "token"}, 1, id="token-answer-lost"),  # same token again
    ],
)
def test_fault_ends_with_the_money_moved_once(
    sandbox: FeishuSandbox,
    hook: FeishuHireHook,
    caplog: pytest.LogCaptureFixture,
    fault: dict[str, object],
    tokens_fetched: int,
) -> None:
    caplog.set_level(logging.DEBUG)
    sandbox.inject(**fault)  # type: ignore[arg-type]
    started = time.monotonic()

    data = hook.withdraw_referral_account(ACCOUNT, [1, 2], ORDER_ID)

    ledger = sandbox.state()["ledger"]
    assert [entry["referral_account_id"] for entry in ledger] == [ACCOUNT]
    assert data["withdrawal_details"] == {
        "point_bonus": 1200,
        "cash_bonus": [{"currency_type": "CNY", "amount": Decimal("3000.00")}],
    }
    assert data["trans_time"] == ledger[0]["trans_time"]  # the original details, even after a lost answer
    assert sandbox.state()["accounts"][ACCOUNT]["point_bonus"] == 0
    assert len(sandbox.issued_tokens) == tokens_fetched
    assert sandbox.faults == []
    if fault.get("seconds") == 1:
        assert time.monotonic() - started >= 1.0  # waited the reset the answer named
    for secret in _secrets(sandbox):
        assert secret not in caplog.text


@pytest.mark.parametrize(("account", "code"), [("7001000000000000009", 1002555), ("7009999999999999999", 1002553)])
def test_permanent_errors_are_sent_once(sandbox: FeishuSandbox, hook: FeishuHireHook, account: str, code: int) -> None:
    with pytest.raises(FeishuAPIError) as caught:
        hook.withdraw_referral_account(account, [1, 2], ORDER_ID)
    assert caught.value.code == code
    assert sandbox.requests["withdraw"] == 1


def test_retries_stop_at_max_attempts(sandbox: FeishuSandbox, hook: FeishuHireHook) -> None:
    sandbox.inject("http_500", times=10)
    with pytest.raises(FeishuAPIError) as caught:
        hook.withdraw_referral_account(ACCOUNT, [1, 2], ORDER_ID)
    assert caught.value.retryable and caught.value.code == 1002001
    assert sandbox.faults[0].times == 10 - 4  # max_attempts from the connection's extra
    assert sandbox.state()["ledger"] == []


def test_a_rate_limit_reset_beyond_the_budget_fails_at_once(sandbox: FeishuSandbox, hook: FeishuHireHook) -> None:
    sandbox.inject("rate_limit", seconds=60)
    started = time.monotonic()
    with pytest.raises(FeishuAPIError) as caught:
        hook.withdraw_referral_account(ACCOUNT, [1, 2], ORDER_ID)
    assert caught.value.is_rate_limited and caught.value.retry_after == 60
    assert time.monotonic() - started < 5


def test_a_token_rejected_twice_is_not_replayed_forever(sandbox: FeishuSandbox, hook: FeishuHireHook) -> None:
    sandbox.inject("revoke_token", times=5)
    with pytest.raises(FeishuAPIError) as caught:
        hook.withdraw_referral_account(ACCOUNT, [1, 2], ORDER_ID)
    assert caught.value.code == 99991663
    assert len(sandbox.issued_tokens) == 2
