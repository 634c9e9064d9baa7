"""The sandbox itself, over real HTTP: the switches for what Feishu leaves open, the controls, the faults.

The client's tests trust the sandbox to behave like Feishu; these tests pin down what it
does, so a change in the sandbox shows up here and not as a puzzling client failure.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_ID, DEFAULT_APP_SECRET, Account, FeishuSandbox
from airflow_provider_feishu_hire.sandbox.__main__ import main
from airflow_provider_feishu_hire.sandbox.server import UnknownAccount

RICH = "8001"  # 1200 points and 3000.00 CNY
EMPTY = "8002"  # nothing at all
CASH_ONLY = "8003"  # 10.50 CNY and 0.20 USD, no points
ORDER = "9000000000000000001"
OTHER_ORDER = "9000000000000000002"
ROOT = Path(__file__).resolve().parent.parent


def _accounts() -> list[Account]:
    return [
        Account(RICH, 1200, {"CNY": Decimal("3000.00")}),
        Account(EMPTY),
        Account(CASH_ONLY, 0, {"CNY": Decimal("10.50"), "USD": Decimal("0.20")}),
    ]


class Tenant:
    """An app talking to the sandbox the documented way: a tenant token, then Bearer calls; money parsed as Decimal."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()
        status, answer = self.call(
            "POST",
            "/open-apis/auth/v3/tenant_access_token/internal",
            {"app_id": DEFAULT_APP_ID, "app_secret": DEFAULT_APP_SECRET},
        )
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

    def control(self, action: str, body: object = None, *, raw: str | None = None) -> tuple[int, dict[str, Any]]:
        return self.call("POST", f"/_sandbox/{action}", body, raw=raw)

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
            sandbox = stack.enter_context(FeishuSandbox(_accounts(), rate_limits=False, **switches))
            tenant = Tenant(sandbox.url)
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


# -- unknown paths, the ledger, the switches' values ----------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nope"),
        ("POST", "/open-apis/hire/v1/referral_account/8001/withdraws"),
        ("GET", f"/open-apis/hire/v1/referral_account/{RICH}/withdraw"),
        ("GET", "/_sandbox/nope"),
        ("GET", "/_sandbox/credit"),
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
    "switch", [{"empty_withdrawal": "zero"}, {"replay_after_deactivate": "ignore"}], ids=["empty", "replay"]
)
def test_unknown_switch_values_are_refused(switch: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        FeishuSandbox([], **switch)  # type: ignore[arg-type]


# -- the command line -------------------------------------------------------------------------


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


@pytest.mark.parametrize("flag", ["--empty-withdrawal", "--replay-after-deactivate"])
def test_command_line_refuses_unknown_switch_values(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([flag, "sometimes"])

    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
