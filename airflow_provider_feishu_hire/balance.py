"""What the referral balance sensor waits for, in Feishu's terms: thresholds, and the confirmed balance read exactly.

Standard library only: the sensor module imports it on every DAG parse, and the trigger,
the payout's balance checks and the approval preview read balances with the same rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from airflow_provider_feishu_hire.defaults import CENT
from airflow_provider_feishu_hire.withdrawal import (
    CASH,
    POINTS,
    UnreadableAnswer,
    cash_items,
    format_cash,
    format_money,
    parse_bonus,
)

_CURRENCY = re.compile(r"[A-Z]{3}")
DEACTIVATED = 2  # get_account_assets' status: 1 enabled, 2 deactivated
# One balance read a second at most per sensor: a tenth of Feishu's 10 a second for the
# app, so several sensors and the payout's own pre-checks still fit beside it.
MIN_POKE_INTERVAL = 1.0


class AccountDeactivated(Exception):
    """The account's balance cannot be withdrawn until an HR admin enables it: waiting cannot fix that."""


def check_poke_interval(value: object) -> float:
    seconds = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else -1.0
    if seconds < MIN_POKE_INTERVAL:
        raise ValueError(
            f"poke_interval {value!r} is below {MIN_POKE_INTERVAL:g} second: Feishu allows an app 10 balance "
            "reads a second in all, shared by every sensor and payout"
        )
    return seconds


@dataclass(frozen=True)
class BalanceThreshold:
    """The least confirmed balance to wait for: points, cash in one currency, or both (both must be reached)."""

    point_bonus: int | None = None
    cash_bonus: Decimal | None = None
    currency_type: str | None = None

    def reached_by(self, balance: Balance) -> bool:
        """Whether the wait is over; raises :class:`AccountDeactivated` for an account that cannot be paid."""
        if not balance.enabled:
            raise AccountDeactivated(
                f"referral account {balance.referral_account_id} is deactivated: its balance cannot be withdrawn "
                "until an HR admin enables it again"
            )
        if self.point_bonus is not None and balance.point_bonus < self.point_bonus:
            return False
        if self.cash_bonus is not None and self.currency_type is not None:
            return balance.cash_bonus.get(self.currency_type, Decimal(0)) >= self.cash_bonus
        return True

    def as_strings(self) -> dict[str, str | None]:
        """The sensor's keyword arguments as text: what a trigger serializes (never a float)."""
        return {
            "min_point_bonus": None if self.point_bonus is None else str(self.point_bonus),
            "min_cash_bonus": None if self.cash_bonus is None else format_money(self.cash_bonus),
            "currency_type": self.currency_type,
        }

    def describe(self) -> str:
        parts = [] if self.point_bonus is None else [f"{self.point_bonus} points"]
        if self.cash_bonus is not None:
            parts.append(f"{format_money(self.cash_bonus)} {self.currency_type}")
        return " and ".join(parts)


def check_balance_threshold(min_point_bonus: object, min_cash_bonus: object, currency_type: object) -> BalanceThreshold:
    """The thresholds as given to the sensor (numbers, or text as templates render them); errors name the field."""
    points = None if _absent(min_point_bonus) else _whole_points(min_point_bonus)
    cash = None if _absent(min_cash_bonus) else _cash(min_cash_bonus)
    currency = None if _absent(currency_type) else str(currency_type).strip().upper()
    if points is None and cash is None:
        raise ValueError("give min_point_bonus, min_cash_bonus (with currency_type) or both: nothing to wait for")
    if cash is not None and currency is None:
        raise ValueError("currency_type is empty: min_cash_bonus is an amount in one currency, such as CNY")
    if currency is not None and cash is None:
        raise ValueError(f"currency_type {currency_type!r} is given without min_cash_bonus")
    if currency is not None and not _CURRENCY.fullmatch(currency):
        raise ValueError(f"currency_type {currency_type!r} is not a three-letter currency code such as CNY")
    return BalanceThreshold(points, cash, currency)


def _absent(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _whole_points(value: object, field: str = "min_point_bonus", least: int = 1) -> int:
    text = str(value).strip() if isinstance(value, (str, int, Decimal)) and not isinstance(value, bool) else ""
    if not re.fullmatch(r"[0-9]{1,15}", text) or int(text) < least:
        raise ValueError(f"{field} {value!r} is not a whole number of points of {least} or more")
    return int(text)


def _cash(value: object, field: str = "min_cash_bonus", least: Decimal = CENT) -> Decimal:
    if isinstance(value, float):
        raise TypeError(f"{field} {value!r} is a float: give money as a string such as '100.00' or a Decimal")
    try:
        amount = Decimal(str(value).strip()) if isinstance(value, (str, int, Decimal)) else None
    except InvalidOperation:
        amount = None
    if isinstance(value, bool) or amount is None or not amount.is_finite() or amount < least:
        raise ValueError(f"{field} {value!r} is not an amount of money of {least} or more, such as '100.00'")
    if amount != amount.quantize(CENT):
        raise ValueError(f"{field} {value!r} has more than two decimal places: cash is counted in cents")
    return amount


@dataclass(frozen=True)
class AutoApproveUpTo:
    """The most one account may be paid without a person's approval: points, and cash per currency.

    It is the event payout's standing approval, set by the DAG's author in code (never a run
    parameter, which whoever triggers a run could raise). A balance within it is paid at
    once, and the withdrawal records the policy in the ledger as the approval it acted on; a
    balance above it in points or in any currency (a currency without a limit counts as
    above) waits for a person's approval.
    """

    point_bonus: int
    cash_bonus: Mapping[str, Decimal]

    def excess(self, balance: Balance, bonus_types: Sequence[int] = (POINTS, CASH)) -> str | None:
        """Why what a withdrawal of ``bonus_types`` would take is more than the policy pays unasked, or None."""
        points = balance.point_bonus if POINTS in bonus_types else 0
        over = [] if points <= self.point_bonus else [f"{points} points"]
        over += [
            f"{format_money(amount)} {currency}"
            for currency, amount in sorted(balance.cash_bonus.items())
            if CASH in bonus_types and amount > self.cash_bonus.get(currency, Decimal(0))  # no limit: only zero
        ]
        return f"{', '.join(over)} above auto_approve_up_to ({self.describe()})" if over else None

    def describe(self) -> str:
        return f"{self.point_bonus} points, cash {format_cash(self.cash_bonus) or 'none'} per account"


def check_auto_approve_up_to(value: object) -> AutoApproveUpTo | None:
    """``{"point_bonus": 100, "cash_bonus": {"CNY": "50.00"}}`` read exactly; None when no policy is given."""
    if value is None:
        return None
    field = "auto_approve_up_to"
    if not isinstance(value, Mapping) or not set(value) <= {"point_bonus", "cash_bonus"}:
        raise ValueError(f'{field} {value!r} is not {{"point_bonus": 100, "cash_bonus": {{"CNY": "50.00"}}}}')
    cash = value.get("cash_bonus") or {}
    if not isinstance(cash, Mapping):
        raise ValueError(f"{field}.cash_bonus {cash!r} is not a mapping of currency to amount such as {{'CNY': '50'}}")
    limits = {}
    for currency, amount in cash.items():
        code = str(currency).strip().upper()
        if not _CURRENCY.fullmatch(code):
            raise ValueError(f"{field}.cash_bonus currency {currency!r} is not a three-letter code such as CNY")
        limits[code] = _cash(amount, f"{field}.cash_bonus.{code}", Decimal(0))
    return AutoApproveUpTo(_whole_points(value.get("point_bonus", 0), f"{field}.point_bonus", 0), limits)


@dataclass(frozen=True)
class Balance:
    """One account's confirmed balance and status, as ``get_account_assets`` answered them."""

    referral_account_id: str
    enabled: bool
    point_bonus: int
    cash_bonus: Mapping[str, Decimal]

    def as_xcom(self) -> dict[str, Any]:
        """``confirmed_bonus`` in Feishu's shape, JSON-safe: cash as decimal strings ("3000.50"), never floats."""
        return {
            "referral_account_id": self.referral_account_id,
            "point_bonus": self.point_bonus,
            "cash_bonus": cash_items(self.cash_bonus),
        }

    def describe(self) -> str:
        return f"{self.point_bonus} points, cash {format_cash(self.cash_bonus) or 'none'}"


def parse_account_assets(referral_account_id: str, data: Mapping[str, Any]) -> Balance:
    """Read ``get_account_assets``' ``data`` exactly, or raise :class:`UnreadableAnswer` saying what is wrong.

    A missing or inexact amount is not read as zero: a sensor must not fire, or keep
    waiting, on a balance it only guessed.
    """
    account = data.get("account")
    if not isinstance(account, Mapping):
        raise UnreadableAnswer(f"the balance answer of referral account {referral_account_id} has no account")
    assets = account.get("assets")
    bonus = assets.get("confirmed_bonus") if isinstance(assets, Mapping) else None
    if not isinstance(bonus, Mapping):
        raise UnreadableAnswer(f"referral account {referral_account_id}'s answer has no assets.confirmed_bonus")
    points, cash = parse_bonus(bonus)
    # Only a stated deactivation counts: an answer without a status is not read as one.
    return Balance(referral_account_id, account.get("status") != DEACTIVATED, points, cash)
