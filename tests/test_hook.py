"""The hook reads the Airflow connection and gives a person an answer they can act on."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from airflow_provider_feishu_hire.hooks.feishu_hire import FeishuHireHook
from airflow_provider_feishu_hire.ledger import Ledger
from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_SECRET, FeishuSandbox
from tests.conftest import connection_json


def test_connection_maps_login_password_host_and_extra(
    feishu_connection: FeishuSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_FEISHU_HIRE_DEFAULT",
        connection_json(feishu_connection.url + "/", timeout=3, max_attempts=2, retry_budget=7),
    )
    client = FeishuHireHook().get_conn()
    assert client.base_url == feishu_connection.url
    assert client.timeout == 3
    assert (client.retry.max_attempts, client.retry.budget) == (2, 7)
    assert DEFAULT_APP_SECRET not in repr(client)


def test_empty_host_means_feishu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FEISHU_HIRE_DEFAULT", connection_json(""))
    assert FeishuHireHook().get_conn().base_url == "https://open.feishu.cn"


def test_token_and_withdraw_through_the_hook(feishu_connection: FeishuSandbox) -> None:
    hook = FeishuHireHook()
    token = hook.get_tenant_access_token()
    data = hook.withdraw_referral_account("7001000000000000003", "points", "5000000000000000001")
    assert token in feishu_connection.issued_tokens
    assert data["withdrawal_details"]["point_bonus"] == 450


def test_test_connection_succeeds_without_touching_money(feishu_connection: FeishuSandbox) -> None:
    ok, message = FeishuHireHook().test_connection()
    assert ok, message
    assert "cli_sandbox_app" in message and "scope granted" in message
    assert feishu_connection.requests["withdraw"] == 0 and feishu_connection.state()["ledger"] == []
    assert all(token not in message for token in feishu_connection.issued_tokens)


@pytest.mark.parametrize(
    ("conn", "expected"),
    [
        ({"password": "not-the-secret-0000"}, "rejected the App ID or App Secret"),
        ({"login": "cli_unknown"}, "rejected the App ID or App Secret"),
        ({"host": "http://127.0.0.1:9"}, "Could not talk to Feishu"),
        ({"host": "http://open.feishu.cn"}, "plain http"),
        ({"host": "https://open.feishu.cn/path"}, "scheme, host and port only"),
        ({"login": ""}, "App ID"),
    ],
)
def test_test_connection_says_what_is_wrong(
    sandbox: FeishuSandbox, monkeypatch: pytest.MonkeyPatch, conn: dict[str, str], expected: str
) -> None:
    import json

    settings = {**json.loads(connection_json(sandbox.url)), **conn}
    monkeypatch.setenv("AIRFLOW_CONN_FEISHU_HIRE_DEFAULT", json.dumps(settings))
    ok, message = FeishuHireHook().test_connection()
    assert not ok
    assert expected in message
    assert DEFAULT_APP_SECRET not in message and settings["password"] not in message


def test_test_connection_names_a_missing_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    with FeishuSandbox(rate_limits=False, scopes=()) as sandbox:
        monkeypatch.setenv("AIRFLOW_CONN_FEISHU_HIRE_DEFAULT", connection_json(sandbox.url))
        ok, message = FeishuHireHook().test_connection()
        assert sandbox.state()["ledger"] == []
    assert not ok
    assert "hire:referral_account" in message and "99991672" in message


def test_null_or_empty_extras_mean_the_defaults(sandbox: FeishuSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection form saves empty fields as null: that must not break every task."""
    extra = {"backoff_base": None, "timeout": "", "max_attempts": None, "withdraw_rate_limit": None}
    monkeypatch.setenv("AIRFLOW_CONN_FEISHU_HIRE_DEFAULT", connection_json(sandbox.url, **extra))
    client = FeishuHireHook().client
    assert (client.timeout, client.retry.max_attempts, client.retry.backoff_base) == (10.0, 5, 0.5)
    assert client.withdraw_limiter is not None and client.get_tenant_access_token()


def test_a_non_numeric_extra_is_named(sandbox: FeishuSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FEISHU_HIRE_DEFAULT", connection_json(sandbox.url, backoff_base="soon"))
    with pytest.raises(ValueError, match="backoff_base"):
        FeishuHireHook().client  # noqa: B018


@pytest.mark.parametrize(("shared_pace", "expected"), [(None, "SharedPace"), (False, "RateLimiter")])
def test_with_a_ledger_the_pace_is_shared_unless_the_connection_says_not(
    sandbox: FeishuSandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared_pace: bool | None, expected: str
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FEISHU_HIRE_DEFAULT", connection_json(sandbox.url, shared_pace=shared_pace))
    with Ledger(
        lambda: sqlite3.connect(tmp_path / "l.db", check_same_thread=False, isolation_level=None), "sqlite"
    ) as ledger:
        ledger.migrate()
        client = FeishuHireHook(ledger=ledger).client
        assert type(client.withdraw_limiter).__name__ == type(client.assets_limiter).__name__ == expected
        client.get_account_assets("7001000000000000001")  # paced through the ledger (or not), and it works
