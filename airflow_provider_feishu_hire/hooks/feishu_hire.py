"""The Airflow side of the client: an Airflow connection in, a configured FeishuClient out."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.sdk import BaseHook
from airflow.sdk.log import mask_secret

from airflow_provider_feishu_hire.client import (
    ACCOUNT_ASSETS_LIMIT_PER_SECOND,
    DEFAULT_BASE_URL,
    WITHDRAW_LIMIT_PER_MINUTE,
    FeishuClient,
    RetryPolicy,
    check_app_type,
    check_base_url,
)
from airflow_provider_feishu_hire.defaults import DEFAULT_FEISHU_HIRE_CONN_ID
from airflow_provider_feishu_hire.exceptions import APP_TICKET_CODE, SCOPE_CODE, TOKEN_CODES, FeishuAPIError
from airflow_provider_feishu_hire.ledger import Ledger
from airflow_provider_feishu_hire.pace import Pace, RateLimiter, SharedPace

if TYPE_CHECKING:
    from airflow.sdk import Connection

# A syntactically valid id no tenant has: reading it is harmless and proves the scope.
SCOPE_PROBE_ACCOUNT_ID = "0"
# Where a store app's app_ticket is read from unless the connection's extra names another Variable.
DEFAULT_APP_TICKET_VARIABLE = "feishu_hire_app_ticket"


@dataclass(frozen=True)
class FeishuConnectionSettings:
    """What a ``feishu_hire`` connection says, checked: the one reading of it for the hook and the trigger.

    ``app_ticket_variable`` is set for store (isv) apps only: the Airflow Variable holding
    the app_ticket Feishu last pushed. The App Secret is kept out of ``repr``.
    """

    app_id: str
    app_secret: str = field(repr=False)
    base_url: str
    app_type: str
    tenant_key: str | None
    app_ticket_variable: str | None
    timeout: float
    retry: RetryPolicy
    withdraw_rate_limit: float | None
    assets_rate_limit: float | None
    shared_pace: bool

    @property
    def app_ticket(self) -> Callable[[], str | None] | None:
        """What the client calls at every token fetch to get the current app_ticket (store apps only)."""
        return partial(read_app_ticket, self.app_ticket_variable) if self.app_ticket_variable else None


def connection_settings(conn: Connection, extra: Mapping[str, Any]) -> FeishuConnectionSettings:
    """Read a connection (and its already decoded ``extra``) into client settings, or say which field is wrong.

    Takes the extra separately because the async trigger decodes it asynchronously; no
    I/O happens here, so both sides share every rule.
    """
    app_type, tenant_key = check_app_type(extra.get("app_type"), extra.get("tenant_key"))
    variable = _text(extra, "app_ticket_variable") or DEFAULT_APP_TICKET_VARIABLE
    defaults = RetryPolicy()
    return FeishuConnectionSettings(
        app_id=conn.login or "",
        app_secret=conn.password or "",
        base_url=check_base_url(_base_url(conn.host, conn.port)),
        app_type=app_type,
        tenant_key=tenant_key,
        app_ticket_variable=variable if app_type == "isv" else None,
        timeout=_number(extra, "timeout", 10.0),
        retry=RetryPolicy(
            max_attempts=int(_number(extra, "max_attempts", defaults.max_attempts)),
            backoff_base=_number(extra, "backoff_base", defaults.backoff_base),
            backoff_max=_number(extra, "backoff_max", defaults.backoff_max),
            budget=_number(extra, "retry_budget", defaults.budget),
        ),
        withdraw_rate_limit=_number(extra, "withdraw_rate_limit", None),
        assets_rate_limit=_number(extra, "assets_rate_limit", None),
        shared_pace=extra.get("shared_pace") not in (False, "false", "False", 0),
    )


def read_app_ticket(variable: str) -> str | None:
    """The app_ticket in the Airflow Variable ``variable``, masked in logs; None while it is absent or empty.

    Read at every token fetch, not once: Feishu pushes a new ticket about hourly and the
    receiver stores it there, so a long-running task or trigger picks it up without a restart.
    """
    from airflow.sdk import Variable

    value = Variable.get(variable, default=None)
    ticket = str(value).strip() if value is not None else ""
    if not ticket:
        return None
    # Variable.get masks the stored text; the stripped ticket is what travels, so mask that too.
    mask_secret(ticket)
    return ticket


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

    A store (marketplace) app has ``app_type: isv`` (the default ``custom`` is a self-built
    app), the customer tenant's ``tenant_key``, and ``app_ticket_variable``: the Airflow
    Variable (default ``feishu_hire_app_ticket``) where the receiver of the app's
    ``app_ticket`` event stores the ticket Feishu pushes about hourly. The ticket changes,
    so it cannot live in the connection; it is read at every token fetch.

    One hook owns one client, so all calls of a task, from any of its threads, share one
    keep-alive session, one token and one pace. ``withdraw_per_minute`` and
    ``assets_per_second`` override the connection's limits for this hook. Given the payout
    ``ledger``, the pace is the ledger's :class:`SharedPace`: one per app for every task,
    process and worker, so that together they stay within Feishu's limits.
    """

    conn_name_attr = "feishu_hire_conn_id"
    default_conn_name = DEFAULT_FEISHU_HIRE_CONN_ID
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
        return self._build_client(self.settings())

    def settings(self) -> FeishuConnectionSettings:
        """The connection, read and checked; raises ValueError naming the field that is wrong."""
        conn = self.get_connection(self.feishu_hire_conn_id)
        return connection_settings(conn, conn.extra_dejson if isinstance(conn.extra_dejson, dict) else {})

    def _build_client(self, settings: FeishuConnectionSettings, retry: RetryPolicy | None = None) -> FeishuClient:
        return FeishuClient(
            settings.app_id,
            settings.app_secret,
            settings.base_url,
            timeout=settings.timeout,
            retry=retry or settings.retry,
            withdraw_limiter=self._pace(
                settings,
                f"{settings.app_id}:withdraw",
                self.withdraw_per_minute,
                settings.withdraw_rate_limit,
                WITHDRAW_LIMIT_PER_MINUTE,
                60.0,
            ),
            assets_limiter=self._pace(
                settings,
                f"{settings.app_id}:get_account_assets",
                self.assets_per_second,
                settings.assets_rate_limit,
                ACCOUNT_ASSETS_LIMIT_PER_SECOND,
                1.0,
            ),
            # Registered before the token is used anywhere, so no log line can show it.
            on_new_token=mask_secret,
            pool_size=self.pool_size,
            app_type=settings.app_type,
            tenant_key=settings.tenant_key,
            app_ticket=settings.app_ticket,
        )

    def _pace(
        self,
        settings: FeishuConnectionSettings,
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
        if self.ledger is not None and settings.shared_pace:
            return SharedPace(self.ledger.reserve_wait, key, limit, period)
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
        A store app's refused app_ticket (10012) makes the client ask Feishu to push a
        new one; the message says which Variable it must be stored in.
        """
        try:
            settings = self.settings()
            with self._build_client(settings, RetryPolicy(max_attempts=1)) as client:
                client.get_tenant_access_token()
                try:
                    client.get_account_assets(SCOPE_PROBE_ACCOUNT_ID)
                except FeishuAPIError as exc:
                    if exc.code == SCOPE_CODE or exc.code is None or exc.code in TOKEN_CODES:
                        raise
        except ValueError as exc:
            return False, str(exc)
        except FeishuAPIError as exc:
            return False, _explain(exc, settings)
        tenant = f" in tenant {settings.tenant_key} (store app)" if settings.app_type == "isv" else ""
        return True, (
            f"Connected to {client.base_url} as app {client.app_id}{tenant}: token fetched, "
            "hire:referral_account scope granted"
        )


def _text(extra: Mapping[str, Any], key: str) -> str | None:
    value = extra.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"connection extra {key} must be text, got {value!r}")
    return value.strip() or None


def _number(extra: Mapping[str, Any], key: str, default: Any) -> Any:
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


def _explain(exc: FeishuAPIError, settings: FeishuConnectionSettings) -> str:
    if exc.code is None:
        return f"Could not talk to Feishu: {exc}. Check the API base URL and that this machine can reach it."
    if exc.code == SCOPE_CODE:
        return (
            "The app lacks the hire:referral_account scope: grant it in the Feishu developer console "
            f"and publish a new app version. {exc}"
        )
    if exc.code == APP_TICKET_CODE:
        return (
            f"Feishu did not accept the store app's app_ticket. {exc}. This connection reads the ticket from the "
            f"Airflow Variable {settings.app_ticket_variable!r} (connection field app_ticket_variable)."
        )
    if exc.code == 10003 and settings.app_type == "isv":
        return (
            f"Feishu rejected the App ID or the tenant_key {settings.tenant_key!r}: check the App ID, and that the "
            f"store app is installed in the customer's tenant whose tenant_key this is. {exc}"
        )
    if exc.code in (10003, 10014):
        return f"Feishu rejected the App ID or App Secret: {exc}"
    return str(exc)
