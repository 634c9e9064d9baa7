"""The sandbox itself, over real HTTP: its endpoints, the switches for what Feishu leaves open, controls, faults.

The client's tests trust the sandbox to behave like Feishu; these tests pin down what it
does, so a change in the sandbox shows up here and not as a puzzling client failure.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_feishu_hire.sandbox import (
    COUNTERS,
    DEFAULT_APP_ID,
    DEFAULT_APP_SECRET,
    DEFAULT_TENANT_KEY,
    Account,
    FeishuSandbox,
)
from airflow_provider_feishu_hire.sandbox.__main__ import main
from airflow_provider_feishu_hire.sandbox.server import UnknownAccount

RICH = "8001"  # 1200 points and 3000.00 CNY
EMPTY = "8002"  # nothing at all
CASH_ONLY = "8003"  # 10.50 CNY and 0.20 USD, no points
ORDER = "9000000000000000001"
OTHER_ORDER = "9000000000000000002"
ROOT = Path(__file__).resolve().parent.parent
HIRE = "/open-apis/hire/v1/referral_account"
AUTH = "/open-apis/auth/v3"
APP = {"app_id": DEFAULT_APP_ID, "app_secret": DEFAULT_APP_SECRET}
MOBILE = {"code": "86", "number": "13800138000"}
EMAIL = "referrer@example.com"


def _accounts() -> list[Account]:
    return [
        Account(RICH, 1200, {"CNY": Decimal("3000.00")}),
        Account(EMPTY),
        Account(CASH_ONLY, 0, {"CNY": Decimal("10.50"), "USD": Decimal("0.20")}),
    ]


class Tenant:
    """An app talking to the sandbox the documented way: a tenant token, then Bearer calls; money parsed as Decimal.

    ``app_type="isv"`` gets the token the store app's way: the app_ticket (as the
    ``app_ticket`` event would bring it), an app_access_token, then the tenant token.
    """

    def __init__(self, url: str, app_type: str = "custom", tenant_key: str = DEFAULT_TENANT_KEY) -> None:
        self.url = url
        self.http = requests.Session()
        if app_type == "isv":
            status, answer = self.call("POST", f"{AUTH}/app_access_token", {**APP, "app_ticket": self.app_ticket()})
            assert status == 200 and answer["code"] == 0, answer
            body = {"app_access_token": answer["app_access_token"], "tenant_key": tenant_key}
            status, answer = self.call("POST", f"{AUTH}/tenant_access_token", body)
        else:
            status, answer = self.call("POST", f"{AUTH}/tenant_access_token/internal", APP)
        assert status == 200 and answer["code"] == 0, answer
        self.http.headers["Authorization"] = f"Bearer {answer['tenant_access_token']}"

    def call(
        self, method: str, path: str, body: object = None, *, raw: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """``raw`` sends the JSON text as written, to control exactly how a number is spelt on the wire."""
        answer = self.http.request(
            method,
            self.url + path,
            data=raw if raw is not None else None if body is None else json.dumps(body),
            headers={"Content-Type": "application/json"},
            timeout=5,
        )
        assert answer.headers["Content-Type"].startswith("application/json"), answer.text
        return answer.status_code, json.loads(answer.text, parse_float=Decimal)

    def withdraw(self, account_id: str, order_id: str, kinds: Iterable[int] = (1, 2)) -> tuple[int, dict[str, Any]]:
        body = {"withdraw_bonus_type": list(kinds), "external_order_id": order_id}
        return self.call("POST", f"/open-apis/hire/v1/referral_account/{account_id}/withdraw", body)

    def register(self, body: object, user_id_type: str | None = None) -> tuple[int, dict[str, Any]]:
        return self.call("POST", HIRE + (f"?user_id_type={user_id_type}" if user_id_type else ""), body)

    def deactivate(self, account_id: str) -> tuple[int, dict[str, Any]]:
        return self.call("POST", f"{HIRE}/{account_id}/deactivate")

    def enable(self, account_id: object, user_id_type: str | None = None) -> tuple[int, dict[str, Any]]:
        query = f"?user_id_type={user_id_type}" if user_id_type else ""
        return self.call("POST", f"{HIRE}/enable{query}", {"referral_account_id": account_id})

    def assets(self, account_id: str, user_id_type: str | None = None) -> tuple[int, dict[str, Any]]:
        query = f"&user_id_type={user_id_type}" if user_id_type else ""
        return self.call("GET", f"{HIRE}/get_account_assets?referral_account_id={account_id}{query}")

    def reconcile(self, start: object, end: object, totals: dict[str, int] | None = None) -> tuple[int, dict[str, Any]]:
        details = [
            {"account_id": account_id, "total_recharge_reward_info": {"point_bonus": points}}
            for account_id, points in (totals or {}).items()
        ]
        body = {"start_trans_time": start, "end_trans_time": end, "trade_details": details}
        return self.call("POST", f"{HIRE}/reconciliation", body)

    def control(self, action: str, body: object = None, *, raw: str | None = None) -> tuple[int, dict[str, Any]]:
        return self.call("POST", f"/_sandbox/{action}", body, raw=raw)

    def app_ticket(self) -> str:
        status, answer = self.call("GET", "/_sandbox/app_ticket")
        assert status == 200, answer
        return str(answer["data"]["app_ticket"])

    def state(self) -> dict[str, Any]:
        status, answer = self.call("GET", "/_sandbox/state")
        assert status == 200, answer
        return answer["data"]

    def close(self) -> None:
        self.http.close()


Start = Callable[..., tuple[FeishuSandbox, Tenant]]


@pytest.fixture
def start() -> Iterator[Start]:
    """``start(empty_withdrawal=..., ...)``: a sandbox with this module's accounts, and a tenant connected to it."""
    with ExitStack() as stack:

        def started(**switches: Any) -> tuple[FeishuSandbox, Tenant]:
            sandbox = stack.enter_context(FeishuSandbox(_accounts(), **{"rate_limits": False, **switches}))
            tenant = Tenant(sandbox.url, sandbox.app_type, sandbox.tenant_key)
            stack.callback(tenant.close)
            return sandbox, tenant

        yield started


def _cash(**amounts: str) -> list[dict[str, Any]]:
    return [{"currency_type": currency, "amount": Decimal(amount)} for currency, amount in sorted(amounts.items())]


# -- empty withdrawals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("account_id", "kinds"),
    [
        pytest.param(EMPTY, [1, 2], id="nothing-at-all"),
        pytest.param(CASH_ONLY, [1], id="points-chosen-but-only-cash-held"),
    ],
)
def test_empty_withdrawal_zeros_records_an_order_of_zeros(start: Start, account_id: str, kinds: list[int]) -> None:
    sandbox, tenant = start()  # "zeros" is the default

    status, answer = tenant.withdraw(account_id, ORDER, kinds)

    assert status == 200 and answer["code"] == 0
    assert answer["data"]["withdrawal_details"] == {"point_bonus": 0, "cash_bonus": []}
    assert ORDER in sandbox.orders
    [entry] = tenant.state()["ledger"]
    assert entry["referral_account_id"] == account_id and entry["external_order_id"] == ORDER
    assert entry["withdrawal_details"] == {"point_bonus": 0, "cash_bonus": []}


def test_empty_withdrawal_zeros_keeps_the_order_id_taken(start: Start) -> None:
    """The zero order is remembered: money credited later is not withdrawn by replaying its id."""
    sandbox, tenant = start(empty_withdrawal="zeros")
    tenant.withdraw(EMPTY, ORDER)
    sandbox.credit(EMPTY, point_bonus=5)

    status, answer = tenant.withdraw(EMPTY, ORDER)

    assert status == 200 and answer["data"]["withdrawal_details"] == {"point_bonus": 0, "cash_bonus": []}
    assert tenant.state()["accounts"][EMPTY]["point_bonus"] == 5
    assert len(sandbox.ledger) == 1


@pytest.mark.parametrize(
    ("account_id", "kinds"),
    [
        pytest.param(EMPTY, [1, 2], id="nothing-at-all"),
        pytest.param(CASH_ONLY, [1], id="points-chosen-but-only-cash-held"),
    ],
)
def test_empty_withdrawal_error_refuses_and_records_nothing(start: Start, account_id: str, kinds: list[int]) -> None:
    sandbox, tenant = start(empty_withdrawal="error")
    before = tenant.state()["accounts"][account_id]

    status, answer = tenant.withdraw(account_id, ORDER, kinds)

    assert (status, answer) == (400, {"code": 1002556, "msg": "no balance to withdraw"})
    state = tenant.state()
    assert state["ledger"] == [] and ORDER not in sandbox.orders
    assert state["accounts"][account_id] == before


def test_empty_withdrawal_error_leaves_the_order_id_free_for_a_real_withdrawal(start: Start) -> None:
    _, tenant = start(empty_withdrawal="error")
    assert tenant.withdraw(EMPTY, ORDER)[1]["code"] == 1002556
    credited = tenant.control(
        "credit", {"account_id": EMPTY, "point_bonus": 7, "cash_bonus": [{"currency_type": "CNY", "amount": "2.50"}]}
    )
    assert credited[0] == 200, credited

    status, answer = tenant.withdraw(EMPTY, ORDER)

    assert status == 200
    assert answer["data"]["withdrawal_details"] == {"point_bonus": 7, "cash_bonus": _cash(CNY="2.50")}
    assert [e["external_order_id"] for e in tenant.state()["ledger"]] == [ORDER]


def test_empty_withdrawal_error_still_withdraws_a_balance(start: Start) -> None:
    _, tenant = start(empty_withdrawal="error")

    status, answer = tenant.withdraw(CASH_ONLY, ORDER, [1, 2])

    assert status == 200
    assert answer["data"]["withdrawal_details"] == {"point_bonus": 0, "cash_bonus": _cash(CNY="10.50", USD="0.20")}


def test_a_currency_at_zero_is_not_withdrawn() -> None:
    """0.00 CNY on the books is nothing: otherwise an empty account would not count as empty."""
    with FeishuSandbox(
        [Account(EMPTY, 0, {"CNY": Decimal("0.00")})], rate_limits=False, empty_withdrawal="error"
    ) as sb:
        tenant = Tenant(sb.url)
        assert tenant.withdraw(EMPTY, ORDER)[1]["code"] == 1002556
        tenant.close()


# -- replays after a deactivation ------------------------------------------------------------


def test_replay_after_deactivate_original_answers_the_original(start: Start) -> None:
    sandbox, tenant = start()  # "original" is the default
    status, first = tenant.withdraw(RICH, ORDER)
    assert status == 200
    assert tenant.control("deactivate", {"account_id": RICH})[0] == 200

    replayed = tenant.withdraw(RICH, ORDER)

    assert replayed == (200, first)
    assert tenant.withdraw(RICH, OTHER_ORDER)[1]["code"] == 1002555  # a new order is refused
    assert len(sandbox.ledger) == 1


def test_replay_after_deactivate_error_refuses_until_enabled(start: Start) -> None:
    sandbox, tenant = start(replay_after_deactivate="error")
    _, first = tenant.withdraw(RICH, ORDER)
    sandbox.deactivate(RICH)

    assert tenant.withdraw(RICH, ORDER) == (400, {"code": 1002555, "msg": "referral account is deactivated"})

    assert tenant.control("enable", {"account_id": RICH})[0] == 200
    assert tenant.withdraw(RICH, ORDER) == (200, first)  # the order was remembered all along
    assert len(sandbox.ledger) == 1


def test_replay_after_deactivate_error_looks_at_the_orders_own_account(start: Start) -> None:
    """The switch is about the account the order drained, whatever account the replay names."""
    sandbox, tenant = start(replay_after_deactivate="error")
    _, first = tenant.withdraw(RICH, ORDER)
    sandbox.deactivate(CASH_ONLY)

    assert tenant.withdraw(CASH_ONLY, ORDER) == (200, first)


# -- credit, deactivate, enable ----------------------------------------------------------------


def test_credit_adds_exact_money_in_python(start: Start) -> None:
    sandbox, tenant = start()

    shown = sandbox.credit(CASH_ONLY, point_bonus=3, cash_bonus={"USD": Decimal("0.10"), "EUR": "1.5", "CNY": 2})

    expected = {"point_bonus": 3, "cash_bonus": _cash(CNY="12.50", EUR="1.50", USD="0.30"), "status": 1}
    assert shown == expected
    assert tenant.state()["accounts"][CASH_ONLY] == expected
    assert all(isinstance(c["amount"], Decimal) for c in sandbox.state()["accounts"][CASH_ONLY]["cash_bonus"])


def test_credit_registers_an_unknown_account(start: Start) -> None:
    sandbox, tenant = start()

    sandbox.credit("8999", cash_bonus={"CNY": Decimal("1.00")})

    status, answer = tenant.call(
        "GET", "/open-apis/hire/v1/referral_account/get_account_assets?referral_account_id=8999"
    )
    assert status == 200
    assert answer["data"]["account"]["status"] == 1
    assert answer["data"]["account"]["assets"]["confirmed_bonus"] == {"point_bonus": 0, "cash_bonus": _cash(CNY="1.00")}


def test_credit_over_http_parses_strings_and_numbers_as_decimal(start: Start) -> None:
    """0.10 + 0.20 is 0.30 only in Decimal; JSON numbers must never pass through float."""
    _, tenant = start()
    body = (
        '{"account_id": "' + CASH_ONLY + '", "point_bonus": 10, "cash_bonus": ['
        '{"currency_type": "USD", "amount": 0.10}, {"currency_type": "CNY", "amount": "1.50"}, '
        '{"currency_type": "HKD", "amount": 3}]}'
    )

    status, answer = tenant.control("credit", raw=body)

    assert status == 200 and answer["code"] == 0
    expected = {"point_bonus": 10, "cash_bonus": _cash(CNY="12.00", HKD="3.00", USD="0.30"), "status": 1}
    assert answer["data"] == expected
    assert tenant.state()["accounts"][CASH_ONLY] == expected
    status, answer = tenant.withdraw(CASH_ONLY, ORDER)
    assert answer["data"]["withdrawal_details"]["cash_bonus"] == _cash(CNY="12.00", HKD="3.00", USD="0.30")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"account_id": RICH, "cash_bonus": [{"currency_type": "CNY", "amount": "1.505"}]}, id="sub-cent"),
        pytest.param({"account_id": RICH, "cash_bonus": [{"currency_type": "CNY", "amount": "-1.00"}]}, id="negative"),
        pytest.param(
            {"account_id": RICH, "cash_bonus": [{"currency_type": "CNY", "amount": "abc"}]}, id="not-a-number"
        ),
        pytest.param({"account_id": RICH, "cash_bonus": [{"currency_type": "CNY", "amount": None}]}, id="null"),
        pytest.param({"account_id": RICH, "cash_bonus": [{"currency_type": "CNY", "amount": "Infinity"}]}, id="inf"),
        pytest.param({"account_id": RICH, "cash_bonus": [{"currency": "CNY", "amount": "1.00"}]}, id="misspelt-cash"),
        pytest.param({"account_id": RICH, "points": 10}, id="misspelt-points"),
        pytest.param({"account_id": RICH, "point_bonus": 1.5}, id="fractional-points"),
        pytest.param({"account_id": RICH, "point_bonus": True}, id="bool-points"),
        pytest.param({"account_id": RICH, "point_bonus": -1}, id="negative-points"),
        pytest.param({"point_bonus": 1}, id="no-account"),
        pytest.param(
            {"account_id": RICH, "point_bonus": 1, "cash_bonus": [{"currency_type": "CNY", "amount": "1.00"}] * 2},
            id="currency-twice",
        ),
        pytest.param([RICH], id="not-an-object"),
    ],
)
def test_a_bad_credit_is_refused_and_changes_nothing(start: Start, body: object) -> None:
    _, tenant = start()
    before = tenant.state()["accounts"]

    status, answer = tenant.control("credit", body)

    assert status == 400 and answer["code"] == 1002002, answer
    assert tenant.state()["accounts"] == before


@pytest.mark.parametrize(
    "cash",
    [
        pytest.param({"CNY": 0.1}, id="float"),
        pytest.param({"CNY": "0.001"}, id="sub-cent"),
        pytest.param({"CNY": Decimal("NaN")}, id="nan"),
        pytest.param({"": "1.00"}, id="no-currency"),
    ],
)
def test_a_bad_credit_in_python_raises_and_changes_nothing(start: Start, cash: dict[str, Any]) -> None:
    sandbox, _ = start()
    before = sandbox.state()["accounts"]

    with pytest.raises(ValueError):
        sandbox.credit(RICH, point_bonus=1, cash_bonus=cash)

    assert sandbox.state()["accounts"] == before


def test_deactivate_and_enable_in_python(start: Start) -> None:
    sandbox, tenant = start()

    assert sandbox.deactivate(RICH)["status"] == 2
    assert tenant.withdraw(RICH, ORDER) == (400, {"code": 1002555, "msg": "referral account is deactivated"})
    assert tenant.state()["accounts"][RICH]["status"] == 2

    assert sandbox.enable(RICH)["status"] == 1
    status, answer = tenant.withdraw(RICH, ORDER)
    assert status == 200 and answer["data"]["withdrawal_details"]["point_bonus"] == 1200


def test_deactivate_and_enable_over_http(start: Start) -> None:
    _, tenant = start()

    status, answer = tenant.control("deactivate", {"account_id": CASH_ONLY})
    assert status == 200 and answer["data"]["status"] == 2
    assert tenant.withdraw(CASH_ONLY, ORDER)[1]["code"] == 1002555

    status, answer = tenant.control("enable", {"account_id": CASH_ONLY})
    assert status == 200 and answer["data"]["status"] == 1
    assert tenant.withdraw(CASH_ONLY, ORDER)[0] == 200


def test_a_credit_keeps_the_status(start: Start) -> None:
    sandbox, tenant = start()
    sandbox.deactivate(EMPTY)

    sandbox.credit(EMPTY, point_bonus=1)

    assert tenant.state()["accounts"][EMPTY] == {"point_bonus": 1, "cash_bonus": [], "status": 2}


@pytest.mark.parametrize("action", ["deactivate", "enable"])
def test_status_changes_of_an_unknown_account_are_refused(start: Start, action: str) -> None:
    sandbox, tenant = start()

    assert tenant.control(action, {"account_id": "8999"})[1]["code"] == 1002553
    assert tenant.control(action, {"account_id": ""})[1]["code"] == 1002002
    assert tenant.control(action, {"account": RICH})[1]["code"] == 1002002
    with pytest.raises(UnknownAccount):
        getattr(sandbox, action)("8999")
    assert "8999" not in tenant.state()["accounts"]


# -- malformed answers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "damaged"),
    [
        pytest.param(
            "null_amount",
            {"point_bonus": 1200, "cash_bonus": [{"currency_type": "CNY", "amount": None}]},
            id="null-amount",
        ),
        pytest.param(
            "text_amount",
            {"point_bonus": 1200, "cash_bonus": [{"currency_type": "CNY", "amount": "abc"}]},
            id="text-amount",
        ),
        pytest.param(
            "fractional_points",
            {"point_bonus": Decimal("1200.5"), "cash_bonus": _cash(CNY="3000.00")},
            id="fractional-points",
        ),
    ],
)
@pytest.mark.parametrize("injected_by", ["python", "http"])
def test_malformed_answer_commits_but_lies_once(
    start: Start, variant: str, damaged: dict[str, Any], injected_by: str
) -> None:
    sandbox, tenant = start()
    if injected_by == "python":
        sandbox.inject("malformed_answer", variant=variant)
    else:
        assert tenant.control("faults", {"kind": "malformed_answer", "variant": variant}) == (
            200,
            {"code": 0, "msg": "ok"},
        )

    status, answer = tenant.withdraw(RICH, ORDER)

    assert status == 200 and answer["code"] == 0
    assert answer["data"]["withdrawal_details"] == damaged
    true_details = {"point_bonus": 1200, "cash_bonus": _cash(CNY="3000.00")}
    state = tenant.state()
    assert state["accounts"][RICH] == {"point_bonus": 0, "cash_bonus": [], "status": 1}
    [entry] = sandbox.state()["ledger"]
    assert entry["external_order_id"] == ORDER and entry["withdrawal_details"] == true_details
    assert isinstance(entry["withdrawal_details"]["cash_bonus"][0]["amount"], Decimal)
    assert state["ledger"][0]["withdrawal_details"] == true_details
    replay_status, replayed = tenant.withdraw(RICH, ORDER)
    assert replay_status == 200 and replayed["data"]["withdrawal_details"] == true_details
    assert replayed["data"]["trans_time"] == answer["data"]["trans_time"]


def test_fractional_points_is_a_bare_number_on_the_wire(start: Start) -> None:
    sandbox, tenant = start()
    sandbox.inject("malformed_answer", variant="fractional_points")

    answer = tenant.http.post(
        f"{sandbox.url}/open-apis/hire/v1/referral_account/{RICH}/withdraw",
        json={"withdraw_bonus_type": [1], "external_order_id": ORDER},
        timeout=5,
    )

    assert '"point_bonus": 1200.5' in answer.text


def test_malformed_answer_passes_an_error_through(start: Start) -> None:
    sandbox, tenant = start()
    sandbox.deactivate(RICH)
    sandbox.inject("malformed_answer", variant="null_amount")

    assert tenant.withdraw(RICH, ORDER)[1]["code"] == 1002555
    sandbox.enable(RICH)
    status, answer = tenant.withdraw(RICH, ORDER)  # the fault was used up by the refused call
    assert status == 200
    assert answer["data"]["withdrawal_details"]["cash_bonus"] == _cash(CNY="3000.00")


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"variant": "zero_amount"}, id="unknown-variant"),
        pytest.param({}, id="no-variant"),
        pytest.param({"variant": "null_amount", "endpoint": "token"}, id="not-withdraw"),
        pytest.param({"variant": "null_amount", "endpoint": "any"}, id="any-endpoint"),
    ],
)
def test_malformed_answer_needs_a_known_variant_on_withdraw(start: Start, options: dict[str, Any]) -> None:
    sandbox, tenant = start()

    with pytest.raises(ValueError):
        sandbox.inject("malformed_answer", **options)
    status, answer = tenant.control("faults", {"kind": "malformed_answer", **options})

    assert status == 400 and answer["code"] == 1002002
    assert sandbox.faults == []


def test_variant_belongs_to_malformed_answer_only(start: Start) -> None:
    sandbox, _ = start()

    with pytest.raises(ValueError):
        sandbox.inject("http_500", variant="null_amount")


# -- registering referral accounts --------------------------------------------------------------


def _account(account_id: str, status: int = 1, points: int = 0, cash: list[Any] | None = None) -> dict[str, Any]:
    """``data.account`` as register, deactivate and enable answer it."""
    assets = {"confirmed_bonus": {"point_bonus": points, "cash_bonus": cash or []}}
    return {"account_id": account_id, "assets": assets, "status": status}


@pytest.mark.parametrize(
    ("body", "user_id_type"),
    [
        pytest.param({"mobile": MOBILE}, None, id="mobile"),
        pytest.param({"mobile": {"code": "+852", "number": "51234567"}}, "union_id", id="mobile-plus-code"),
        pytest.param({"email": EMAIL}, "open_id", id="email"),
        pytest.param({"email": EMAIL, "mobile": None}, "people_admin_id", id="email-and-null-mobile"),
    ],
)
def test_register_creates_an_enabled_empty_account(
    start: Start, body: dict[str, Any], user_id_type: str | None
) -> None:
    _, tenant = start()

    status, answer = tenant.register(body, user_id_type)

    assert status == 200 and answer["code"] == 0, answer
    account_id = answer["data"]["account"]["account_id"]
    assert re.fullmatch(r"[1-9][0-9]{18}", account_id)
    assert answer["data"] == {"account": _account(account_id)}
    state = tenant.state()
    assert state["accounts"][account_id] == {"point_bonus": 0, "cash_bonus": [], "status": 1}
    assert state["requests"]["register"] == 1
    assert account_id not in {a.account_id for a in _accounts()}


def test_registered_accounts_are_distinct_and_work_like_any_other(start: Start) -> None:
    sandbox, tenant = start()
    by_mobile = tenant.register({"mobile": MOBILE})[1]["data"]["account"]["account_id"]
    by_email = tenant.register({"email": EMAIL})[1]["data"]["account"]["account_id"]
    assert by_mobile != by_email  # a mobile number and an email are different referrers
    sandbox.credit(by_email, point_bonus=5, cash_bonus={"CNY": "1.25"})

    status, answer = tenant.withdraw(by_email, ORDER)

    assert status == 200
    assert answer["data"]["withdrawal_details"] == {"point_bonus": 5, "cash_bonus": _cash(CNY="1.25")}
    assert tenant.withdraw(by_mobile, OTHER_ORDER)[1]["data"]["withdrawal_details"]["point_bonus"] == 0


@pytest.mark.parametrize(
    ("body", "query"),
    [
        pytest.param({}, "", id="neither"),
        pytest.param({"mobile": MOBILE, "email": EMAIL}, "", id="both"),
        pytest.param({"mobile": {"code": "86"}}, "", id="mobile-without-number"),
        pytest.param({"mobile": {"number": "13800138000"}}, "", id="mobile-without-code"),
        pytest.param({"mobile": {"code": "86", "number": "138-0013"}}, "", id="mobile-not-digits"),
        pytest.param({"mobile": {"code": "china", "number": "13800138000"}}, "", id="code-not-digits"),
        pytest.param({"mobile": {"code": 86, "number": 13800138000}}, "", id="mobile-numbers"),
        pytest.param({"mobile": "+8613800138000"}, "", id="mobile-as-text"),
        pytest.param({"email": "referrer.example.com"}, "", id="email-without-at"),
        pytest.param({"email": ""}, "", id="empty-email"),
        pytest.param({"email": ["a@b.cn"]}, "", id="email-list"),
        pytest.param({"email": EMAIL}, "?user_id_type=email", id="unknown-user-id-type"),
    ],
)
def test_a_bad_registration_is_refused_and_creates_nothing(start: Start, body: dict[str, Any], query: str) -> None:
    _, tenant = start()
    before = tenant.state()["accounts"]

    status, answer = tenant.call("POST", HIRE + query, body)

    assert status == 400 and answer["code"] == 1002002, answer
    assert answer["msg"].startswith("param error")
    state = tenant.state()
    assert state["accounts"] == before and state["requests"]["register"] == 0


def test_reregister_existing_answers_the_account_as_it_stands(start: Start) -> None:
    sandbox, tenant = start()  # "existing" is the default
    first = tenant.register({"mobile": MOBILE})[1]["data"]["account"]["account_id"]
    sandbox.credit(first, point_bonus=9)
    sandbox.deactivate(first)

    status, answer = tenant.register({"mobile": {"code": "+86", "number": MOBILE["number"]}})

    assert status == 200 and answer["data"] == {"account": _account(first, status=2, points=9)}
    assert (
        tenant.register({"email": EMAIL.upper()})[1]["data"]["account"]["account_id"]
        == (tenant.register({"email": EMAIL})[1]["data"]["account"]["account_id"])
    )  # emails match whatever their case
    assert len(tenant.state()["accounts"]) == len(_accounts()) + 2


def test_reregister_error_refuses_the_second_registration(start: Start) -> None:
    _, tenant = start(reregister="error")
    assert tenant.register({"email": EMAIL})[0] == 200
    before = tenant.state()["accounts"]

    refused = tenant.register({"email": EMAIL})

    assert refused == (400, {"code": 1002557, "msg": "referral account already exists"})
    assert tenant.state()["accounts"] == before
    assert tenant.register({"mobile": MOBILE})[0] == 200  # another referrer is still welcome


@pytest.mark.parametrize("reregister", ["existing", "error"])
def test_register_in_python_follows_the_switch(start: Start, reregister: str) -> None:
    sandbox, tenant = start(reregister=reregister)

    account = sandbox.register(mobile=MOBILE)

    assert account == _account(account["account_id"])
    assert tenant.assets(account["account_id"])[1]["data"]["account"]["referrer"]["mobile"] == "+8613800138000"
    if reregister == "existing":
        assert sandbox.register(mobile=MOBILE) == account
    else:
        with pytest.raises(ValueError, match="already exists"):
            sandbox.register(mobile=MOBILE)
    with pytest.raises(ValueError):
        sandbox.register(mobile=MOBILE, email=EMAIL)
    assert tenant.state()["requests"]["register"] == 0  # Python is not a request


# -- deactivating and enabling through the API ----------------------------------------------------


def test_deactivate_and_enable_over_the_api(start: Start) -> None:
    _, tenant = start()

    status, answer = tenant.deactivate(RICH)

    assert status == 200 and answer["code"] == 0
    assert answer["data"] == {"account": _account(RICH, status=2, points=1200, cash=_cash(CNY="3000.00"))}
    assert tenant.withdraw(RICH, ORDER) == (400, {"code": 1002555, "msg": "referral account is deactivated"})

    status, answer = tenant.enable(RICH, "open_id")

    assert status == 200 and answer["data"]["account"]["status"] == 1
    assert tenant.withdraw(RICH, ORDER)[1]["data"]["withdrawal_details"]["point_bonus"] == 1200
    requests_seen = tenant.state()["requests"]
    assert requests_seen["deactivate"] == 1 and requests_seen["enable"] == 1


def test_status_changes_of_unknown_accounts_are_refused_over_the_api(start: Start) -> None:
    _, tenant = start()

    assert tenant.deactivate("8999") == (400, {"code": 1002553, "msg": "referral account does not exist"})
    assert tenant.enable("8999") == (400, {"code": 1002553, "msg": "referral account does not exist"})
    assert "8999" not in tenant.state()["accounts"]


@pytest.mark.parametrize(
    ("body", "query"),
    [
        pytest.param({}, "", id="no-id"),
        pytest.param({"referral_account_id": ""}, "", id="empty-id"),
        pytest.param({"referral_account_id": 8001}, "", id="number-id"),
        pytest.param({"account_id": RICH}, "", id="misspelt"),
        pytest.param({"referral_account_id": RICH}, "?user_id_type=uid", id="unknown-user-id-type"),
    ],
)
def test_a_bad_enable_is_refused(start: Start, body: dict[str, Any], query: str) -> None:
    sandbox, tenant = start()
    sandbox.deactivate(RICH)

    status, answer = tenant.call("POST", f"{HIRE}/enable{query}", body)

    assert status == 400 and answer["code"] == 1002002, answer
    assert tenant.state()["accounts"][RICH]["status"] == 2


def test_repeat_status_change_idempotent_answers_the_account(start: Start) -> None:
    _, tenant = start()  # "idempotent" is the default
    first = tenant.deactivate(EMPTY)

    assert tenant.deactivate(EMPTY) == first
    assert tenant.enable(EMPTY)[1]["data"]["account"]["status"] == 1
    assert tenant.enable(EMPTY) == (200, {"code": 0, "msg": "success", "data": {"account": _account(EMPTY)}})


def test_repeat_status_change_error_refuses_the_repeat(start: Start) -> None:
    sandbox, tenant = start(repeat_status_change="error")

    assert tenant.enable(EMPTY) == (400, {"code": 1002002, "msg": "param error: referral account is already enabled"})
    assert tenant.deactivate(EMPTY)[0] == 200
    assert tenant.deactivate(EMPTY) == (400, {"code": 1002555, "msg": "referral account is deactivated"})
    assert tenant.state()["accounts"][EMPTY]["status"] == 2
    sandbox.deactivate(EMPTY)  # the admin's hand stays idempotent
    assert tenant.control("deactivate", {"account_id": EMPTY})[0] == 200
    assert tenant.enable(EMPTY)[0] == 200


# -- the referrer in get_account_assets ------------------------------------------------------------


def test_assets_of_a_registered_account_name_the_referrer(start: Start) -> None:
    _, tenant = start()
    account_id = tenant.register({"mobile": MOBILE})[1]["data"]["account"]["account_id"]

    status, answer = tenant.assets(account_id)

    assert status == 200
    account = answer["data"]["account"]
    assert {k: v for k, v in account.items() if k != "referrer"} == _account(account_id)
    referrer = account["referrer"]
    assert set(referrer) == {"id", "name", "mobile"}  # registered by mobile: no email to show
    assert re.fullmatch(r"ou_[0-9a-f]{32}", referrer["id"])  # open_id unless asked otherwise
    assert set(referrer["name"]) == {"zh_cn", "en_us"} and all(referrer["name"].values())
    assert referrer["mobile"] == "+8613800138000"


@pytest.mark.parametrize(
    ("user_id_type", "pattern"),
    [
        ("open_id", r"ou_[0-9a-f]{32}"),
        ("union_id", r"on_[0-9a-f]{32}"),
        ("user_id", r"[0-9a-f]{8}"),
        ("people_admin_id", r"[0-9]{19}"),
    ],
)
def test_the_referrer_id_follows_user_id_type(start: Start, user_id_type: str, pattern: str) -> None:
    _, tenant = start()
    account_id = tenant.register({"email": EMAIL})[1]["data"]["account"]["account_id"]

    first = tenant.assets(account_id, user_id_type)[1]["data"]["account"]["referrer"]
    again = tenant.assets(account_id, user_id_type)[1]["data"]["account"]["referrer"]

    assert re.fullmatch(pattern, first["id"]) and first == again
    assert first["email"] == EMAIL and "mobile" not in first


def test_assets_of_an_account_without_a_registration_have_no_referrer(start: Start) -> None:
    _, tenant = start()

    assert "referrer" not in tenant.assets(RICH)[1]["data"]["account"]
    assert tenant.assets(RICH, "phone")[1]["code"] == 1002002


# -- reconciliation --------------------------------------------------------------------------------


def _withdrawn_at(tenant: Tenant, account_id: str, order_id: str, kinds: Iterable[int] = (1, 2)) -> int:
    """Withdraw; return the withdrawal's trans_time as the sandbox's ledger recorded it."""
    status, answer = tenant.withdraw(account_id, order_id, kinds)
    assert status == 200, answer
    return int(answer["data"]["trans_time"])


def _failed(account_id: str, withdrawn: int, recharged: int) -> dict[str, Any]:
    return {
        "account_id": account_id,
        "total_withdraw_reward_info": {"point_bonus": withdrawn},
        "total_recharge_reward_info": {"point_bonus": recharged},
    }


def test_reconciliation_that_agrees_lists_nothing(start: Start) -> None:
    _, tenant = start()
    at = _withdrawn_at(tenant, RICH, ORDER)
    tenant.withdraw(RICH, ORDER)  # a replay moves nothing and is not counted twice

    status, answer = tenant.reconcile(str(at), str(at), {RICH: 1200, EMPTY: 0})

    assert (status, answer) == (200, {"code": 0, "msg": "success", "data": {"check_failed_list": []}})
    assert tenant.state()["requests"]["reconciliation"] == 1


def test_reconciliation_lists_every_disagreement_with_both_figures(start: Start) -> None:
    sandbox, tenant = start()
    first = _withdrawn_at(tenant, RICH, ORDER)
    sandbox.credit(EMPTY, point_bonus=40)
    _withdrawn_at(tenant, EMPTY, OTHER_ORDER)
    last = _withdrawn_at(tenant, CASH_ONLY, "9000000000000000003")  # cash only: 0 points withdrawn
    claimed = {RICH: 1000, CASH_ONLY: 0, "8999": 7}  # EMPTY omitted; 8999 is not even an account

    status, answer = tenant.reconcile(str(first), str(last), claimed)

    assert status == 200
    assert answer["data"]["check_failed_list"] == [
        _failed(RICH, 1200, 1000),
        _failed(EMPTY, 40, 0),
        _failed("8999", 0, 7),
    ]


def test_reconciliation_sums_an_account_named_twice(start: Start) -> None:
    _, tenant = start()
    at = str(_withdrawn_at(tenant, RICH, ORDER))
    details = [{"account_id": RICH, "total_recharge_reward_info": {"point_bonus": p}} for p in (200, 1000)]

    status, answer = tenant.call(
        "POST", f"{HIRE}/reconciliation", {"start_trans_time": at, "end_trans_time": at, "trade_details": details}
    )

    assert status == 200 and answer["data"]["check_failed_list"] == []


def test_reconciliation_counts_only_withdrawals_in_the_window(start: Start) -> None:
    _, tenant = start()
    at = _withdrawn_at(tenant, RICH, ORDER)

    after = tenant.reconcile(str(at + 1), str(at + 1000), {RICH: 1200})[1]["data"]["check_failed_list"]
    before = tenant.reconcile("0", str(at - 1), {})[1]["data"]["check_failed_list"]
    inside = tenant.reconcile("0", str(at + 1000), {})[1]["data"]["check_failed_list"]

    assert after == [_failed(RICH, 0, 1200)]
    assert before == []
    assert inside == [_failed(RICH, 1200, 0)]


@pytest.mark.parametrize(("reconcile_end", "counted"), [("inclusive", 1200), ("exclusive", 0)])
def test_reconcile_end_decides_whether_the_end_is_in_the_window(start: Start, reconcile_end: str, counted: int) -> None:
    _, tenant = start(reconcile_end=reconcile_end)
    at = _withdrawn_at(tenant, RICH, ORDER)

    ending = tenant.reconcile(str(at - 5), str(at), {RICH: 0})[1]["data"]["check_failed_list"]
    starting = tenant.reconcile(str(at), str(at + 5), {RICH: 0})[1]["data"]["check_failed_list"]

    assert ending == ([_failed(RICH, counted, 0)] if counted else [])
    assert starting == [_failed(RICH, 1200, 0)]  # the start is inclusive either way


def test_reconcile_end_defaults_to_inclusive(start: Start) -> None:
    sandbox, _ = start()

    assert sandbox.reconcile_end == "inclusive"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"start_trans_time": "2", "end_trans_time": "1", "trade_details": []}, id="start-after-end"),
        pytest.param({"start_trans_time": 1, "end_trans_time": 2, "trade_details": []}, id="numbers"),
        pytest.param({"start_trans_time": "1.5", "end_trans_time": "2", "trade_details": []}, id="not-digits"),
        pytest.param({"start_trans_time": "-1", "end_trans_time": "2", "trade_details": []}, id="negative"),
        pytest.param({"end_trans_time": "2", "trade_details": []}, id="no-start"),
        pytest.param({"start_trans_time": "1", "trade_details": []}, id="no-end"),
        pytest.param({"start_trans_time": "1", "end_trans_time": "2", "trade_details": {}}, id="details-not-list"),
        pytest.param(
            {"start_trans_time": "1", "end_trans_time": "2", "trade_details": [{"total_recharge_reward_info": {}}]},
            id="no-account-id",
        ),
        *(
            pytest.param(
                {
                    "start_trans_time": "1",
                    "end_trans_time": "2",
                    "trade_details": [{"account_id": RICH, "total_recharge_reward_info": info}],
                },
                id=name,
            )
            for name, info in [
                ("no-points", {}),
                ("fractional-points", {"point_bonus": 1.5}),
                ("negative-points", {"point_bonus": -1}),
                ("bool-points", {"point_bonus": True}),
                ("text-points", {"point_bonus": "5"}),
                ("info-not-object", 5),
            ]
        ),
    ],
)
def test_a_bad_reconciliation_is_refused(start: Start, body: dict[str, Any]) -> None:
    _, tenant = start()

    status, answer = tenant.call("POST", f"{HIRE}/reconciliation", body)

    assert status == 400 and answer["code"] == 1002002, answer
    assert tenant.state()["requests"]["reconciliation"] == 0


def test_reconciliation_without_trade_details_counts_the_callers_side_as_nothing(start: Start) -> None:
    _, tenant = start()
    at = str(_withdrawn_at(tenant, RICH, ORDER))

    status, answer = tenant.call("POST", f"{HIRE}/reconciliation", {"start_trans_time": at, "end_trans_time": at})

    assert status == 200 and answer["data"]["check_failed_list"] == [_failed(RICH, 1200, 0)]


# -- the new endpoints share authorization, rate limits, faults and counters ------------------------

NEW_CALLS = [
    pytest.param("POST", HIRE, {"email": EMAIL}, "register", id="register"),
    pytest.param("POST", f"{HIRE}/{RICH}/deactivate", None, "deactivate", id="deactivate"),
    pytest.param("POST", f"{HIRE}/enable", {"referral_account_id": RICH}, "enable", id="enable"),
    pytest.param(
        "POST",
        f"{HIRE}/reconciliation",
        {"start_trans_time": "0", "end_trans_time": "1", "trade_details": []},
        "reconciliation",
        id="reconciliation",
    ),
]


@pytest.mark.parametrize(("method", "path", "body", "endpoint"), NEW_CALLS)
def test_new_endpoints_need_a_tenant_token(start: Start, method: str, path: str, body: object, endpoint: str) -> None:
    sandbox, tenant = start()
    del tenant.http.headers["Authorization"]

    assert tenant.call(method, path, body) == (
        400,
        {"code": 99991661, "msg": "Missing access token for authorization."},
    )
    tenant.http.headers["Authorization"] = "Bearer t-not-issued"
    assert tenant.call(method, path, body)[1]["code"] == 99991663
    assert sandbox.requests[endpoint] == 0 and tenant.state()["accounts"][RICH]["status"] == 1


@pytest.mark.parametrize(("method", "path", "body", "endpoint"), NEW_CALLS)
def test_new_endpoints_have_sliding_windows(start: Start, method: str, path: str, body: object, endpoint: str) -> None:
    _, tenant = start(rate_limits=True, **{f"{endpoint}_limit": (2, 60.0)})
    assert [tenant.call(method, path, body)[0] for _ in range(2)] == [200, 200]

    answer = tenant.http.request(method, tenant.url + path, json=body, timeout=5)

    assert answer.status_code == 429 and answer.json() == {"code": 99991400, "msg": "request trigger frequency limit"}
    assert 1 <= int(answer.headers["x-ogw-ratelimit-reset"]) <= 60
    state = tenant.state()
    assert state["requests"]["rate_limited"] == 1 and state["requests"][endpoint] == 2


@pytest.mark.parametrize(
    ("method", "path", "body", "endpoint", "limit"),
    [pytest.param(*call.values, limit, id=call.id) for call, limit in zip(NEW_CALLS, (100, 100, 10, 100), strict=True)],
)
def test_new_endpoints_default_to_feishus_limits(
    start: Start, method: str, path: str, body: object, endpoint: str, limit: int
) -> None:
    _, tenant = start(rate_limits=True)

    statuses = [tenant.call(method, path, body)[0] for _ in range(limit + 1)]

    assert statuses == [200] * limit + [429]


@pytest.mark.parametrize(("method", "path", "body", "endpoint"), NEW_CALLS)
def test_rate_limits_false_lifts_the_new_windows(
    start: Start, method: str, path: str, body: object, endpoint: str
) -> None:
    _, tenant = start(**{f"{endpoint}_limit": (1, 60.0)})  # rate_limits=False

    assert [tenant.call(method, path, body)[0] for _ in range(3)] == [200, 200, 200]


@pytest.mark.parametrize(("method", "path", "body", "endpoint"), NEW_CALLS)
@pytest.mark.parametrize("target", ["own", "any"])
def test_faults_reach_the_new_endpoints(
    start: Start, method: str, path: str, body: object, endpoint: str, target: str
) -> None:
    sandbox, tenant = start()
    assert tenant.control("faults", {"kind": "http_500", "endpoint": endpoint if target == "own" else "any"})[0] == 200
    before = tenant.state()

    assert tenant.call(method, path, body) == (500, {"code": 1002001, "msg": "system error"})

    assert tenant.state() == before  # nothing was done
    assert sandbox.faults == []
    assert tenant.call(method, path, body)[0] == 200


def test_a_fault_for_one_new_endpoint_leaves_the_others_alone(start: Start) -> None:
    sandbox, tenant = start()
    sandbox.inject("rate_limit", endpoint="reconciliation", seconds=3)

    assert tenant.register({"email": EMAIL})[0] == 200
    assert tenant.deactivate(RICH)[0] == 200
    answer = tenant.http.post(
        f"{tenant.url}{HIRE}/reconciliation", json={"start_trans_time": "0", "end_trans_time": "1"}, timeout=5
    )
    assert answer.status_code == 429 and answer.headers["x-ogw-ratelimit-reset"] == "3"


def test_a_registration_dropped_after_commit_is_found_again_by_registering_again(start: Start) -> None:
    sandbox, tenant = start()  # reregister="existing"
    sandbox.inject("drop_after_commit", endpoint="register")

    with pytest.raises(requests.ConnectionError):
        tenant.register({"mobile": MOBILE})

    [created] = set(tenant.state()["accounts"]) - {a.account_id for a in _accounts()}
    assert tenant.register({"mobile": MOBILE})[1]["data"]["account"]["account_id"] == created


@pytest.mark.parametrize("endpoint", ["register", "reconciliation", "app_token"])
def test_malformed_answer_stays_a_withdraw_fault(start: Start, endpoint: str) -> None:
    sandbox, tenant = start()

    status, answer = tenant.control(
        "faults", {"kind": "malformed_answer", "variant": "null_amount", "endpoint": endpoint}
    )

    assert status == 400 and answer["code"] == 1002002
    assert sandbox.faults == []


def test_unknown_fault_endpoints_are_refused(start: Start) -> None:
    sandbox, tenant = start()

    assert tenant.control("faults", {"kind": "http_500", "endpoint": "registration"})[1]["code"] == 1002002
    with pytest.raises(ValueError):
        sandbox.inject("http_500", endpoint="tenant_token")


def test_every_counter_shows_in_the_state_from_the_start(start: Start) -> None:
    _, tenant = start()
    fresh = FeishuSandbox([], rate_limits=False)
    try:
        assert fresh.requests == {"token": 0, "withdraw": 0, "assets": 0, "rate_limited": 0}  # as before
        assert fresh.requests["register"] == 0 and "register" not in fresh.requests  # reading adds nothing
        assert fresh.state()["requests"] == dict.fromkeys(COUNTERS, 0)
    finally:
        fresh.close()
    assert set(tenant.state()["requests"]) == {
        "token",
        "withdraw",
        "assets",
        "register",
        "deactivate",
        "enable",
        "reconciliation",
        "app_ticket",
        "app_token",
        "rate_limited",
    }


# -- store (isv) app tokens ---------------------------------------------------------------------------


def _app_token(tenant: Tenant, ticket: str | None = None) -> tuple[int, dict[str, Any]]:
    return tenant.call("POST", f"{AUTH}/app_access_token", {**APP, "app_ticket": ticket or tenant.app_ticket()})


def _isv_tenant_token(tenant: Tenant, app_token: str, tenant_key: str = DEFAULT_TENANT_KEY) -> tuple[int, Any]:
    return tenant.call("POST", f"{AUTH}/tenant_access_token", {"app_access_token": app_token, "tenant_key": tenant_key})


def test_a_store_app_gets_its_tenant_token_in_three_steps(start: Start) -> None:
    sandbox, tenant = start(app_type="isv")  # the fixture's tenant already went the store app's way
    assert tenant.state()["requests"] == {**dict.fromkeys(COUNTERS, 0), "app_token": 1, "token": 1}

    status, answer = _app_token(tenant)

    assert status == 200 and set(answer) == {"code", "msg", "app_access_token", "expire"}  # top-level, no data
    assert answer["code"] == 0 and answer["msg"] == "ok" and 7100 < answer["expire"] <= 7200  # reused: time has passed
    assert answer["app_access_token"].startswith("a-") and answer["app_access_token"] == sandbox.issued_app_tokens[0]
    status, answer = _isv_tenant_token(tenant, answer["app_access_token"])
    assert status == 200 and set(answer) == {"code", "msg", "tenant_access_token", "expire"}
    assert answer["tenant_access_token"].startswith("t-") and 7100 < answer["expire"] <= 7200
    assert answer["tenant_access_token"] == tenant.http.headers["Authorization"][7:]  # reused, like a custom app's
    assert tenant.register({"email": EMAIL})[0] == 200  # the store app's token works on hire endpoints
    assert tenant.withdraw(RICH, ORDER)[0] == 200


def test_only_the_latest_app_ticket_is_valid(start: Start) -> None:
    sandbox, tenant = start(app_type="isv")
    old = sandbox.app_ticket
    assert tenant.app_ticket() == old

    assert tenant.call("POST", f"{AUTH}/app_ticket/resend", APP) == (200, {"code": 0, "msg": "ok"})

    new = tenant.app_ticket()
    assert new != old and sandbox.app_ticket == new
    assert _app_token(tenant, old) == (400, {"code": 10012, "msg": "app_ticket is invalid"})
    assert _app_token(tenant, new)[1]["code"] == 0
    rotated = sandbox.rotate_app_ticket()
    assert rotated != new and _app_token(tenant, new)[1]["code"] == 10012
    status, answer = tenant.control("app_ticket/rotate")
    assert status == 200 and answer["data"] == {"app_id": DEFAULT_APP_ID, "app_ticket": sandbox.app_ticket}
    assert answer["data"]["app_ticket"] != rotated
    counted = tenant.state()["requests"]
    assert counted["app_ticket"] == 1  # only the resend was an API call
    assert counted["app_token"] == 2  # the fixture's and one with the new ticket; refusals issue nothing


def test_an_app_token_outlives_the_ticket_it_was_bought_with(start: Start) -> None:
    sandbox, tenant = start(app_type="isv")
    app_token = _app_token(tenant)[1]["app_access_token"]
    sandbox.rotate_app_ticket()

    assert _isv_tenant_token(tenant, app_token)[1]["code"] == 0


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({"app_secret": DEFAULT_APP_SECRET}, 10003, id="no-app-id"),
        pytest.param({"app_id": "cli_other", "app_secret": DEFAULT_APP_SECRET}, 10003, id="other-app"),
        pytest.param({"app_id": DEFAULT_APP_ID, "app_secret": "wrong"}, 10014, id="wrong-secret"),
    ],
)
@pytest.mark.parametrize("path", ["app_access_token", "app_ticket/resend"])
def test_store_app_endpoints_check_the_app(start: Start, body: dict[str, Any], expected: int, path: str) -> None:
    sandbox, tenant = start(app_type="isv")
    ticket = sandbox.app_ticket

    status, answer = tenant.call("POST", f"{AUTH}/{path}", {**body, "app_ticket": ticket})

    assert status == 400 and answer["code"] == expected
    assert sandbox.app_ticket == ticket


def test_an_app_token_needs_a_ticket(start: Start) -> None:
    _, tenant = start(app_type="isv")

    assert tenant.call("POST", f"{AUTH}/app_access_token", APP)[1]["code"] == 10003
    assert tenant.call("POST", f"{AUTH}/app_access_token", {**APP, "app_ticket": ""})[1]["code"] == 10003


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({"tenant_key": DEFAULT_TENANT_KEY}, 10003, id="no-app-token"),
        pytest.param({"app_access_token": "a-not-issued", "tenant_key": DEFAULT_TENANT_KEY}, 99991664, id="unknown"),
        pytest.param({"app_access_token": "{app_token}"}, 10003, id="no-tenant-key"),
        pytest.param({"app_access_token": "{app_token}", "tenant_key": "other_tenant"}, 10003, id="other-tenant"),
        pytest.param({"app_access_token": "{tenant_token}", "tenant_key": DEFAULT_TENANT_KEY}, 99991664, id="tenant"),
    ],
)
def test_a_store_apps_tenant_token_needs_a_live_app_token_and_its_tenant(
    start: Start, body: dict[str, str], expected: int
) -> None:
    sandbox, tenant = start(app_type="isv")
    tokens = {"{app_token}": _app_token(tenant)[1]["app_access_token"], "{tenant_token}": sandbox.issued_tokens[0]}
    issued = list(sandbox.issued_tokens)

    status, answer = tenant.call("POST", f"{AUTH}/tenant_access_token", {k: tokens.get(v, v) for k, v in body.items()})

    assert status == 400 and answer["code"] == expected, answer
    assert sandbox.issued_tokens == issued


def test_the_tenant_key_is_a_switch() -> None:
    with FeishuSandbox([Account(RICH, 5)], rate_limits=False, app_type="isv", tenant_key="2ca1d211f64f6438") as sb:
        tenant = Tenant(sb.url, "isv", "2ca1d211f64f6438")
        assert tenant.withdraw(RICH, ORDER)[0] == 200
        app_token = _app_token(tenant)[1]["app_access_token"]
        assert _isv_tenant_token(tenant, app_token)[1]["code"] == 10003  # the default key is not this tenant
        tenant.close()


def test_revoking_app_tokens_is_separate_from_revoking_tenant_tokens(start: Start) -> None:
    sandbox, tenant = start(app_type="isv")
    app_token = _app_token(tenant)[1]["app_access_token"]

    assert tenant.control("revoke_tokens") == (200, {"code": 0, "msg": "ok"})
    assert tenant.withdraw(RICH, ORDER)[1]["code"] == 99991663
    status, answer = _isv_tenant_token(tenant, app_token)  # the app token survived: a new tenant token
    assert status == 200 and answer["tenant_access_token"] != sandbox.issued_tokens[0]

    assert tenant.control("revoke_tokens", {"app_tokens": True})[0] == 200
    assert _isv_tenant_token(tenant, app_token) == (400, {"code": 99991664, "msg": "Invalid app access token."})
    assert tenant.control("revoke_tokens", {"app_tokens": "yes"})[1]["code"] == 1002002
    assert tenant.control("revoke_tokens", {"tokens": True})[1]["code"] == 1002002


def test_an_app_token_is_not_a_tenant_token(start: Start) -> None:
    _, tenant = start(app_type="isv")
    tenant.http.headers["Authorization"] = f"Bearer {_app_token(tenant)[1]['app_access_token']}"

    assert tenant.withdraw(RICH, ORDER)[1]["code"] == 99991671


def test_a_store_app_cannot_use_the_custom_token_endpoint(start: Start) -> None:
    sandbox, tenant = start(app_type="isv")

    status, answer = tenant.call("POST", f"{AUTH}/tenant_access_token/internal", APP)

    assert status == 400 and answer["code"] == 10003 and "tenant_access_token" not in answer
    assert len(sandbox.issued_tokens) == 1  # the fixture's, from the store app's endpoints


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("app_ticket/resend", APP, id="resend"),
        pytest.param("app_access_token", {**APP, "app_ticket": "{ticket}"}, id="app-token"),
        pytest.param("tenant_access_token", {"app_access_token": "a-x", "tenant_key": DEFAULT_TENANT_KEY}, id="tenant"),
    ],
)
def test_a_custom_app_cannot_use_the_store_app_endpoints(start: Start, path: str, body: dict[str, str]) -> None:
    sandbox, tenant = start()  # app_type="custom" is the default
    ticket = sandbox.app_ticket

    status, answer = tenant.call(
        "POST", f"{AUTH}/{path}", {k: ticket if v == "{ticket}" else v for k, v in body.items()}
    )

    assert status == 400 and answer["code"] == 10003
    assert sandbox.app_ticket == ticket and sandbox.issued_app_tokens == []


@pytest.mark.parametrize(
    ("endpoint", "path", "body"),
    [
        pytest.param("app_ticket", "app_ticket/resend", APP, id="app_ticket"),
        pytest.param("app_token", "app_access_token", {**APP, "app_ticket": "{ticket}"}, id="app_token"),
        pytest.param("token", "tenant_access_token", {"app_access_token": "{app}", "tenant_key": "{key}"}, id="token"),
    ],
)
def test_faults_reach_the_store_app_endpoints(start: Start, endpoint: str, path: str, body: dict[str, str]) -> None:
    sandbox, tenant = start(app_type="isv")
    values = {"{ticket}": sandbox.app_ticket, "{app}": _app_token(tenant)[1]["app_access_token"]}
    values["{key}"] = DEFAULT_TENANT_KEY
    filled = {k: values.get(v, v) for k, v in body.items()}
    sandbox.inject("html_page", endpoint=endpoint)

    answer = tenant.http.post(f"{tenant.url}{AUTH}/{path}", json=filled, timeout=5)

    assert answer.status_code == 502 and answer.headers["Content-Type"] == "text/html"
    assert tenant.call("POST", f"{AUTH}/{path}", filled)[1]["code"] == 0  # the fault was used up


def test_the_app_ticket_control_answers_for_a_custom_app_too(start: Start) -> None:
    sandbox, tenant = start()

    assert tenant.call("GET", "/_sandbox/app_ticket") == (
        200,
        {"code": 0, "msg": "ok", "data": {"app_id": DEFAULT_APP_ID, "app_ticket": sandbox.app_ticket}},
    )


# -- unknown paths, the ledger, the switches' values ----------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nope"),
        ("POST", "/open-apis/hire/v1/referral_account/8001/withdraws"),
        ("GET", f"/open-apis/hire/v1/referral_account/{RICH}/withdraw"),
        ("GET", "/_sandbox/nope"),
        ("GET", "/_sandbox/credit"),
        ("GET", HIRE),
        ("POST", f"{HIRE}/"),
        ("GET", f"{HIRE}/enable"),
        ("GET", f"{HIRE}/reconciliation"),
        ("GET", f"{HIRE}/{RICH}/deactivate"),
        ("POST", f"{HIRE}/{RICH}/deactivate/now"),
        ("GET", f"{AUTH}/app_access_token"),
        ("POST", f"{AUTH}/app_access_token/internal"),
        ("GET", f"{AUTH}/app_ticket/resend"),
        ("POST", "/_sandbox/app_ticket"),
        ("GET", "/_sandbox/app_ticket/rotate"),
    ],
)
def test_unknown_paths_answer_json_404(start: Start, method: str, path: str) -> None:
    _, tenant = start()

    assert tenant.call(method, path) == (404, {"code": 404, "msg": "404 page not found"})  # call checks the JSON type


def test_ledger_entries_carry_what_payroll_compares(start: Start) -> None:
    sandbox, tenant = start()
    tenant.withdraw(CASH_ONLY, ORDER, [2])

    [entry] = sandbox.state()["ledger"]

    assert set(entry) == {"referral_account_id", "external_order_id", "trans_time", "withdrawal_details"}
    assert entry["referral_account_id"] == CASH_ONLY and entry["external_order_id"] == ORDER
    assert isinstance(entry["trans_time"], str) and entry["trans_time"].isdigit()
    assert entry["withdrawal_details"] == {"point_bonus": 0, "cash_bonus": _cash(CNY="10.50", USD="0.20")}
    assert all(type(c["amount"]) is Decimal for c in entry["withdrawal_details"]["cash_bonus"])


@pytest.mark.parametrize(
    "switch",
    [
        pytest.param({"empty_withdrawal": "zero"}, id="empty"),
        pytest.param({"replay_after_deactivate": "ignore"}, id="replay"),
        pytest.param({"reregister": "again"}, id="reregister"),
        pytest.param({"reconcile_end": "open"}, id="reconcile-end"),
        pytest.param({"repeat_status_change": "sometimes"}, id="repeat-status-change"),
        pytest.param({"app_type": "store"}, id="app-type"),
        pytest.param({"tenant_key": ""}, id="empty-tenant-key"),
    ],
)
def test_unknown_switch_values_are_refused(switch: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        FeishuSandbox([], **switch)  # type: ignore[arg-type]


def test_the_switches_default_to_the_documented_values() -> None:
    sandbox = FeishuSandbox([])
    try:
        assert (sandbox.reregister, sandbox.reconcile_end, sandbox.repeat_status_change) == (
            "existing",
            "inclusive",
            "idempotent",
        )
        assert (sandbox.app_type, sandbox.tenant_key) == ("custom", "sandbox_tenant_key")
    finally:
        sandbox.close()


# -- the command line -------------------------------------------------------------------------


@contextmanager
def _command_line_sandbox(*flags: str) -> Iterator[str]:
    """``python -m airflow_provider_feishu_hire.sandbox --port 0 *flags``; yields its URL from the banner."""
    command = [sys.executable, "-m", "airflow_provider_feishu_hire.sandbox", "--port", "0", *flags]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        banner = server.stdout.readline() if server.stdout else ""
        found = re.search(r"on (http://\S+)", banner)
        assert found, banner
        yield found.group(1)
    finally:
        server.terminate()
        server.wait(timeout=5)


def test_command_line_account_and_token_switches_reach_the_server() -> None:
    flags = ["--no-rate-limits", "--app-type", "isv", "--tenant-key", "2ca1d211f64f6438", "--reregister", "error"]
    flags += ["--reconcile-end", "exclusive", "--repeat-status-change", "error"]
    with _command_line_sandbox(*flags) as url:
        with pytest.raises(AssertionError):
            Tenant(url)  # a store app has no custom-app token
        tenant = Tenant(url, "isv", "2ca1d211f64f6438")
        assert tenant.register({"email": EMAIL})[0] == 200
        assert tenant.register({"email": EMAIL})[1]["code"] == 1002557
        at = _withdrawn_at(tenant, "7001000000000000003", ORDER)  # a demo account with 450 points
        assert tenant.reconcile(str(at - 1), str(at))[1]["data"]["check_failed_list"] == []
        assert tenant.deactivate("7001000000000000003")[0] == 200
        assert tenant.deactivate("7001000000000000003")[1]["code"] == 1002555
        tenant.close()


def test_command_line_rate_limits_of_the_new_endpoints() -> None:
    flags = ["--register-per-minute", "1", "--deactivate-per-minute", "1"]
    flags += ["--enable-per-second", "1", "--reconciliation-per-minute", "1"]
    with _command_line_sandbox(*flags) as url:
        tenant = Tenant(url)
        calls = [
            lambda: tenant.register({"email": EMAIL}),
            lambda: tenant.deactivate("7001000000000000001"),
            lambda: tenant.enable("7001000000000000001"),
            lambda: tenant.reconcile("0", "1"),
        ]
        assert [(call()[0], call()[0]) for call in calls] == [(200, 429)] * 4
        tenant.close()


def test_command_line_switches_reach_the_server(tmp_path: Path) -> None:
    accounts = tmp_path / "accounts.json"
    accounts.write_text(
        json.dumps(
            {
                "accounts": [
                    {"account_id": EMPTY},
                    {"account_id": RICH, "point_bonus": 5, "cash_bonus": [{"currency_type": "CNY", "amount": "1.00"}]},
                ]
            }
        )
    )
    flags = ["--empty-withdrawal", "error", "--replay-after-deactivate", "error"]
    command = [sys.executable, "-m", "airflow_provider_feishu_hire.sandbox", "--port", "0", "--no-rate-limits"]
    server = subprocess.Popen(
        [*command, "--accounts", str(accounts), *flags], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        banner = server.stdout.readline() if server.stdout else ""
        found = re.search(r"on (http://\S+)", banner)
        assert found, banner
        tenant = Tenant(found.group(1))
        assert tenant.withdraw(EMPTY, ORDER)[1]["code"] == 1002556
        assert tenant.withdraw(RICH, OTHER_ORDER)[0] == 200
        assert tenant.control("deactivate", {"account_id": RICH})[0] == 200
        assert tenant.withdraw(RICH, OTHER_ORDER)[1]["code"] == 1002555
        tenant.close()
    finally:
        server.terminate()
        server.wait(timeout=5)


@pytest.mark.parametrize(
    "flag",
    [
        "--empty-withdrawal",
        "--replay-after-deactivate",
        "--reregister",
        "--reconcile-end",
        "--repeat-status-change",
        "--app-type",
    ],
)
def test_command_line_refuses_unknown_switch_values(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([flag, "sometimes"])

    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
