"""The Airflow side of the client: an Airflow connection in, a configured FeishuClient out."""

from __future__ import annotations

from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import BaseHook
from airflow.sdk.log import mask_secret

from airflow_provider_feishu_hire.client import (
    ACCOUNT_ASSETS_LIMIT_PER_SECOND,
    DEFAULT_BASE_URL,
    WITHDRAW_LIMIT_PER_MINUTE,
    FeishuClient,
    RetryPolicy,
)
from airflow_provider_feishu_hire.exceptions import SCOPE_CODE, TOKEN_CODES, FeishuAPIError
from airflow_provider_feishu_hire.ledger import Ledger
from airflow_provider_feishu_hire.pace import Pace, RateLimiter, SharedPace

# A syntactically valid id no tenant has: reading it is harmless and proves the scope.
SCOPE_PROBE_ACCOUNT_ID = "0"


class FeishuHireHook(BaseHook):
    """Feishu Hire through the ``feishu_hire`` connection.

    Connection: login = App ID, password = App Secret, host = API base URL (empty means
    ``https://open.feishu.cn``; ``https://open.larksuite.com`` for Lark, or
    ``http://127.0.0.1:PORT`` for the bundled sandbox). The extra may hold ``timeout``
    (seconds per request), ``max_attempts``, ``backoff_base``, ``backoff_max``,
    ``retry_budget`` (seconds for all attempts of one call), ``withdraw_rate_limit``
    (withdrawals per minute, default Feishu's 100) and ``assets_rate_limit`` (balance reads
    per second, default 10); a rate limit of 0 turns client-side pacing off, and
    ``shared_pace: false`` paces each task process on its own instead of through the ledger.

    One hook owns one client, so all calls of a task, from any of its threads, share one
    keep-alive session, one token and one pace. ``withdraw_per_minute`` and
    ``assets_per_second`` override the connection's limits for this hook. Given the payout
    ``ledger``, the pace is the ledger's :class:`SharedPace`: one per app for every task,
    process and worker, so that together they stay within Feishu's limits.
    """

    conn_name_attr = "feishu_hire_conn_id"
    default_conn_name = "feishu_hire_default"
    conn_type = "feishu_hire"
    hook_name = "Feishu Hire"

    def __init__(
        self,
        feishu_hire_conn_id: str = default_conn_name,
        *,
        withdraw_per_minute: float | None = None,
        assets_per_second: float | None = None,
        pool_size: int = 10,
        ledger: Ledger | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.feishu_hire_conn_id = feishu_hire_conn_id
        self.ledger = ledger
        self.withdraw_per_minute = withdraw_per_minute
        self.assets_per_second = assets_per_second
        self.pool_size = pool_size

    @cached_property
    def client(self) -> FeishuClient:
        return self._build_client()

    def _build_client(self, retry: RetryPolicy | None = None) -> FeishuClient:
        conn = self.get_connection(self.feishu_hire_conn_id)
        extra = conn.extra_dejson if isinstance(conn.extra_dejson, dict) else {}
        defaults = RetryPolicy()
        return FeishuClient(
            conn.login or "",
            conn.password or "",
            _base_url(conn.host, conn.port),
            timeout=_number(extra, "timeout", 10.0),
            retry=retry
            or RetryPolicy(
                max_attempts=int(_number(extra, "max_attempts", defaults.max_attempts)),
                backoff_base=_number(extra, "backoff_base", defaults.backoff_base),
                backoff_max=_number(extra, "backoff_max", defaults.backoff_max),
                budget=_number(extra, "retry_budget", defaults.budget),
            ),
            withdraw_limiter=self._pace(
                extra,
                f"{conn.login}:withdraw",
                self.withdraw_per_minute,
                _number(extra, "withdraw_rate_limit", None),
                WITHDRAW_LIMIT_PER_MINUTE,
                60.0,
            ),
            assets_limiter=self._pace(
                extra,
                f"{conn.login}:get_account_assets",
                self.assets_per_second,
                _number(extra, "assets_rate_limit", None),
                ACCOUNT_ASSETS_LIMIT_PER_SECOND,
                1.0,
            ),
            # Registered before the token is used anywhere, so no log line can show it.
            on_new_token=mask_secret,
            pool_size=self.pool_size,
        )

    def _pace(
        self,
        extra: dict[str, Any],
        key: str,
        override: float | None,
        configured: float | None,
        published: int,
        period: float,
    ) -> Pace | None:
        """The operator's limit, else the connection's, else Feishu's published one; 0 means no pacing.

        Shared through the ledger unless the connection's ``shared_pace`` is false.
        """
        limit = float(override if override is not None else configured if configured is not None else published)
        if limit <= 0:
            return None
        if self.ledger is not None and extra.get("shared_pace") not in (False, "false", "False", 0):
            return SharedPace(self.ledger.reserve_slot, key, limit, period)
        return RateLimiter(limit, period)

    def get_conn(self) -> FeishuClient:
        return self.client

    def get_tenant_access_token(self) -> str:
        return self.client.get_tenant_access_token()

    def withdraw_referral_account(
        self, referral_account_id: object, withdraw_bonus_type: object, external_order_id: object
    ) -> dict[str, Any]:
        """Withdraw the whole balance of the chosen bonus types; return the API's ``data``."""
        return self.client.withdraw_referral_account(referral_account_id, withdraw_bonus_type, external_order_id)

    def get_account_assets(self, referral_account_id: object, user_id_type: object = None) -> dict[str, Any]:
        return self.client.get_account_assets(referral_account_id, user_id_type)

    def register_referral_account(self, **referrer: object) -> dict[str, Any]:
        """``mobile`` (with ``mobile_code``, default 86) or ``email``, and ``user_id_type``; returns the account."""
        return self.client.register_referral_account(**referrer)

    def deactivate_referral_account(self, referral_account_id: object) -> dict[str, Any]:
        return self.client.deactivate_referral_account(referral_account_id)

    def enable_referral_account(self, referral_account_id: object, user_id_type: object = None) -> dict[str, Any]:
        return self.client.enable_referral_account(referral_account_id, user_id_type)

    def reconcile_referral_accounts(
        self, start_trans_time: object, end_trans_time: object, point_totals: dict[str, object]
    ) -> list[dict[str, Any]]:
        """Feishu's ``check_failed_list`` for the window: every account where its figures and ours disagree."""
        return self.client.reconcile_referral_accounts(start_trans_time, end_trans_time, point_totals)

    def test_connection(self) -> tuple[bool, str]:
        """Fetch a token, then read the balance of an account id that cannot exist.

        Nothing is written and no money moves. The read tells a missing
        ``hire:referral_account`` scope (99991672) from a working app ("account does
        not exist"). One attempt, no retries: a person is waiting on the Test button.
        """
        try:
            with self._build_client(RetryPolicy(max_attempts=1)) as client:
                client.get_tenant_access_token()
                try:
                    client.get_account_assets(SCOPE_PROBE_ACCOUNT_ID)
                except FeishuAPIError as exc:
                    if exc.code == SCOPE_CODE or exc.code is None or exc.code in TOKEN_CODES:
                        raise
        except ValueError as exc:
            return False, str(exc)
        except FeishuAPIError as exc:
            return False, _explain(exc)
        return True, (
            f"Connected to {client.base_url} as app {client.app_id}: token fetched, hire:referral_account scope granted"
        )


def _number(extra: dict[str, Any], key: str, default: Any) -> Any:
    """A numeric extra; absent, null or empty means the default (the form saves empty fields as null)."""
    value = extra.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"connection extra {key} must be a number, got {value!r}") from None


def _base_url(host: str | None, port: int | None) -> str:
    url = (host or "").strip() or DEFAULT_BASE_URL
    if "://" not in url:
        url = f"https://{url}"
    if port and urlsplit(url).port is None:
        url = f"{url.rstrip('/')}:{port}"
    return url


def _explain(exc: FeishuAPIError) -> str:
    if exc.code is None:
        return f"Could not talk to Feishu: {exc}. Check the API base URL and that this machine can reach it."
    if exc.code == SCOPE_CODE:
        return (
            "The app lacks the hire:referral_account scope: grant it in the Feishu developer console "
            f"and publish a new app version. {exc}"
        )
    if exc.code in (10003, 10014):
        return f"Feishu rejected the App ID or App Secret: {exc}"
    return str(exc)
