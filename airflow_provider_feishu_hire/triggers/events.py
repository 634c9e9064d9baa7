"""A trigger that holds Feishu's event long connection and turns referral balance changes into asset events.

Use it in an ``AssetWatcher``: every ``hire.referral_account.assets_update_v1`` event
becomes one asset event, and a DAG scheduled on the asset withdraws the accounts (see
``example_dags/example_feishu_referral_event_payout.py``).

When Feishu hears that an event was handled depends on the Airflow release:

- **Airflow 3.3 and later (ack mode).** The trigger runs as a shared stream with a
  producer (:meth:`FeishuReferralAssetsTrigger.create_shared_stream_producer`): the
  triggerer tells the producer an event is done only after the asset event it became is
  stored in the metadata database, and only then is Feishu's event acknowledged. A
  triggerer killed at any moment leaves the event unacknowledged, and Feishu delivers it
  again. Triggers of one connection share its long connection (Feishu gives each event
  to one connection, so two would each miss half).
- **Airflow 3.2** (no shared streams): :meth:`FeishuReferralAssetsTrigger.run` acknowledges
  an event once the triggerer has taken its trigger event into memory. A triggerer killed
  between the two loses that acknowledged event; the balance stays in Feishu until the
  next event or the scheduled sweep pays it.

Cheap to import (a DAG file imports it on every parse): the protocol module, ``websockets``
and ``protobuf`` load in the triggerer, when the stream starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from airflow_provider_feishu_hire.defaults import DEFAULT_FEISHU_HIRE_CONN_ID

if TYPE_CHECKING:
    from airflow.triggers.shared_stream import AdvanceItem, SharedStreamProducer

    from airflow_provider_feishu_hire.events import ClientConfig, Delivery, Endpoint, LongConnection, Rejection
else:
    try:  # Airflow 3.3: the triggerer's ack mode for shared streams
        from airflow.triggers.shared_stream import SharedStreamProducer
    except ImportError:  # Airflow 3.2: no shared streams; the producer below is never built
        SharedStreamProducer = object

log = logging.getLogger(__name__)

# The asset state store key (Airflow 3.3) under which rejected events are kept for inspection.
REJECTED_EVENTS_KEY = "feishu_hire_rejected_events"

MAX_IN_FLIGHT = 100
"""Events handed to the triggerer and not yet stored and acknowledged, at most (ack mode).

The triggerer does not slow a shared stream down; it fails a subscriber whose queue
(``[triggerer] shared_stream_subscriber_queue_size``, 1024 by default; a smaller one
lowers this limit to its size) overflows. Waiting here instead stops reading the
WebSocket, whose own buffer is bounded, so a flood of events holds at most this many in
memory and costs no trigger failure.
"""


# A balance that shows nothing to withdraw (the event our own withdrawal raises) starts no DAG run.
_EMPTY = "Event %s: referral account %s has nothing to withdraw; acknowledged, no asset event"


class FeishuReferralAssetsTrigger(BaseEventTrigger):
    """One long connection for the app of ``feishu_hire_conn_id``; one trigger event per balance change.

    The payload is the event's account, balance and ``modify_time``:
    ``{"event_id", "referral_account_id", "point_bonus", "cash_bonus": {"CNY": "100.00"},
    "modify_time"}`` (cash as decimal strings, ``modify_time`` in ms as text).

    Feishu's event is acknowledged once the asset event is stored (Airflow 3.3) or once
    the triggerer has taken it (3.2; see the module docstring). Repeats of an
    ``event_id`` (Feishu delivers at least once) are acknowledged without a second
    trigger event while the last ``remember`` ids are in memory; repeats that get through
    (after a restart) are harmless: the DAG's order ids make them replays.

    An event or frame that cannot be read is rejected: logged once with its event (or
    message) id, acknowledged so Feishu stops sending it (Airflow 3.3 counts it through
    its reject path), and never makes the trigger reconnect. On 3.3 one whose event id
    could be read is kept with its reason in the asset's state store under
    :data:`REJECTED_EVENTS_KEY` (the last 100; never the payload, whose header holds the
    app's verification token); the others are in the triggerer's log.

    Credentials are read from the connection at every dial, never kept in the trigger's
    serialized arguments. The stream never ends: a dropped connection is dialled again
    after a random delay up to Feishu's ``ReconnectNonce``, then every ``ReconnectInterval``.
    """

    def __init__(self, feishu_hire_conn_id: str = DEFAULT_FEISHU_HIRE_CONN_ID, remember: int = 1000) -> None:
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
        """Airflow 3.2's path: an event is acknowledged when the next one is asked for, after Airflow took it."""
        from airflow_provider_feishu_hire.events import LongConnection, SeenEvents

        seen = SeenEvents(limit=self.remember)
        async for update in LongConnection(endpoint_of(self.feishu_hire_conn_id)).updates():
            if update.event_id in seen:
                self.log.info("Event %s delivered again: acknowledged, already handed to Airflow", update.event_id)
                continue
            if update.is_empty:
                self.log.info(_EMPTY, update.event_id, update.referral_account_id)
                continue
            yield TriggerEvent(update.as_payload())
            seen.add(update.event_id)

    # -- Airflow 3.3: ack mode -------------------------------------------------------------

    def shared_stream_key(self) -> Hashable | None:
        """One long connection per Airflow connection: every watcher of that app shares it."""
        return ("feishu_hire_long_connection", self.feishu_hire_conn_id)

    @classmethod
    def create_shared_stream_producer(cls, kwargs: dict[str, Any]) -> SharedStreamProducer:
        return LongConnectionProducer(kwargs["feishu_hire_conn_id"], kwargs.get("remember", 1000))

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        """A trigger event per balance change; an unreadable delivery goes down Airflow's reject path."""
        from airflow.triggers.shared_stream import reject_shared_stream_event

        async for delivery in shared_stream:
            if delivery.update is not None and delivery.update.is_empty:
                # Refused, not skipped: a skipped event resolves only when the next one comes, and the
                # last empty one would wait unacknowledged; a refusal resolves at once, and is acknowledged.
                reject_shared_stream_event()
                self.log.info(_EMPTY, delivery.update.event_id, delivery.update.referral_account_id)
            elif delivery.update is not None:
                yield TriggerEvent(delivery.update.as_payload())
            elif delivery.problem is not None:
                reject_shared_stream_event()  # before the next delivery is pulled: it names the current one
                await self._keep(delivery.problem)

    async def _keep(self, problem: Rejection) -> None:
        """Add a rejected event to the asset's state store; frames with no event id stay in the log only.

        Only events with an id are stored, so a flood of unreadable frames cannot become a
        flood of database writes.
        """
        from airflow_provider_feishu_hire.events import REJECTIONS_KEPT

        store = self.asset_state_store
        if store is None or problem.event_id is None:
            return
        try:
            kept = await store.aget(REJECTED_EVENTS_KEY, [])
            kept = kept if isinstance(kept, list) else []
            await store.aset(REJECTED_EVENTS_KEY, [*kept, problem.as_json()][-REJECTIONS_KEPT:])
        except Exception as exc:  # the store is for inspection: failing to write it must not stop payouts
            self.log.warning("Cannot keep rejected event %s in the asset state store: %s", problem.event_id, exc)


class LongConnectionProducer(SharedStreamProducer):
    """The long connection as an ack-mode shared stream (Airflow 3.3): acknowledged when Airflow says so.

    :meth:`open_stream` yields every delivery unacknowledged; the triggerer calls
    :meth:`advance` once the asset events made from them are stored (or a subscriber
    rejected them), and only then is Feishu answered. A delivery that failed (not stored
    in time, or no trigger listening) is left unacknowledged: Feishu delivers it again.

    Repeats: an event id already acknowledged is acknowledged again at once, without
    reaching Airflow; one still in flight is left unanswered (if the first copy is stored,
    the repeat's next delivery meets the acknowledged id; if not, it goes to Airflow then).
    """

    def __init__(self, feishu_hire_conn_id: str, remember: int) -> None:
        from airflow.configuration import conf

        from airflow_provider_feishu_hire.events import SeenEvents

        self._conn_id = feishu_hire_conn_id
        self._acknowledged = SeenEvents(limit=remember)
        self._in_flight: set[str] = set()
        queue = conf.getint("triggerer", "shared_stream_subscriber_queue_size")
        self._window = asyncio.Semaphore(max(1, min(MAX_IN_FLIGHT, queue)))
        self._connection: LongConnection | None = None

    async def open_stream(self) -> AsyncIterator[tuple[Delivery, Delivery]]:
        from airflow_provider_feishu_hire.events import LongConnection

        connection = self._connection = LongConnection(endpoint_of(self._conn_id))
        async for delivery in connection.deliveries():
            event_id = delivery.event_id
            if event_id is not None and event_id in self._acknowledged:
                log.info("Event %s delivered again: acknowledged, Airflow stored it already", event_id)
                await connection.acknowledge(delivery)
                continue
            if event_id is not None and event_id in self._in_flight:
                log.info("Event %s delivered again while its first copy is being stored: left for later", event_id)
                continue
            await self._window.acquire()
            if event_id is not None:
                self._in_flight.add(event_id)
            yield delivery, delivery

    async def advance(self, batch: Sequence[AdvanceItem]) -> None:
        assert self._connection is not None  # advance only follows what open_stream yielded
        for item in batch:
            delivery: Delivery = item.broker_payload
            outcome = item.outcome
            self._window.release()
            if delivery.event_id is not None:
                self._in_flight.discard(delivery.event_id)
            if outcome.failed or not (outcome.acked or outcome.rejected):
                log.warning(
                    "Event %s was not stored (%s): left unacknowledged, Feishu delivers it again",
                    delivery.event_id, outcome,
                )  # fmt: skip
                continue
            if delivery.event_id is not None:
                self._acknowledged.add(delivery.event_id)
            await self._connection.acknowledge(delivery)


def endpoint_of(feishu_hire_conn_id: str) -> Callable[[ClientConfig], Awaitable[Endpoint]]:
    """Fetches the long connection's endpoint with the connection's credentials, read at every dial.

    Read each time so a corrected App Secret needs no restart, and never kept anywhere else.
    """

    async def endpoint(config: ClientConfig) -> Endpoint:
        from airflow_provider_feishu_hire.events import EndpointError, fetch_endpoint
        from airflow_provider_feishu_hire.triggers.referral_account import connection_settings_async

        try:
            settings = await connection_settings_async(feishu_hire_conn_id)
        except Exception as exc:  # missing or wrong now, it may be fixed before the next dial: keep trying
            raise EndpointError(f"connection {feishu_hire_conn_id}: {exc}") from None
        if settings.app_type != "custom":
            # Feishu documents the event long connection for self-built apps only.
            raise EndpointError(
                f"connection {feishu_hire_conn_id} is a store (isv) app's: Feishu's event long connection "
                "serves self-built apps; use a self-built app's connection for event-driven payouts"
            )
        return await asyncio.to_thread(
            fetch_endpoint, settings.base_url, settings.app_id, settings.app_secret, timeout=settings.timeout,
            config=config,
        )  # fmt: skip

    return endpoint
