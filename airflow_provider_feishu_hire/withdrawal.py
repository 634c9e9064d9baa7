"""The withdraw endpoint's inputs and outputs, in Feishu's terms, checked before anything is sent.

Standard library only: the operator module imports this on every DAG parse.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

POINTS = 1
CASH = 2
BONUS_TYPE_NAMES = {POINTS: "points", CASH: "cash"}
_BONUS_TYPES = {"1": POINTS, "points": POINTS, "2": CASH, "cash": CASH}

# Feishu's ids are long digit strings; letters, digits, '_' and '-' leave room for other
# tenants' formats while making it impossible for an id to reach another path or query.
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]+")
MAX_ID_LENGTH = 64
_CENT = Decimal("0.01")


def check_referral_account_id(value: object, field: str = "referral_account_id") -> str:
    """Return the id as the string that goes into the URL path, or say which field is wrong."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"{field} must be a string of digits, got {type(value).__name__}")
    text = str(value)
    if not text.strip():
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


def check_withdraw_bonus_type(value: object) -> list[int]:
    """Accept 1/2, "points"/"cash" (or their digit strings, as templates render them), or a list of them."""
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


def derive_external_order_id(
    *, dag_id: str, run_id: str, task_id: str, map_index: int, referral_account_id: str
) -> str:
    """The idempotency key of one task instance's withdrawal of one account.

    Every retry of the same task instance gets the same key, so Feishu answers a
    repeated withdrawal with the original details instead of paying again; any other
    run, task, map index or account gets another. Digits only, 19 of them, like
    Feishu's own examples, since the characters Feishu accepts are undocumented.
    """
    material = "\x1f".join([dag_id, run_id, task_id, str(map_index), referral_account_id])
    digest = int.from_bytes(hashlib.sha256(material.encode()).digest()[:16], "big")
    return f"{digest % 10**19:019d}"


def file_safe(text: str) -> str:
    """A run id or task id as part of a file name (run ids carry ':' and '+')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def format_money(amount: object) -> str:
    """Decimal money as text with at least two places ("7.00", "0.105"): padded, never rounded."""
    value = Decimal(str(amount))
    # Pad to cents, but never round: a third decimal from Feishu is kept, not lost.
    return format(value.quantize(_CENT) if value.as_tuple().exponent > -2 else value, "f")  # type: ignore[operator]


def withdrawal_record(referral_account_id: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """The withdraw answer's ``data`` plus the account id, as JSON-safe values for XCom.

    Cash amounts become decimal strings ("100.50"): a JSON number would come back as a
    float to any consumer that does not parse it as Decimal.
    """
    details = data.get("withdrawal_details") or {}
    return {
        "referral_account_id": referral_account_id,
        "external_order_id": str(data.get("external_order_id", "")),
        "trans_time": str(data.get("trans_time", "")),
        "withdrawal_details": {
            "point_bonus": int(details.get("point_bonus") or 0),
            "cash_bonus": [
                {"currency_type": str(item.get("currency_type", "")), "amount": format_money(item.get("amount", 0))}
                for item in details.get("cash_bonus") or []
            ],
        },
    }


def describe_withdrawal(record: Mapping[str, Any]) -> str:
    """One log line per account: what moved, never a secret."""
    details = record["withdrawal_details"]
    cash = ", ".join(f"{c['amount']} {c['currency_type']}" for c in details["cash_bonus"]) or "none"
    return (
        f"referral account {record['referral_account_id']}: order {record['external_order_id']}, "
        f"points {details['point_bonus']}, cash {cash}"
    )
