"""The hook reads the Airflow connection and gives a person an answer they can act on."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_feishu_hire.exceptions import FeishuAPIError
from airflow_provider_feishu_hire.hooks.feishu_hire import FeishuHireHook
from airflow_provider_feishu_hire.ledger import Ledger
from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_SECRET, DEFAULT_TENANT_KEY, FeishuSandbox
from tests.conftest import connection_json

pytestmark = pytest.mark.lowest  # also run on the lowest supported Airflow (Makefile: pytest-lowest)


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


# -- store (isv) apps ---------------------------------------------------------------------------------

TICKET_VARIABLE = "feishu_hire_test_ticket"
ACCOUNT = "7001000000000000003"  # 450 points


@pytest.fixture
def store_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[FeishuSandbox]:
    """A store app's connection (AIRFLOW_CONN_...) and its app_ticket Variable (AIRFLOW_VAR_...)."""
    with FeishuSandbox(rate_limits=False, app_type="isv") as sandbox:
        extra = {"app_type": "isv", "tenant_key": DEFAULT_TENANT_KEY, "app_ticket_variable": TICKET_VARIABLE}
        monkeypatch.setenv("AIRFLOW_CONN_FEISHU_HIRE_DEFAULT", connection_json(sandbox.url, retry_budget=20, **extra))
        store_ticket(monkeypatch, sandbox.app_ticket)
        yield sandbox


def store_ticket(monkeypatch: pytest.MonkeyPatch, ticket: str) -> None:
    """What the receiver of the app_ticket event does: keep the latest ticket in the Variable."""
    monkeypatch.setenv(f"AIRFLOW_VAR_{TICKET_VARIABLE.upper()}", ticket)


def test_a_store_app_withdraws_through_the_hook(store_app: FeishuSandbox) -> None:
    hook = FeishuHireHook()
    assert (hook.client.app_type, hook.client.tenant_key) == ("isv", DEFAULT_TENANT_KEY)
    data = hook.withdraw_referral_account(ACCOUNT, "points", "5000000000000000002")
    assert data["withdrawal_details"]["point_bonus"] == 450
    assert store_app.state()["ledger"][0]["referral_account_id"] == ACCOUNT
    assert store_app.requests["app_token"] == 1


def test_a_rotated_app_ticket_is_asked_for_again_and_the_stored_one_is_picked_up(
    store_app: FeishuSandbox,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    first_ticket = store_app.app_ticket
    hook = FeishuHireHook()
    hook.get_account_assets(ACCOUNT)
    # An hour on: Feishu pushed a new ticket the receiver missed, and the tokens expired.
    missed_ticket = store_app.rotate_app_ticket()
    store_app.revoke_tokens(app_tokens=True)

    with pytest.raises(FeishuAPIError) as caught:
        hook.get_account_assets(ACCOUNT)
    assert caught.value.code == 10012 and "app_ticket/resend" in str(caught.value)
    assert store_app.requests["app_ticket"] == 1  # Feishu was asked to push the ticket again

    store_ticket(monkeypatch, store_app.app_ticket)  # the resent ticket arrives and is stored
    account = hook.get_account_assets(ACCOUNT)["account"]  # the same hook: the Variable is read at every fetch
    assert account["assets"]["confirmed_bonus"]["point_bonus"] == 450
    assert store_app.requests["app_token"] == 2

    assert "fetching a new one" in caplog.text  # the client's log lines were captured
    captured = capsys.readouterr()
    shown = caplog.text + captured.out + captured.err + str(caught.value)
    secrets = [DEFAULT_APP_SECRET, first_ticket, missed_ticket, store_app.app_ticket]
    secrets += store_app.issued_tokens + store_app.issued_app_tokens
    assert [secret for secret in secrets if secret in shown] == []


def test_test_connection_names_the_store_apps_tenant(store_app: FeishuSandbox) -> None:
    ok, message = FeishuHireHook().test_connection()
    assert ok, message
    assert DEFAULT_TENANT_KEY in message and "store app" in message


def test_test_connection_explains_a_missing_app_ticket(
    store_app: FeishuSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(f"AIRFLOW_VAR_{TICKET_VARIABLE.upper()}")
    ok, message = FeishuHireHook().test_connection()
    assert not ok
    assert "10012" in message and "app_ticket/resend" in message and repr(TICKET_VARIABLE) in message
    assert store_app.requests["app_ticket"] == 1 and store_app.app_ticket not in message


@pytest.mark.parametrize(
    ("tenant_key", "expected"),
    [(None, "tenant_key is empty"), ("", "tenant_key is empty"), ("not_a_customer", "tenant_key 'not_a_customer'")],
)
def test_test_connection_says_what_is_wrong_with_the_tenant_key(
    store_app: FeishuSandbox, monkeypatch: pytest.MonkeyPatch, tenant_key: str | None, expected: str
) -> None:
    extra = {"app_type": "isv", "tenant_key": tenant_key, "app_ticket_variable": TICKET_VARIABLE}
    monkeypatch.setenv("AIRFLOW_CONN_FEISHU_HIRE_DEFAULT", connection_json(store_app.url, **extra))
    ok, message = FeishuHireHook().test_connection()
    assert not ok and expected in message
    assert store_app.requests["token"] == 0


def test_an_unknown_app_type_is_named(sandbox: FeishuSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FEISHU_HIRE_DEFAULT", connection_json(sandbox.url, app_type="marketplace"))
    ok, message = FeishuHireHook().test_connection()
    assert not ok and "app_type" in message and sandbox.requests["token"] == 0


def test_without_a_variable_name_the_ticket_is_read_from_feishu_hire_app_ticket(
    store_app: FeishuSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = {"app_type": "isv", "tenant_key": DEFAULT_TENANT_KEY, "app_ticket_variable": None}
    monkeypatch.setenv("AIRFLOW_CONN_FEISHU_HIRE_DEFAULT", connection_json(store_app.url, **extra))
    monkeypatch.setenv("AIRFLOW_VAR_FEISHU_HIRE_APP_TICKET", store_app.app_ticket)
    assert FeishuHireHook().get_tenant_access_token() in store_app.issued_tokens
