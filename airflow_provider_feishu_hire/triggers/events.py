"""A trigger that holds Feishu's event long connection and turns referral balance changes into asset events.

Use it in an ``AssetWatcher``: every ``hire.referral_account.assets_update_v1`` event
becomes one asset event, and a DAG scheduled on the asset withdraws the accounts (see
``example_dags/example_feishu_referral_event_payout.py``). Cheap to import (a DAG file
imports it on every parse): the protocol module, ``websockets`` and ``protobuf`` load in
the triggerer, when :meth:`run` starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

if TYPE_CHECKING:
    from airflow_provider_feishu_hire.events import ClientConfig, Endpoint, SeenEvents

# The asset state store key (Airflow 3.3) under which the latest event ids are kept.
SEEN_EVENTS_KEY = "feishu_hire_seen_event_ids"


class FeishuReferralAssetsTrigger(BaseEventTrigger):
    """One long connection for the app of ``feishu_hire_conn_id``; one trigger event per balance change.

    The payload is the event's account, balance and ``modify_time``:
    ``{"event_id", "referral_account_id", "point_bonus", "cash_bonus": {"CNY": "100.00"},
    "modify_time"}`` (cash as decimal strings, ``modify_time`` in ms as text).

    An event is acknowledged to Feishu only after Airflow has taken its trigger event, so
    an event lost in between (a triggerer killed at that moment) is delivered again.
    Repeats of an ``event_id`` (Feishu delivers at least once) are acknowledged without a
    second trigger event: the last ``remember`` ids are kept in the asset's state store on
    Airflow 3.3, which survives triggerer restarts, and in memory only on older releases.
    Repeats that slip through are harmless: the DAG's order ids make them replays.

    Credentials are read from the connection at every dial, never kept in the trigger's
    serialized arguments. :meth:`run` never returns: a dropped connection is dialled again
    after a random delay up to Feishu's ``ReconnectNonce``, then every ``ReconnectInterval``.
    """

    def __init__(self, feishu_hire_conn_id: str = "feishu_hire_default", remember: int = 1000) -> None:
        super().__init__()
        if remember < 1:
            raise ValueError("remember must be at least 1 event id")
        self.feishu_hire_conn_id = feishu_hire_conn_id
        self.remember = remember

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"feishu_hire_conn_id": self.feishu_hire_conn_id, "remember": self.remember},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_provider_feishu_hire.events import LongConnection, SeenEvents

        seen = SeenEvents(await self._stored_seen(), limit=self.remember)
        async for update in LongConnection(self._endpoint).updates():
            if update.event_id in seen:
                self.log.info("Event %s delivered again: acknowledged, already handed to Airflow", update.event_id)
                continue
            yield TriggerEvent(update.as_payload())
            # Airflow took it; Feishu gets the acknowledgement when the next event is asked for.
            seen.add(update.event_id)
            await self._store_seen(seen)

    async def _endpoint(self, config: ClientConfig) -> Endpoint:
        """Credentials from the connection, read at every dial so a corrected App Secret needs no restart."""
        from airflow_provider_feishu_hire.events import EndpointError, fetch_endpoint
        from airflow_provider_feishu_hire.triggers.referral_account import connection_settings_async

        try:
            settings = await connection_settings_async(self.feishu_hire_conn_id)
        except Exception as exc:  # missing or wrong now, it may be fixed before the next dial: keep trying
            raise EndpointError(f"connection {self.feishu_hire_conn_id}: {exc}") from None
        if settings.app_type != "custom":
            # Feishu documents the event long connection for self-built apps only.
            raise EndpointError(
                f"connection {self.feishu_hire_conn_id} is a store (isv) app's: Feishu's event long connection "
                "serves self-built apps; use a self-built app's connection for event-driven payouts"
            )
        return await asyncio.to_thread(
            fetch_endpoint, settings.base_url, settings.app_id, settings.app_secret, timeout=settings.timeout,
            config=config,
        )  # fmt: skip

    async def _stored_seen(self) -> list[str]:
        store = getattr(self, "asset_state_store", None)  # Airflow 3.3 injects it into watcher triggers
        if store is None:
            return []
        try:
            stored = await store.aget(SEEN_EVENTS_KEY, [])
        except Exception as exc:  # a store that cannot be read must not stop payouts
            self.log.warning("Cannot read the asset state store (%s); repeats are caught in memory only", exc)
            return []
        return [str(event_id) for event_id in stored] if isinstance(stored, list) else []

    async def _store_seen(self, seen: SeenEvents) -> None:
        store = getattr(self, "asset_state_store", None)
        if store is None:
            return
        try:
            await store.aset(SEEN_EVENTS_KEY, seen.as_list())
        except Exception as exc:
            self.log.warning("Cannot write the asset state store (%s); repeats are caught in memory only", exc)
