"""The client core against the sandbox over real HTTP: tokens, withdrawals, errors, input checks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from airflow_provider_feishu_hire.client import FeishuClient, check_base_url
from airflow_provider_feishu_hire.exceptions import FeishuAPIError
from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_ID, DEFAULT_APP_SECRET, DEFAULT_TENANT_KEY, FeishuSandbox
from tests.conftest import FAST_RETRY

RICH = "7001000000000000002"  # 1288.88 CNY and 150.25 USD
POINTS_AND_CASH = "7001000000000000001"  # 1200 points, 3000.00 CNY
DEACTIVATED = "7001000000000000009"


def test_withdraw_moves_the_whole_balance_once(sandbox: FeishuSandbox, client: FeishuClient) -> None:
    data = client.withdraw_referral_account(RICH, [1, 2], "1000000000000000001")

    assert data["external_order_id"] == "1000000000000000001"
    assert data["trans_time"].isdigit()
    assert data["withdrawal_details"]["cash_bonus"] == [
        {"currency_type": "CNY", "amount": Decimal("1288.88")},
        {"currency_type": "USD", "amount": Decimal("150.25")},
    ]
    assert sandbox.state()["accounts"][RICH]["cash_bonus"] == []


def test_repeated_order_id_returns_the_original_and_moves_nothing(sandbox: FeishuSandbox, client: FeishuClient) -> None:
    first = client.withdraw_referral_account(POINTS_AND_CASH, ["points", "cash"], "1000000000000000002")
    again = client.withdraw_referral_account(POINTS_AND_CASH, ["points", "cash"], "1000000000000000002")

    assert again == first
    assert first["withdrawal_details"]["point_bonus"] == 1200
    assert len(sandbox.state()["ledger"]) == 1


def test_points_only_leaves_the_cash(sandbox: FeishuSandbox, client: FeishuClient) -> None:
    data = client.withdraw_referral_account(POINTS_AND_CASH, "points", "1000000000000000003")

    assert data["withdrawal_details"] == {"point_bonus": 1200, "cash_bonus": []}
    account = sandbox.state()["accounts"][POINTS_AND_CASH]
    assert account["point_bonus"] == 0
    assert account["cash_bonus"] == [{"currency_type": "CNY", "amount": Decimal("3000.00")}]


def test_one_token_serves_many_calls(sandbox: FeishuSandbox, client: FeishuClient) -> None:
    for n in range(3):
        client.withdraw_referral_account(RICH, [1, 2], f"200000000000000000{n}")
    assert sandbox.requests["token"] == 1


def test_concurrent_threads_fetch_one_token(sandbox: FeishuSandbox, client: FeishuClient) -> None:
    tokens: list[str] = []
    threads = [threading.Thread(target=lambda: tokens.append(client.get_tenant_access_token())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(tokens)) == 1
    assert sandbox.requests["token"] == 1


def test_token_is_refreshed_before_it_expires() -> None:
    with (
        FeishuSandbox(rate_limits=False, token_lifetime=2) as sandbox,
        FeishuClient(DEFAULT_APP_ID, DEFAULT_APP_SECRET, sandbox.url, retry=FAST_RETRY) as client,
    ):
        first = client.get_tenant_access_token()
        time.sleep(1.2)  # past the refresh margin (half the lifetime), before the expiry
        second = client.get_tenant_access_token()
    assert first != second
    assert sandbox.requests["token"] == 2


@pytest.mark.parametrize(
    ("account", "code"),
    [("7009999999999999999", 1002553), (DEACTIVATED, 1002555)],
)
def test_account_errors_are_permanent_and_carry_what_support_needs(
    sandbox: FeishuSandbox, client: FeishuClient, account: str, code: int
) -> None:
    with pytest.raises(FeishuAPIError) as caught:
        client.withdraw_referral_account(account, [1, 2], "3000000000000000001")

    err = caught.value
    assert (err.code, err.http_status, err.retryable) == (code, 400, False)
    assert err.log_id and err.log_id in str(err)
    assert account in str(err) and str(code) in str(err)
    assert sandbox.requests["withdraw"] == 1  # not retried


def test_wrong_secret_is_permanent_and_never_quoted(sandbox: FeishuSandbox) -> None:
    wrong = "wrong-secret-value-123456"
    with (
        FeishuClient(DEFAULT_APP_ID, wrong, sandbox.url, retry=FAST_RETRY) as client,
        pytest.raises(FeishuAPIError) as caught,
    ):
        client.withdraw_referral_account(RICH, [1, 2], "3000000000000000002")
    assert caught.value.code == 10014 and not caught.value.retryable
    assert wrong not in str(caught.value) and wrong not in repr(client)
    assert sandbox.state()["ledger"] == []


def test_missing_scope_is_permanent() -> None:
    with (
        FeishuSandbox(rate_limits=False, scopes=()) as sandbox,
        FeishuClient(DEFAULT_APP_ID, DEFAULT_APP_SECRET, sandbox.url, retry=FAST_RETRY) as client,
    ):
        with pytest.raises(FeishuAPIError) as caught:
            client.withdraw_referral_account(RICH, [1, 2], "3000000000000000003")
        assert sandbox.requests["withdraw"] == 0
    assert caught.value.code == 99991672 and not caught.value.retryable


def test_account_assets_report_the_balance(client: FeishuClient) -> None:
    account = client.get_account_assets(POINTS_AND_CASH)["account"]
    assert account["status"] == 1
    assert account["assets"]["confirmed_bonus"] == {
        "point_bonus": 1200,
        "cash_bonus": [{"currency_type": "CNY", "amount": Decimal("3000.00")}],
    }


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("70/../x", [1], "1"), "referral_account_id"),
        (("70 01", [1], "1"), "referral_account_id"),  # surrounding white space is trimmed, not inner
        (("", [1], "1"), "referral_account_id"),
        ((RICH, [], "1"), "withdraw_bonus_type"),
        ((RICH, ["stock"], "1"), "withdraw_bonus_type"),
        ((RICH, [1], ""), "external_order_id"),
        ((RICH, [1], "9" * 65), "external_order_id"),
    ],
)
def test_bad_input_is_refused_before_anything_is_sent(
    sandbox: FeishuSandbox, client: FeishuClient, args: tuple[object, object, object], field: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=field):
        client.withdraw_referral_account(*args)
    assert sandbox.requests == {"token": 0, "withdraw": 0, "assets": 0, "rate_limited": 0}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (None, "https://open.feishu.cn"),
        ("", "https://open.feishu.cn"),
        ("https://open.larksuite.com/", "https://open.larksuite.com"),
        ("open.feishu.cn", "https://open.feishu.cn"),
        ("http://127.0.0.1:8765", "http://127.0.0.1:8765"),
        ("http://localhost:8765", "http://localhost:8765"),
        ("http://[::1]:8765", "http://[::1]:8765"),
    ],
)
def test_base_urls_that_are_accepted(url: str | None, expected: str) -> None:
    assert check_base_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://open.feishu.cn",
        "http://10.0.0.8:8765",
        "ftp://open.feishu.cn",
        "https://open.feishu.cn/open-apis",
    ],
)
def test_base_urls_that_are_refused_name_the_host_field(url: str) -> None:
    with pytest.raises(ValueError, match="host"):
        check_base_url(url)


def test_unreachable_host_is_a_retryable_error_naming_the_host() -> None:
    with (
        FeishuClient(DEFAULT_APP_ID, DEFAULT_APP_SECRET, "http://127.0.0.1:9", retry=FAST_RETRY) as client,
        pytest.raises(FeishuAPIError) as caught,
    ):
        client.get_tenant_access_token()
    assert caught.value.retryable and caught.value.code is None
    assert "http://127.0.0.1:9" in str(caught.value)


def test_a_redirect_is_never_followed_with_the_secret() -> None:
    """A 307 would make requests resend the token request's body, App Secret included, to its target."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Redirecting(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(307)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with (
            FeishuClient(DEFAULT_APP_ID, DEFAULT_APP_SECRET, url, retry=FAST_RETRY) as client,
            pytest.raises(FeishuAPIError) as caught,
        ):
            client.get_tenant_access_token()
    finally:
        server.shutdown()
        server.server_close()
    assert seen == ["/open-apis/auth/v3/tenant_access_token/internal"]  # once, and never /elsewhere
    assert caught.value.http_status == 307 and not caught.value.retryable


# -- store (isv) apps ---------------------------------------------------------------------------------


@pytest.fixture
def store_sandbox() -> Iterator[FeishuSandbox]:
    with FeishuSandbox(rate_limits=False, app_type="isv") as running:
        yield running


def _store_client(sandbox: FeishuSandbox, ticket: Callable[[], str | None], **options: Any) -> FeishuClient:
    return FeishuClient(
        DEFAULT_APP_ID,
        DEFAULT_APP_SECRET,
        sandbox.url,
        retry=FAST_RETRY,
        app_type="isv",
        tenant_key=options.pop("tenant_key", DEFAULT_TENANT_KEY),
        app_ticket=ticket,
        **options,
    )


def test_a_store_app_withdraws_with_a_token_bought_with_the_app_ticket(store_sandbox: FeishuSandbox) -> None:
    seen: list[str] = []
    with _store_client(store_sandbox, lambda: store_sandbox.app_ticket, on_new_token=seen.append) as client:
        data = client.withdraw_referral_account(RICH, [1, 2], "4000000000000000001")
    assert data["withdrawal_details"]["cash_bonus"][0] == {"currency_type": "CNY", "amount": Decimal("1288.88")}
    assert (store_sandbox.requests["app_token"], store_sandbox.requests["token"]) == (1, 1)
    # Both tokens reach the masker, the app_access_token too: it is as good as the App Secret for an hour.
    assert seen == [store_sandbox.issued_app_tokens[0], store_sandbox.issued_tokens[0]]


def test_the_app_ticket_is_asked_for_at_every_token_fetch(store_sandbox: FeishuSandbox) -> None:
    """Feishu pushes a new ticket about hourly: a long-lived client must use the one stored since."""
    stored = [store_sandbox.app_ticket]
    with _store_client(store_sandbox, lambda: stored[-1]) as client:
        client.get_account_assets(RICH)
        stored.append(store_sandbox.rotate_app_ticket())  # the receiver stores the pushed ticket
        store_sandbox.revoke_tokens(app_tokens=True)
        client.get_account_assets(RICH)
    assert store_sandbox.requests["app_token"] == 2 and store_sandbox.requests["app_ticket"] == 0


@pytest.mark.parametrize("ticket", ["stale-ticket-000000000000", None], ids=["stale", "missing"])
def test_a_refused_app_ticket_asks_feishu_to_push_a_new_one(store_sandbox: FeishuSandbox, ticket: str | None) -> None:
    before = store_sandbox.app_ticket
    with _store_client(store_sandbox, lambda: ticket) as client, pytest.raises(FeishuAPIError) as caught:
        client.withdraw_referral_account(RICH, [1, 2], "4000000000000000002")
    err = caught.value
    assert err.code == 10012 and not err.retryable
    assert "app_ticket/resend" in str(err) and "app_ticket event" in str(err)
    assert store_sandbox.requests["app_ticket"] == 1 and store_sandbox.app_ticket != before  # Feishu pushes anew
    assert store_sandbox.state()["ledger"] == []
    for secret in (DEFAULT_APP_SECRET, before, store_sandbox.app_ticket, ticket or DEFAULT_APP_SECRET):
        assert secret not in str(err)


def test_a_store_app_needs_a_tenant_key_before_anything_is_sent(store_sandbox: FeishuSandbox) -> None:
    with pytest.raises(ValueError, match="tenant_key"):
        _store_client(store_sandbox, lambda: store_sandbox.app_ticket, tenant_key=" ")
    with pytest.raises(ValueError, match="app_type"):
        FeishuClient(DEFAULT_APP_ID, DEFAULT_APP_SECRET, store_sandbox.url, app_type="store")
    assert store_sandbox.state()["requests"]["app_token"] == store_sandbox.state()["requests"]["token"] == 0


def test_a_tenant_key_the_app_is_not_installed_in_is_permanent(store_sandbox: FeishuSandbox) -> None:
    with (
        _store_client(store_sandbox, lambda: store_sandbox.app_ticket, tenant_key="not_a_customer") as client,
        pytest.raises(FeishuAPIError) as caught,
    ):
        client.get_tenant_access_token()
    assert caught.value.code == 10003 and not caught.value.retryable
    assert store_sandbox.requests["token"] == 0
