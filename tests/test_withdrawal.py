"""Inputs checked before anything is sent, idempotency keys, and the XCom record's money."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airflow_provider_feishu_hire.withdrawal import (
    UnreadableAnswer,
    check_external_order_id,
    check_referral_account_id,
    check_withdraw_bonus_type,
    derive_external_order_id,
    parse_withdrawal,
)

KEY = {"dag_id": "payroll", "run_id": "manual__2026-11-25", "task_id": "withdraw"}


def test_order_id_is_the_same_for_every_retry_and_every_position() -> None:
    first = derive_external_order_id(**KEY, referral_account_id="7001")
    assert first == derive_external_order_id(**KEY, referral_account_id="7001")


@given(st.text(), st.text(), st.text(), st.text())
def test_derived_order_ids_look_like_feishu_ids(dag_id: str, run_id: str, task_id: str, account: str) -> None:
    order_id = derive_external_order_id(dag_id=dag_id, run_id=run_id, task_id=task_id, referral_account_id=account)
    assert len(order_id) == 19 and order_id.isdigit() and order_id[0] != "0"
    assert int(order_id) < 2**63
    assert check_external_order_id(order_id) == order_id


@pytest.mark.parametrize(
    "change",
    [
        {"dag_id": "other"},
        {"run_id": "manual__2026-11-26"},
        {"task_id": "withdraw_again"},
        {"referral_account_id": "7002"},
    ],
)
def test_order_id_differs_for_every_other_dag_run_task_or_account(change: dict[str, object]) -> None:
    base = {**KEY, "referral_account_id": "7001"}
    assert derive_external_order_id(**base) != derive_external_order_id(**{**base, **change})  # type: ignore[arg-type]


def test_order_id_fields_cannot_run_into_each_other() -> None:
    a = derive_external_order_id(**{**KEY, "dag_id": "ab", "run_id": "c"}, referral_account_id="1")
    b = derive_external_order_id(**{**KEY, "dag_id": "a", "run_id": "bc"}, referral_account_id="1")
    assert a != b


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, [1]),
        (2, [2]),
        ("points", [1]),
        ("cash", [2]),
        (" Cash ", [2]),
        ("1", [1]),
        ([2, "points", 1], [1, 2]),
        (("points", "cash"), [1, 2]),
        ("[1, 2]", [1, 2]),  # a rendered template
        ("1,2", [1, 2]),
        ("['points', 'cash']", [1, 2]),
    ],
)
def test_bonus_types_accept_codes_and_names(value: object, expected: list[int]) -> None:
    assert check_withdraw_bonus_type(value) == expected


@pytest.mark.parametrize("value", [[], (), "", "bonus", 3, [1, "stock"], True, None, 1.0, "[]", "[1, 3]"])
def test_bad_bonus_types_name_the_field(value: object) -> None:
    with pytest.raises((ValueError, TypeError), match="withdraw_bonus_type"):
        check_withdraw_bonus_type(value)


@pytest.mark.parametrize(
    "value", ["", "   ", "70/01", "70?x=1", "70#f", "70 01", "../withdraw", "7" * 65, "%2F", "a\nb"]
)
def test_bad_account_ids_name_the_field(value: str) -> None:
    with pytest.raises(ValueError, match="referral_account_id"):
        check_referral_account_id(value)


@pytest.mark.parametrize("value", [None, 1.5, True, ["7001"]])
def test_account_ids_of_the_wrong_type_name_the_field(value: object) -> None:
    with pytest.raises(TypeError, match="referral_account_id"):
        check_referral_account_id(value)


def test_integer_account_ids_become_strings() -> None:
    assert check_referral_account_id(7001000000000000001) == "7001000000000000001"


@pytest.mark.parametrize("value", ["", "  ", "x" * 65, "a b", "a/b", 123])
def test_bad_order_ids_name_the_field(value: object) -> None:
    with pytest.raises((ValueError, TypeError), match="external_order_id"):
        check_external_order_id(value)


ANSWER = {
    "external_order_id": "6942778198054125570",
    "trans_time": "1683634459543",
    "withdrawal_details": {
        "point_bonus": 100,
        "cash_bonus": [
            {"currency_type": "CNY", "amount": Decimal("100.1")},
            {"currency_type": "USD", "amount": 7},
            {"currency_type": "JPY", "amount": Decimal("0.105")},
        ],
    },
}


def test_an_answer_parses_exactly_and_goes_to_xcom_as_decimal_strings() -> None:
    withdrawal = parse_withdrawal("7001", ANSWER)
    assert withdrawal.cash_bonus == {"CNY": Decimal("100.1"), "USD": Decimal(7), "JPY": Decimal("0.105")}
    assert withdrawal.trans_time == 1683634459543
    xcom = withdrawal.as_xcom()
    assert xcom["referral_account_id"] == "7001" and xcom["trans_time"] == "1683634459543"
    assert xcom["withdrawal_details"]["cash_bonus"] == [
        {"currency_type": "CNY", "amount": "100.10"},
        {"currency_type": "JPY", "amount": "0.105"},  # never rounded away
        {"currency_type": "USD", "amount": "7.00"},
    ]
    assert withdrawal.describe() == (
        "referral account 7001: points 100, cash 100.10 CNY, 0.105 JPY, 7.00 USD (order 6942778198054125570)"
    )


def test_an_answer_without_cash_or_points_is_a_zero_withdrawal() -> None:
    withdrawal = parse_withdrawal("7001", {"external_order_id": "1", "trans_time": "1", "withdrawal_details": {}})
    assert (withdrawal.point_bonus, dict(withdrawal.cash_bonus)) == (0, {})


@pytest.mark.parametrize(
    ("details", "trans_time", "problem"),
    [
        ({"cash_bonus": [{"currency_type": "CNY", "amount": None}]}, "1", "amount"),
        ({"cash_bonus": [{"currency_type": "CNY", "amount": "abc"}]}, "1", "amount"),
        ({"cash_bonus": [{"currency_type": "CNY", "amount": "-1.00"}]}, "1", "amount"),
        ({"cash_bonus": [{"currency_type": "CNY", "amount": "NaN"}]}, "1", "amount"),
        ({"cash_bonus": [{"amount": "1.00"}]}, "1", "currency_type"),
        ({"point_bonus": Decimal("12.5")}, "1", "point_bonus"),
        ({"point_bonus": None}, "1", "point_bonus"),
        ({"point_bonus": True}, "1", "point_bonus"),
        ({}, None, "trans_time"),
        ({}, "yesterday", "trans_time"),
        (None, "1", "withdrawal_details"),  # money moved; how much is not "nothing"
        ("points 100", "1", "withdrawal_details"),
    ],
)
def test_an_unreadable_answer_is_never_guessed(details: object, trans_time: object, problem: str) -> None:
    with pytest.raises(UnreadableAnswer, match=problem):
        parse_withdrawal("7001", {"external_order_id": "1", "trans_time": trans_time, "withdrawal_details": details})
