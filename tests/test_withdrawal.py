"""Inputs checked before anything is sent, idempotency keys, and the XCom record's money."""

from __future__ import annotations

from decimal import Decimal

import pytest

from airflow_provider_feishu_hire.withdrawal import (
    check_external_order_id,
    check_referral_account_id,
    check_withdraw_bonus_type,
    derive_external_order_id,
    describe_withdrawal,
    withdrawal_record,
)

KEY = {"dag_id": "payroll", "run_id": "manual__2026-11-25", "task_id": "withdraw", "map_index": 0}


def test_order_id_is_the_same_for_every_retry_of_a_task_instance() -> None:
    first = derive_external_order_id(**KEY, referral_account_id="7001")
    assert first == derive_external_order_id(**KEY, referral_account_id="7001")
    assert first.isdigit() and len(first) == 19


@pytest.mark.parametrize(
    "change",
    [
        {"dag_id": "other"},
        {"run_id": "manual__2026-11-26"},
        {"task_id": "withdraw_again"},
        {"map_index": 1},
        {"referral_account_id": "7002"},
    ],
)
def test_order_id_differs_for_every_other_task_instance(change: dict[str, object]) -> None:
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
    ],
)
def test_bonus_types_accept_codes_and_names(value: object, expected: list[int]) -> None:
    assert check_withdraw_bonus_type(value) == expected


@pytest.mark.parametrize("value", [[], (), "", "bonus", 3, [1, "stock"], True, None, 1.0])
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


def test_record_keeps_cash_exact_and_json_safe() -> None:
    data = {
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
    record = withdrawal_record("7001", data)
    assert record["referral_account_id"] == "7001"
    assert record["withdrawal_details"]["cash_bonus"] == [
        {"currency_type": "CNY", "amount": "100.10"},
        {"currency_type": "USD", "amount": "7.00"},
        {"currency_type": "JPY", "amount": "0.105"},  # never rounded away
    ]
    assert describe_withdrawal(record) == (
        "referral account 7001: order 6942778198054125570, points 100, cash 100.10 CNY, 7.00 USD, 0.105 JPY"
    )
