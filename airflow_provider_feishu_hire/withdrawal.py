"""The withdraw endpoint's inputs and outputs, in Feishu's terms, checked before anything is sent.

Standard library only: the operator module imports this on every DAG parse.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from airflow_provider_feishu_hire.defaults import CENT

POINTS = 1
CASH = 2
_BONUS_TYPES = {"1": POINTS, "points": POINTS, "2": CASH, "cash": CASH}

# Feishu's ids are long digit strings; letters, digits, '_' and '-' leave room for other
# tenants' formats while making it impossible for an id to reach another path or query.
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]+")
MAX_ID_LENGTH = 64


# The same rule for a DAG's trigger form (a JSON-schema pattern): surrounding white space, as people
# paste ids, is allowed there and trimmed by the checks below; anything else is refused.
REFERRAL_ACCOUNT_ID_PATTERN = rf"^\s*[A-Za-z0-9_-]{{1,{MAX_ID_LENGTH}}}\s*$"


def check_referral_account_id(value: object, field: str = "referral_account_id") -> str:
    """Return the id as the string that goes into the URL path (surrounding white space trimmed), or say which
    field is wrong."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"{field} must be a string of digits, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise ValueError(f"{field} is empty")
    if len(text) > MAX_ID_LENGTH or not _SAFE_ID.fullmatch(text):
        raise ValueError(
            f"{field} {text!r} is not a referral account id: use up to {MAX_ID_LENGTH} letters, "
            "digits, '_' or '-' (no spaces, '/', '?', '#')"
        )
    return text


def check_referral_account_ids(value: object) -> list[str]:
    """A batch's account ids, every one checked before any is sent.

    Accepts a list (inline or from XCom) or, since templates render to text, the text of
    a list (JSON or Python) or of comma/newline separated ids.
    """
    items = [part for part in re.split(r"[\s,\[\]'\"]+", value) if part] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"referral_account_ids must be a list of account ids, got {type(value).__name__}")
    return [check_referral_account_id(item, f"referral_account_ids[{n}]") for n, item in enumerate(items)]


def check_external_order_id(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"external_order_id must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError("external_order_id is empty")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"external_order_id is {len(value)} characters long; at most {MAX_ID_LENGTH}")
    if not _SAFE_ID.fullmatch(value):
        raise ValueError(f"external_order_id {value!r} may hold only letters, digits, '_' and '-'")
    return value


def check_external_order_ids(value: object) -> dict[str, str]:
    """A batch's chosen order ids, by account id: each checked, and no order id shared by two accounts."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError("external_order_ids is text but not a JSON object of account id to order id") from None
    if not isinstance(value, Mapping):
        raise TypeError(f"external_order_ids must map account ids to order ids, got {type(value).__name__}")
    orders = {
        check_referral_account_id(account, "external_order_ids account id"): check_external_order_id(order)
        for account, order in value.items()
    }
    shared = [order for order, uses in Counter(orders.values()).items() if uses > 1]
    if shared:
        raise ValueError(
            f"external_order_ids gives order id {min(shared)} to more than one account: Feishu would answer the "
            "second account with the first one's withdrawal"
        )
    return orders


def check_withdraw_bonus_type(value: object) -> list[int]:
    """Accept 1/2, "points"/"cash", a list of them, or a template's text of a list ("[1, 2]", "1,2")."""
    if isinstance(value, str) and re.search(r"[\[\],]", value):
        value = [part for part in re.split(r"[\s,\[\]'\"]+", value) if part]
    items = [value] if isinstance(value, (str, int)) else value
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise TypeError("withdraw_bonus_type must be 1, 2, 'points', 'cash' or a list of them")
    kinds = set()
    for item in items:
        key = str(item).strip().lower() if isinstance(item, (str, int)) and not isinstance(item, bool) else None
        if key not in _BONUS_TYPES:
            raise ValueError(f"withdraw_bonus_type {item!r} is unknown: use 1/'points' or 2/'cash'")
        kinds.add(_BONUS_TYPES[key])
    if not kinds:
        raise ValueError("withdraw_bonus_type is empty: name points, cash or both")
    return sorted(kinds)


# Derived ids look like Feishu's own: 19 digits, no leading zero, below 2**63 (a signed
# 64-bit integer, in case a system on the way stores them as numbers).
_ORDER_ID_LOW = 10**18
_ORDER_ID_SPAN = 2**63 - _ORDER_ID_LOW


def derive_external_order_id(
    *,
    dag_id: str,
    run_id: str,
    task_id: str,
    referral_account_id: str,
    run_generation: int = 1,
    tenant_key: str | None = None,
) -> str:
    """The idempotency key of one task's withdrawal of one account in one DAG run.

    Independent of position: a retried, cleared, re-ordered, grown or shrunk account list
    gives every account the key it had, so Feishu replays the original withdrawal instead
    of paying (or emptying) anew, and an account listed twice is withdrawn once. Any other
    DAG, run, task or account gets another key, and so does a run deleted and created
    again under the same ``run_id`` (its ``run_generation``, counted by the ledger): it
    must pay the balance of its own time, not replay the deleted run's withdrawals. A store
    app's ``tenant_key`` keeps two customer companies' withdrawals apart.
    """
    parts = [dag_id, run_id, task_id, referral_account_id]
    if run_generation != 1:
        parts.append(f"generation {run_generation}")
    if tenant_key is not None:
        parts.append(f"tenant {tenant_key}")
    material = "\x1f".join(parts)
    digest = int.from_bytes(hashlib.sha256(material.encode()).digest()[:16], "big")
    return str(_ORDER_ID_LOW + digest % _ORDER_ID_SPAN)


def plural(count: int, noun: str) -> str:
    """ "1 referral account", "2 referral accounts": messages a person reads in the UI."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def format_money(amount: Decimal) -> str:
    """Decimal money as text with at least two places ("7.00", "0.105"): padded, never rounded."""
    return format(amount.quantize(CENT) if amount.as_tuple().exponent > -2 else amount, "f")  # type: ignore[operator]


def format_cash(cash: Mapping[str, Decimal]) -> str:
    """Cash per currency for a person: "3000.50 CNY, 2.00 USD", or "" for none."""
    return ", ".join(f"{format_money(amount)} {currency}" for currency, amount in sorted(cash.items()))


def cash_items(cash: Mapping[str, Decimal]) -> list[dict[str, str]]:
    """Cash per currency in Feishu's ``cash_bonus`` shape, JSON-safe: amounts as decimal strings, never floats."""
    return [{"currency_type": currency, "amount": format_money(amount)} for currency, amount in sorted(cash.items())]


def trans_time_iso(trans_time: str | int) -> str:
    """Feishu's ``trans_time`` (milliseconds since the epoch) as ISO 8601 in UTC, exact to the millisecond."""
    moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=int(trans_time))
    return moment.isoformat(timespec="milliseconds")


class UnreadableAnswer(ValueError):
    """A success answer whose amounts cannot be read exactly: money moved, but how much is unknown."""


@dataclass(frozen=True)
class Withdrawal:
    """What one withdrawal paid, as Feishu answered it: the fact payroll and reconciliation rest on.

    ``trans_time`` is Feishu's transaction time in milliseconds since the epoch; cash is
    exact ``Decimal`` per currency.
    """

    referral_account_id: str
    external_order_id: str
    trans_time: int
    point_bonus: int
    cash_bonus: Mapping[str, Decimal]

    def as_xcom(self) -> dict[str, Any]:
        """The answer's ``data`` plus the account id, JSON-safe: cash as decimal strings ("100.50").

        A JSON number would come back as a float to any consumer that does not parse it as Decimal.
        """
        return {
            "referral_account_id": self.referral_account_id,
            "external_order_id": self.external_order_id,
            "trans_time": str(self.trans_time),
            "withdrawal_details": {
                "point_bonus": self.point_bonus,
                "cash_bonus": cash_items(self.cash_bonus),
            },
        }

    def payroll_items(self) -> list[tuple[str, str, str]]:
        """``(bonus_type, currency, amount)`` per non-zero item, as payroll writes them: one definition for
        the CSV and the payroll table. Points are whole numbers; cash keeps its exact decimal amount."""
        items = [("points", "", str(self.point_bonus))] if self.point_bonus else []
        items += [("cash", currency, format_money(amount)) for currency, amount in self.cash_bonus.items() if amount]
        return items

    def describe(self) -> str:
        """One log line per account, the facts a person looks for first: who, how much, which order."""
        return (
            f"referral account {self.referral_account_id}: points {self.point_bonus}, "
            f"cash {format_cash(self.cash_bonus) or 'none'} "
            f"(order {self.external_order_id})"
        )


def parse_withdrawal(referral_account_id: str, data: Mapping[str, Any]) -> Withdrawal:
    """Read the withdraw answer's ``data`` exactly, or raise :class:`UnreadableAnswer` saying what is wrong.

    Nothing is guessed: a null or non-numeric amount, fractional points or a missing
    ``trans_time`` is not turned into zero, since the money has already moved.
    """
    details = data.get("withdrawal_details")
    if not isinstance(details, Mapping):  # absent or null: what was paid is unknown, not zero
        raise UnreadableAnswer(f"withdrawal_details is {type(details).__name__}, not an object")
    trans_time = data.get("trans_time")
    if isinstance(trans_time, bool) or not re.fullmatch(r"[0-9]{1,16}", str(trans_time)):
        raise UnreadableAnswer(f"trans_time {trans_time!r} is not milliseconds since the epoch")
    points, cash = parse_bonus(details)
    return Withdrawal(
        referral_account_id=referral_account_id,
        external_order_id=str(data.get("external_order_id", "")),
        trans_time=int(str(trans_time)),
        point_bonus=points,
        cash_bonus=cash,
    )


def parse_bonus(bonus: Mapping[str, Any]) -> tuple[int, dict[str, Decimal]]:
    """Points and cash per currency of a ``withdrawal_details`` or ``confirmed_bonus`` object, read exactly.

    Raises :class:`UnreadableAnswer` for fractional or negative points and for a cash item
    without a currency or an exact amount: money is never guessed to be zero.
    """
    points = bonus.get("point_bonus", 0)
    if isinstance(points, Decimal) and points == points.to_integral_value():
        points = int(points)
    if isinstance(points, bool) or not isinstance(points, int) or points < 0:
        raise UnreadableAnswer(f"point_bonus {points!r} is not a whole number of points")
    cash: dict[str, Decimal] = {}
    items = bonus.get("cash_bonus")
    for item in [] if items is None else items if isinstance(items, list) else [items]:
        currency = item.get("currency_type") if isinstance(item, Mapping) else None
        amount = _exact_amount(item.get("amount") if isinstance(item, Mapping) else None)
        if not isinstance(currency, str) or not currency.strip() or amount is None:
            raise UnreadableAnswer(f"cash_bonus item {item!r} has no currency_type and exact amount")
        cash[currency] = cash.get(currency, Decimal(0)) + amount
    return points, cash


def _exact_amount(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, str, Decimal)):
        return None  # null, a float (never produced by our parser), a list...
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return amount if amount.is_finite() and amount >= 0 else None
