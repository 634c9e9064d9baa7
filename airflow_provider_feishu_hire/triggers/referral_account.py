"""The triggerer's side of :class:`~airflow_provider_feishu_hire.sensors.referral_account.ReferralBalanceSensor`.

It polls ``get_account_assets`` with ``httpx.AsyncClient`` (Airflow ships httpx, not
aiohttp) and judges the answers with the sync client's own pieces: the token calls come
from :func:`tenant_token_flow`, every answer goes through :func:`parse_envelope`, and the
connection is read by the hook's :func:`connection_settings`. Only ids and strings are
serialized; the App Secret and the tokens live in the triggerer's memory and its masker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from airflow.sdk import BaseHook, Connection
from airflow.sdk import log as sdk_log
from airflow.triggers.base import BaseTrigger, TriggerEvent
from asgiref.sync import sync_to_async

from airflow_provider_feishu_hire.balance import (
    AccountDeactivated,
    Balance,
    check_balance_threshold,
    check_poke_interval,
    parse_account_assets,
)
from airflow_provider_feishu_hire.client import (
    ACCOUNT_ASSETS_PATH,
    APP_TICKET_RESEND_PATH,
    issued_tokens,
    parse_envelope,
    tenant_token_flow,
    token_refresh_delay,
)
from airflow_provider_feishu_hire.defaults import DEFAULT_FEISHU_HIRE_CONN_ID
from airflow_provider_feishu_hire.exceptions import APP_TICKET_CODE, FeishuAPIError
from airflow_provider_feishu_hire.hooks.feishu_hire import (
    FeishuConnectionSettings,
    connection_settings,
    read_app_ticket,
)
from airflow_provider_feishu_hire.withdrawal import UnreadableAnswer, check_referral_account_id


class ReferralBalanceTrigger(BaseTrigger):
    """Fires once a referral account's confirmed balance reaches every given threshold.

    Errors that waiting cannot fix (unknown or deactivated account, missing scope, wrong
    credentials, an answer that does not parse) end it with ``status: error``; the rest
    (5xx, 429, timeouts, a dropped connection, a store app's stale app_ticket) are
    logged and tried again at the next poll.
    """

    def __init__(
        self,
        *,
        referral_account_id: str,
        min_point_bonus: str | None = None,
        min_cash_bonus: str | None = None,
        currency_type: str | None = None,
        poke_interval: float = 60.0,
        feishu_hire_conn_id: str = DEFAULT_FEISHU_HIRE_CONN_ID,
    ) -> None:
        super().__init__()
        self.referral_account_id = check_referral_account_id(referral_account_id)
        self.threshold = check_balance_threshold(min_point_bonus, min_cash_bonus, currency_type)
        self.poke_interval = check_poke_interval(poke_interval)
        self.feishu_hire_conn_id = feishu_hire_conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "referral_account_id": self.referral_account_id,
                **self.threshold.as_strings(),
                "poke_interval": self.poke_interval,
                "feishu_hire_conn_id": self.feishu_hire_conn_id,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            settings = await connection_settings_async(self.feishu_hire_conn_id)
        except ValueError as exc:
            yield _error(f"connection {self.feishu_hire_conn_id}: {exc}")
            return
        async with _AsyncFeishu(settings) as feishu:
            while True:
                outcome, wait = await self._poll(feishu)
                if outcome is not None:
                    yield outcome
                    return
                await asyncio.sleep(wait)

    async def _poll(self, feishu: _AsyncFeishu) -> tuple[TriggerEvent | None, float]:
        """One balance read: an event to end with, or how long to wait before the next read."""
        doing = f"reading the balance of referral account {self.referral_account_id}"
        try:
            data = await feishu.get_account_assets(self.referral_account_id)
            balance = parse_account_assets(self.referral_account_id, data)
        except UnreadableAnswer as exc:
            return _error(f"{exc} while {doing}"), 0.0
        except FeishuAPIError as err:
            wait = max(self.poke_interval, err.retry_after or 0.0)
            if err.code == APP_TICKET_CODE:
                self.log.warning(
                    "Feishu did not accept the store app's app_ticket (%s: %s); %s. It is read again from the "
                    "Airflow Variable %r at the next poll; trying again in %.0fs",
                    err.code,
                    err.msg,
                    await feishu.ask_for_app_ticket(),
                    feishu.app_ticket_variable,
                    wait,
                )
            elif not err.retryable:
                return _error(str(err.with_context(doing))), 0.0
            else:
                self.log.warning("%s; trying again in %.0fs", err.with_context(doing), wait)
            return None, wait
        return self._judge(balance), self.poke_interval

    def _judge(self, balance: Balance) -> TriggerEvent | None:
        try:
            reached = self.threshold.reached_by(balance)
        except AccountDeactivated as exc:
            return _error(str(exc))
        self.log.info(
            "Referral account %s holds %s%s",
            balance.referral_account_id,
            balance.describe(),
            "" if reached else f"; waiting for {self.threshold.describe()}",
        )
        return TriggerEvent({"status": "success", "balance": balance.as_xcom()}) if reached else None


def _error(message: str) -> TriggerEvent:
    return TriggerEvent({"status": "error", "message": message})


async def connection_settings_async(conn_id: str) -> FeishuConnectionSettings:
    """The connection read without blocking the triggerer's event loop, on every supported Airflow.

    Airflow 3.3.2 masks a connection's secrets asynchronously (``aget_connection`` and
    ``aextra_dejson``). Before it, ``aget_connection`` masked them with a synchronous call
    to the supervisor, which can deadlock a triggerer that has another call in flight; a
    worker thread is safe there.
    """
    if hasattr(Connection, "aextra_dejson"):
        conn = await BaseHook.aget_connection(conn_id)
        extra = await conn.aextra_dejson()
    else:
        conn = await sync_to_async(BaseHook.get_connection)(conn_id)
        extra = await sync_to_async(lambda: conn.extra_dejson)()
    return connection_settings(conn, extra if isinstance(extra, dict) else {})


async def _mask(secret: str) -> None:
    """Register a token with the masker before anything could log it (``amask_secret`` came with Airflow 3.3)."""
    amask_secret = getattr(sdk_log, "amask_secret", None)
    if amask_secret is not None:
        await amask_secret(secret)
    else:
        await sync_to_async(sdk_log.mask_secret)(secret)


class _AsyncFeishu:
    """The few calls the trigger makes, over one keep-alive ``httpx.AsyncClient``, with a cached tenant token."""

    def __init__(self, settings: FeishuConnectionSettings) -> None:
        self._settings = settings
        # No redirects: a 307 would carry the token call's App Secret wherever it points.
        self._http = httpx.AsyncClient(base_url=settings.base_url, timeout=settings.timeout, follow_redirects=False)
        self._token: str | None = None
        self._refresh_at = 0.0
        self._ticket_asked = False

    @property
    def app_ticket_variable(self) -> str | None:
        return self._settings.app_ticket_variable

    async def __aenter__(self) -> _AsyncFeishu:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def get_account_assets(self, referral_account_id: str) -> dict[str, Any]:
        query = {"referral_account_id": referral_account_id}
        try:
            answer = await self._send("GET", ACCOUNT_ASSETS_PATH, params=query, token=await self._tenant_access_token())
        except FeishuAPIError as err:
            if not err.is_token_error:
                raise
            self._token = None  # revoked or expired early: fetch a new one and read again, once
            answer = await self._send("GET", ACCOUNT_ASSETS_PATH, params=query, token=await self._tenant_access_token())
        return dict(answer.get("data") or {})

    async def _tenant_access_token(self) -> str:
        if self._token is not None and time.monotonic() < self._refresh_at:
            return self._token
        settings = self._settings
        ticket = None
        if settings.app_ticket_variable:  # read now, not at start: the receiver may have stored a new one
            ticket = await sync_to_async(read_app_ticket)(settings.app_ticket_variable)
        flow = tenant_token_flow(settings.app_id, settings.app_secret, settings.app_type, settings.tenant_key, ticket)
        try:
            path, body = next(flow)
            while True:
                answer = await self._send("POST", path, json=body)
                for secret in issued_tokens(answer):
                    await _mask(secret)
                path, body = flow.send(answer)
        except StopIteration as done:
            token, expire = done.value
        self._token, self._refresh_at = token, time.monotonic() + token_refresh_delay(expire)
        self._ticket_asked = False
        return token

    async def ask_for_app_ticket(self) -> str:
        """After a refused or missing app_ticket (10012): ask Feishu once to push a new one; say what was done.

        The receiver of the ``app_ticket`` event stores the new ticket in the Variable,
        which is read again at the next poll; asking at every poll would only flood Feishu.
        """
        if self._ticket_asked:
            return "Feishu was already asked to push a new one"
        self._ticket_asked = True
        body = {"app_id": self._settings.app_id, "app_secret": self._settings.app_secret}
        try:
            await self._send("POST", APP_TICKET_RESEND_PATH, json=body)
        except FeishuAPIError as err:
            return f"asking Feishu to resend it failed ({err})"
        return "asked Feishu to push a new one (app_ticket/resend)"

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        token: str | None = None,
    ) -> dict[str, Any]:
        """One request, judged by :func:`parse_envelope`; a network failure is a retryable error naming the host."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        base = self._settings.base_url
        try:
            response = await self._http.request(method, path, json=json, params=params, headers=headers)
        except httpx.TimeoutException:
            raise FeishuAPIError(f"no answer from {base} within {self._settings.timeout:g}s", retryable=True) from None
        except httpx.TransportError as exc:
            raise FeishuAPIError(f"could not reach {base}: {type(exc).__name__}: {exc}", retryable=True) from None
        return parse_envelope(response)
