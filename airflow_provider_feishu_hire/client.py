"""The Feishu Open API client core: one keep-alive session, the tenant token, the envelope, retries, pacing.

Nothing here knows Airflow. The hook builds a :class:`FeishuClient` from a connection;
benchmarks and scripts can build one directly. Every call goes through
:meth:`FeishuClient._call`, so there is exactly one retry policy and one place where
Feishu's answer is judged.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import threading
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import requests

from airflow_provider_feishu_hire.accounts import (
    check_point_totals,
    check_referrer,
    check_trans_time,
    check_user_id_type,
)
from airflow_provider_feishu_hire.exceptions import (
    APP_TICKET_CODE,
    PERMANENT_CODES,
    RATE_LIMIT_CODE,
    TOKEN_CODES,
    TRANSIENT_CODES,
    FeishuAPIError,
    Reach,
)
from airflow_provider_feishu_hire.pace import Pace
from airflow_provider_feishu_hire.withdrawal import (
    check_external_order_id,
    check_referral_account_id,
    check_withdraw_bonus_type,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://open.feishu.cn"
TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
# A store (isv) app's three steps: the app_ticket Feishu pushes, an app_access_token, then a
# tenant_access_token for the customer tenant's tenant_key.
APP_TOKEN_PATH = "/open-apis/auth/v3/app_access_token"
STORE_TENANT_TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token"
APP_TICKET_RESEND_PATH = "/open-apis/auth/v3/app_ticket/resend"
APP_TYPES = ("custom", "isv")
WITHDRAW_PATH = "/open-apis/hire/v1/referral_account/{}/withdraw"
ACCOUNT_ASSETS_PATH = "/open-apis/hire/v1/referral_account/get_account_assets"
REGISTER_PATH = "/open-apis/hire/v1/referral_account"
DEACTIVATE_PATH = "/open-apis/hire/v1/referral_account/{}/deactivate"
ENABLE_PATH = "/open-apis/hire/v1/referral_account/enable"
RECONCILIATION_PATH = "/open-apis/hire/v1/referral_account/reconciliation"

# Feishu's published limits per app and tenant.
WITHDRAW_LIMIT_PER_MINUTE = 100
ACCOUNT_ASSETS_LIMIT_PER_SECOND = 10

# Refresh this long before Feishu says the token expires, so a call never starts with a
# token that dies in flight (node-sdk once cached tokens to their last second).
TOKEN_REFRESH_MARGIN = 300.0


def check_base_url(url: str | None) -> str:
    """The API base URL without a trailing slash; https unless it points at this machine (the sandbox)."""
    text = (url or "").strip().rstrip("/") or DEFAULT_BASE_URL
    parts = urlsplit(text if "://" in text else f"https://{text}")
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"host {url!r} is not an API base URL such as {DEFAULT_BASE_URL}")
    if parts.path or parts.query or parts.fragment:
        raise ValueError(f"host {url!r} must be scheme, host and port only, such as {DEFAULT_BASE_URL}")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(
            f"host {url!r} uses plain http to a remote host: the App Secret and token would cross the "
            "network in clear; use https (plain http is allowed only for loopback, i.e. the sandbox)"
        )
    return f"{parts.scheme}://{parts.netloc}"


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class RetryPolicy:
    """How long one call may keep trying: ``max_attempts`` sends within ``budget`` seconds in all.

    Backoff doubles from ``backoff_base`` up to ``backoff_max`` with jitter, so many
    workers hit by the same outage do not come back in lockstep.
    """

    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    budget: float = 45.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        for name in ("backoff_base", "backoff_max", "budget"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    def backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


class HTTPResponse(Protocol):
    """What :func:`parse_envelope` reads of an answer: ``requests`` and ``httpx`` responses both have it."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...  # case-insensitive in both libraries

    @property
    def content(self) -> bytes: ...

    def json(self, **kwargs: Any) -> Any: ...


def parse_envelope(response: HTTPResponse) -> dict[str, Any]:
    """Return Feishu's JSON body when ``code`` is 0; raise :class:`FeishuAPIError` for anything else.

    Shared by the sync client (requests) and the async trigger (httpx), so both judge
    Feishu's answers by the same rules.

    The body is read on every HTTP status, since Feishu has answered token errors with
    both 200 and 400. Numbers with a fraction parse as Decimal: cash is money.
    """
    status = response.status_code
    headers = response.headers  # case-insensitive
    log_id = headers.get("X-Tt-Logid") or headers.get("X-Request-Id")
    try:
        body = response.json(parse_float=Decimal)
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("code"), int):
        # A gateway's HTML error page, or not Feishu at all. The body is not quoted: a
        # proxy that echoes requests would echo the App Secret.
        kind = headers.get("Content-Type", "no content type")
        raise FeishuAPIError(
            f"HTTP {status} answer is not a Feishu JSON envelope ({kind}, {len(response.content)} bytes)",
            http_status=status,
            log_id=log_id,
            # A 2xx that is not an envelope (a proxy mangled it) may follow a committed
            # withdrawal: retry, and the same order id tells what happened.
            retryable=status >= 500 or status == 429 or 200 <= status < 300,
            retry_after=_reset_seconds(headers) if status == 429 else None,
        )
    code = body["code"]
    if code == 0 and status < 400:
        return body
    error = body.get("error")
    if not log_id and isinstance(error, dict):
        log_id = error.get("log_id")
    rate_limited = code == RATE_LIMIT_CODE or status == 429
    raise FeishuAPIError(
        str(body.get("msg") or "no message"),
        code=code,
        http_status=status,
        log_id=log_id,
        # Token errors count as retryable for the caller (a new process gets a new token);
        # inside one call the client replays them once, and only once.
        retryable=code in TRANSIENT_CODES
        or code in TOKEN_CODES
        or status == 429
        or (status >= 500 and code not in PERMANENT_CODES),
        retry_after=_reset_seconds(headers) if rate_limited else None,
    )


def _query(**values: str | None) -> dict[str, str]:
    return {name: value for name, value in values.items() if value is not None}


def _account(answer: Mapping[str, Any], doing: str) -> dict[str, Any]:
    account = (answer.get("data") or {}).get("account")
    if not isinstance(account, dict) or not account.get("account_id"):
        raise FeishuAPIError("success answer without the account", retryable=False, context=doing)
    return account


def _root_cause(exc: BaseException) -> str:
    """The innermost reason ("Connection refused"), not urllib3's three layers of wrapping."""
    seen = {id(exc)}
    while True:
        inner = exc.__cause__ or exc.__context__ or getattr(exc, "reason", None)
        if inner is None and exc.args and isinstance(exc.args[0], BaseException):
            inner = exc.args[0]
        if not isinstance(inner, BaseException) or id(inner) in seen:
            return str(exc) or type(exc).__name__
        seen.add(id(inner))
        exc = inner


def _reset_seconds(headers: Mapping[str, str]) -> float | None:
    try:
        return max(0.0, float(headers["x-ogw-ratelimit-reset"]))
    except (KeyError, ValueError):
        return None


def check_app_type(app_type: object, tenant_key: object) -> tuple[str, str | None]:
    """``custom`` (self-built, the default) or ``isv`` (store app, which needs the customer's ``tenant_key``)."""
    kind = str(app_type or "custom").strip().lower()
    if kind not in APP_TYPES:
        raise ValueError(f"app_type must be one of {', '.join(APP_TYPES)}, not {app_type!r}")
    key = str(tenant_key).strip() if tenant_key is not None else ""
    if kind == "isv" and not key:
        raise ValueError("tenant_key is empty: a store (isv) app needs the tenant_key of the customer's tenant")
    return kind, key or None


TokenStep = tuple[str, dict[str, Any]]


def tenant_token_flow(
    app_id: str, app_secret: str, app_type: str, tenant_key: str | None, app_ticket: str | None
) -> Generator[TokenStep, dict[str, Any], tuple[str, float]]:
    """An app's token calls without the I/O, so the client and the async trigger share them.

    Yields ``(path, JSON body)`` for each POST; send Feishu's successful answer back in,
    after registering its :func:`issued_tokens` with the secret masker. Returns the
    tenant_access_token and its lifetime in seconds. A custom app needs one call; a store
    app two, the first with the ``app_ticket`` Feishu pushed to it.
    """
    if app_type == "custom":
        answer = yield TOKEN_PATH, {"app_id": app_id, "app_secret": app_secret}
        return _token_field(answer, "tenant_access_token")
    if not app_ticket:
        raise FeishuAPIError(
            "no app_ticket yet: Feishu pushes it to a store (isv) app's event subscription about "
            "hourly; store it where the connection's app_ticket source points",
            code=APP_TICKET_CODE,
        )
    answer = yield APP_TOKEN_PATH, {"app_id": app_id, "app_secret": app_secret, "app_ticket": app_ticket}
    app_token, _ = _token_field(answer, "app_access_token")
    answer = yield STORE_TENANT_TOKEN_PATH, {"app_access_token": app_token, "tenant_key": tenant_key}
    return _token_field(answer, "tenant_access_token")


def issued_tokens(answer: Mapping[str, Any]) -> list[str]:
    """The tokens in a token answer, to mask the moment it arrives, before any later step can fail and log."""
    return [
        token
        for token in (answer.get("app_access_token"), answer.get("tenant_access_token"))
        if isinstance(token, str) and token
    ]


def _token_field(answer: Mapping[str, Any], name: str) -> tuple[str, float]:
    """A token answer's top-level token and ``expire`` (seconds); Feishu does not nest them in ``data``."""
    token = answer.get(name)
    if not isinstance(token, str) or not token:
        raise FeishuAPIError(f"token answer carries no {name}", retryable=True, context=f"fetching the {name}")
    try:
        expire = float(answer.get("expire") or 0)
    except (TypeError, ValueError):
        expire = 0.0
    return token, expire


def token_refresh_delay(expire: float) -> float:
    """Seconds to keep a token: shortly before it expires, so no call starts with a dying token."""
    return max(0.0, expire - min(TOKEN_REFRESH_MARGIN, expire / 2))


class FeishuClient:
    """One app's access to one Feishu tenant. Safe to share between threads.

    ``app_type`` is ``custom`` (a self-built app) or ``isv`` (a store app, acting in the
    customer tenant ``tenant_key``); a store app's ``app_ticket`` is asked for on every
    token fetch, so a ticket Feishu pushed since is picked up without a restart.
    ``on_new_token`` sees every token (tenant and app) the moment it is fetched: the hook
    registers it with Airflow's secret masker there, before anything could log it.
    """

    def __init__(
        self,
        app_id: str,
        app_secret: str,
        base_url: str | None = DEFAULT_BASE_URL,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        withdraw_limiter: Pace | None = None,
        assets_limiter: Pace | None = None,
        on_new_token: Callable[[str], None] | None = None,
        pool_size: int = 10,
        app_type: str = "custom",
        tenant_key: str | None = None,
        app_ticket: Callable[[], str | None] | None = None,
    ) -> None:
        if not app_id or not str(app_id).strip():
            raise ValueError("login (App ID) is empty")
        if not app_secret:
            raise ValueError("password (App Secret) is empty")
        if not timeout or timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        self.app_id = app_id
        self._app_secret = app_secret
        self.app_type, self.tenant_key = check_app_type(app_type, tenant_key)
        self._app_ticket = app_ticket
        self.base_url = check_base_url(base_url)
        self.timeout = float(timeout)
        self.retry = retry or RetryPolicy()
        self.withdraw_limiter = withdraw_limiter
        self.assets_limiter = assets_limiter
        self._on_new_token = on_new_token
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=pool_size)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._token: str | None = None
        self._token_refresh_at = 0.0
        self._token_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FeishuClient(app_id={self.app_id!r}, base_url={self.base_url!r})"

    @property
    def tenant_app_id(self) -> str:
        """The app as the ledger keys its records: one store app serves many customer tenants, each its own
        company, so a store app is ``<app_id>@<tenant_key>``; a custom app lives in one tenant: its ``app_id``.

        Registrations, reconciliations, order ids and payroll scopes are kept apart by it: one
        tenant's records never answer for another's.
        """
        return self.app_id if self.tenant_key is None else f"{self.app_id}@{self.tenant_key}"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> FeishuClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tenant_access_token ------------------------------------------------------------

    def get_tenant_access_token(self) -> str:
        """A valid tenant_access_token, fetched once and shared until shortly before it expires."""
        with self._token_lock:
            if self._token is None or time.monotonic() >= self._token_refresh_at:
                self._fetch_token()
            assert self._token is not None
            return self._token

    def _fetch_token(self) -> None:
        ticket = self._app_ticket() if self.app_type == "isv" and self._app_ticket else None
        flow = tenant_token_flow(self.app_id, self._app_secret, self.app_type, self.tenant_key, ticket)
        context = f"fetching a tenant_access_token for app {self.app_id}"
        try:
            path, body = next(flow)
            while True:
                answer = self._call("POST", path, context=context, json=body, authorized=False)
                if self._on_new_token:
                    for secret in issued_tokens(answer):
                        self._on_new_token(secret)
                path, body = flow.send(answer)
        except StopIteration as done:
            token, expire = done.value
        except FeishuAPIError as err:
            if err.code == APP_TICKET_CODE:
                raise self._ask_for_app_ticket(err) from None
            raise
        self._token = token
        self._token_refresh_at = time.monotonic() + token_refresh_delay(expire)

    def _ask_for_app_ticket(self, err: FeishuAPIError) -> FeishuAPIError:
        """Feishu refused the store app's ticket (10012): ask it to push a new one, and say so."""
        try:
            self._call(
                "POST",
                APP_TICKET_RESEND_PATH,
                context=f"asking Feishu to resend the app_ticket of app {self.app_id}",
                json={"app_id": self.app_id, "app_secret": self._app_secret},
                authorized=False,
            )
            asked = "asked Feishu to push a new one (app_ticket/resend)"
        except FeishuAPIError as resend_err:
            asked = f"asking Feishu to resend it failed too ({resend_err.code}: {resend_err.msg})"
        return FeishuAPIError(
            f"{err.msg}: the store app's app_ticket is missing or stale; {asked}. It arrives at the app's "
            "event subscription as the app_ticket event; store it where the connection's app_ticket source "
            "points, then retry",
            code=err.code,
            http_status=err.http_status,
            log_id=err.log_id,
            context=err.context,
        )

    def _drop_token(self, token: str) -> None:
        """Forget a token Feishu rejected, unless another thread already replaced it."""
        with self._token_lock:
            if self._token == token:
                self._token = None

    # -- endpoints ------------------------------------------------------------------------

    def withdraw_referral_account(
        self, referral_account_id: object, withdraw_bonus_type: object, external_order_id: object
    ) -> dict[str, Any]:
        """Withdraw the whole balance of the chosen bonus types; return the answer's ``data``.

        Every attempt sends the same ``external_order_id``: if Feishu committed a
        withdrawal whose answer we lost, the retry gets the original details back and
        no money moves twice.
        """
        account_id = check_referral_account_id(referral_account_id)
        body = {
            "withdraw_bonus_type": check_withdraw_bonus_type(withdraw_bonus_type),
            "external_order_id": check_external_order_id(external_order_id),
        }
        context = f"withdrawing referral account {account_id} (external_order_id {body['external_order_id']})"
        answer = self._call(
            "POST",
            WITHDRAW_PATH.format(quote(account_id, safe="")),
            context=context,
            json=body,
            limiter=self.withdraw_limiter,
        )
        data = answer.get("data")
        if not isinstance(data, dict) or str(data.get("external_order_id")) != body["external_order_id"]:
            # Success without the withdrawal we asked for: money may have moved, so this is
            # retryable (the same order id replays), never a silent empty record.
            raise FeishuAPIError(
                "success answer without this withdrawal's external_order_id", retryable=True, context=context
            )
        return data

    def get_account_assets(self, referral_account_id: object, user_id_type: object = None) -> dict[str, Any]:
        """Balance and status of one referral account: the answer's ``data``."""
        account_id = check_referral_account_id(referral_account_id)
        answer = self._call(
            "GET",
            ACCOUNT_ASSETS_PATH,
            context=f"reading the balance of referral account {account_id}",
            params=_query(referral_account_id=account_id, user_id_type=check_user_id_type(user_id_type)),
            limiter=self.assets_limiter,
        )
        return dict(answer.get("data") or {})

    def register_referral_account(
        self, *, mobile: object = None, mobile_code: object = "86", email: object = None, user_id_type: object = None
    ) -> dict[str, Any]:
        """Register a referrer's account by mobile or email; return the answer's ``account`` (with its id).

        Feishu does not make this idempotent. The client still retries transient errors:
        if an earlier attempt created the account and its answer was lost, Feishu either
        answers the existing account or refuses the duplicate, depending on a behaviour
        its docs leave open; the refusal then names the referrer so a person can find the
        account id in Feishu Hire.
        """
        body = check_referrer(mobile=mobile, mobile_code=mobile_code, email=email)
        who = body.get("email") or "mobile +{code} {number}".format(**body["mobile"])
        answer = self._call(
            "POST",
            REGISTER_PATH,
            context=f"registering the referral account of {who}",
            json=body,
            params=_query(user_id_type=check_user_id_type(user_id_type)),
        )
        return _account(answer, f"registering {who}")

    def deactivate_referral_account(self, referral_account_id: object) -> dict[str, Any]:
        """Deactivate an account (its balance can no longer be withdrawn); return the answer's ``account``."""
        account_id = check_referral_account_id(referral_account_id)
        answer = self._call(
            "POST",
            DEACTIVATE_PATH.format(quote(account_id, safe="")),
            context=f"deactivating referral account {account_id}",
        )
        return _account(answer, f"deactivating {account_id}")

    def enable_referral_account(self, referral_account_id: object, user_id_type: object = None) -> dict[str, Any]:
        """Enable a deactivated account again; return the answer's ``account``."""
        account_id = check_referral_account_id(referral_account_id)
        answer = self._call(
            "POST",
            ENABLE_PATH,
            context=f"enabling referral account {account_id}",
            json={"referral_account_id": account_id},
            params=_query(user_id_type=check_user_id_type(user_id_type)),
        )
        return _account(answer, f"enabling {account_id}")

    def reconcile_referral_accounts(
        self, start_trans_time: object, end_trans_time: object, point_totals: Mapping[str, object]
    ) -> list[dict[str, Any]]:
        """Send our per-account point totals for a ``trans_time`` window; return Feishu's ``check_failed_list``.

        Feishu compares them with what it paid out and lists every account where the two
        disagree, with both figures: the second witness to the ledger.
        """
        start = check_trans_time(start_trans_time, "start_trans_time")
        end = check_trans_time(end_trans_time, "end_trans_time")
        if int(start) > int(end):
            raise ValueError(f"start_trans_time {start} is after end_trans_time {end}")
        answer = self._call(
            "POST",
            RECONCILIATION_PATH,
            context=f"reconciling referral-account withdrawals from {start} to {end}",
            json={"start_trans_time": start, "end_trans_time": end, "trade_details": check_point_totals(point_totals)},
        )
        failed = (answer.get("data") or {}).get("check_failed_list") or []
        if not isinstance(failed, list):
            raise FeishuAPIError("reconciliation answer's check_failed_list is not a list", retryable=True)
        return failed

    # -- the one way a request is sent ------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        context: str,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        authorized: bool = True,
        limiter: Pace | None = None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + self.retry.budget
        attempt = 0
        token_replayed = False
        earlier = Reach.NOT_SENT  # how far this call's attempts so far got
        while True:
            attempt += 1
            headers = {}
            token = None
            if authorized:
                # Fetching the token has its own retries; its errors end this call, still saying
                # whether an earlier attempt of it may have reached Feishu.
                try:
                    token = self.get_tenant_access_token()
                except FeishuAPIError as err:
                    raise err.with_context(context, earlier=earlier, sent=False) from None
                headers["Authorization"] = f"Bearer {token}"
            if limiter is not None:
                limiter.acquire()
            try:
                return self._send(method, path, json=json, params=params, headers=headers)
            except FeishuAPIError as err:
                if token is not None and err.is_token_error and not token_replayed:
                    log.warning("Feishu rejected the tenant_access_token (%s); fetching a new one", err.code)
                    self._drop_token(token)
                    token_replayed = True
                    attempt -= 1
                    continue
                delay = self._retry_delay(err, attempt, deadline)
                if delay is None:
                    raise err.with_context(context, earlier=earlier) from None
                earlier = err.reach.after(earlier)
                log.warning(
                    "%s; attempt %d of %d failed, retrying in %.2fs",
                    err.with_context(context),
                    attempt,
                    self.retry.max_attempts,
                    delay,
                )
                time.sleep(delay)

    def _retry_delay(self, err: FeishuAPIError, attempt: int, deadline: float) -> float | None:
        if not err.retryable or err.is_token_error or attempt >= self.retry.max_attempts:
            return None
        delay = err.retry_after if err.retry_after is not None else self.retry.backoff(attempt)
        if time.monotonic() + delay > deadline:
            return None
        return delay

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str],
    ) -> dict[str, Any]:
        try:
            response = self._session.request(
                method,
                self.base_url + path,
                json=json,
                params=params,
                headers=headers,
                timeout=self.timeout,
                # A 307/308 would resend the body (the App Secret, on the token call) to
                # wherever it points, https or not. Feishu's API does not redirect.
                allow_redirects=False,
            )
        except requests.Timeout:
            raise FeishuAPIError(f"no answer from {self.base_url} within {self.timeout:g}s", retryable=True) from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            # Includes "Feishu committed, then the connection dropped": safe to resend,
            # because a withdrawal's retry carries the same external_order_id.
            raise FeishuAPIError(f"could not reach {self.base_url}: {_root_cause(exc)}", retryable=True) from None
        return parse_envelope(response)
