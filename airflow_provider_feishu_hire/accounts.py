"""The other referral-account endpoints' inputs, in Feishu's terms, checked before anything is sent.

Standard library only, like ``withdrawal.py``: operator modules import it on every DAG parse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

USER_ID_TYPES = ("open_id", "union_id", "user_id", "people_admin_id")
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{1,63}")
_DIGITS = re.compile(r"[0-9]{1,16}")


def check_user_id_type(value: object) -> str | None:
    if value is None or value == "":
        return None
    if value not in USER_ID_TYPES:
        raise ValueError(f"user_id_type {value!r} is not one of {', '.join(USER_ID_TYPES)}")
    return str(value)


def check_referrer(*, mobile: object = None, mobile_code: object = "86", email: object = None) -> dict[str, Any]:
    """The register body: a mobile number (with its country code) or an email, exactly one."""
    if (mobile in (None, "")) == (email in (None, "")):
        raise ValueError("give the referrer's mobile or email, exactly one of them")
    if email not in (None, ""):
        if not isinstance(email, str) or not _EMAIL.fullmatch(email.strip()):
            raise ValueError(f"email {email!r} is not an email address")
        return {"email": email.strip()}
    number = str(mobile).strip() if isinstance(mobile, (str, int)) and not isinstance(mobile, bool) else ""
    code = str(mobile_code).strip().lstrip("+") if isinstance(mobile_code, (str, int)) else ""
    if not re.fullmatch(r"[0-9]{4,20}", number):
        raise ValueError(f"mobile {mobile!r} is not a phone number (digits only, without the country code)")
    if not re.fullmatch(r"[0-9]{1,4}", code):
        raise ValueError(f"mobile_code {mobile_code!r} is not a country calling code such as 86")
    return {"mobile": {"code": code, "number": number}}


def check_trans_time(value: object, field: str) -> str:
    """Milliseconds since the epoch as Feishu's digit string."""
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not _DIGITS.fullmatch(text):
        raise ValueError(f"{field} {value!r} is not milliseconds since the epoch")
    return text


def check_point_totals(totals: Mapping[str, object]) -> list[dict[str, Any]]:
    """``trade_details``: what our side recorded per account (points only: the endpoint compares points)."""
    from airflow_provider_feishu_hire.withdrawal import check_referral_account_id

    details = []
    for account_id, points in sorted(totals.items()):
        if isinstance(points, bool) or not isinstance(points, int) or points < 0:
            raise ValueError(f"point total {points!r} of referral account {account_id} is not a whole number")
        details.append(
            {
                "account_id": check_referral_account_id(account_id, "trade_details.account_id"),
                "total_recharge_reward_info": {"point_bonus": points},
            }
        )
    return details


def check_trans_time_window(start: object, end: object) -> tuple[int, int] | None:
    """``[start, end)`` in ms from two ends given as ms or ISO 8601 (a template's output); None when both are empty."""
    if start in (None, "") and end in (None, ""):
        return None
    if start in (None, "") or end in (None, ""):
        raise ValueError("start_trans_time and end_trans_time go together: give both or neither")
    low, high = _millis(start, "start_trans_time"), _millis(end, "end_trans_time")
    if low >= high:
        raise ValueError(f"start_trans_time {start} is not before end_trans_time {end}")
    return low, high


def _millis(value: object, field: str) -> int:
    """Milliseconds since the epoch from an int, a digit string or an ISO 8601 datetime."""
    import pendulum  # only when a window is given: this module is imported on every DAG parse

    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if _DIGITS.fullmatch(text):
        return int(text)
    try:
        moment: Any = value if isinstance(value, datetime) else pendulum.parse(text)
        return int(moment.timestamp()) * 1000 + moment.microsecond // 1000
    except (ValueError, TypeError, AttributeError):
        raise ValueError(f"{field} {value!r} is neither milliseconds since the epoch nor an ISO 8601 time") from None
