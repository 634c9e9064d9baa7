"""Feishu's event long connection: the client side of the WebSocket that pushes referral balance changes.

No Airflow here: the trigger (``triggers/events.py``) adapts it. Feishu's long connection
lets a self-built app receive events by dialling out, so nothing in an Airflow deployment
has to be reachable from the internet:

1. ``POST {base}/callback/ws/endpoint`` with the App ID and App Secret answers a WebSocket
   URL and a :class:`ClientConfig` (:func:`fetch_endpoint`).
2. Every WebSocket message is a binary protobuf ``pbbp2.Frame`` (:func:`encode_frame`,
   :func:`decode_frame`); control frames carry ``ping``/``pong``, data frames carry events,
   split into ``sum`` parts when large (:class:`Reassembly`).
3. Each data frame is acknowledged by sending it back with the payload ``{"code": 200}``;
   an event that is not acknowledged is delivered again. :meth:`LongConnection.updates`
   acknowledges an event only when its consumer asks for the next one, i.e. after the
   consumer has taken it.
4. A dropped connection is dialled again after a random delay up to ``ReconnectNonce``,
   then every ``ReconnectInterval``, for ever.

Delivery is at least once: the same ``event_id`` can come again, and events can come out
of order (``modify_time`` orders one account's changes). :class:`SeenEvents` drops repeats
cheaply; what makes a repeat harmless is the withdrawal's order id (see the example DAG).

The frame codec uses ``google.protobuf`` with the message types built at runtime from
their field list, in a private descriptor pool, so nothing is generated and an installed
lark-oapi (which registers its own ``pbbp2.proto``) cannot clash with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from airflow_provider_feishu_hire.client import _is_loopback, check_base_url, parse_envelope
from airflow_provider_feishu_hire.exceptions import FeishuAPIError
from airflow_provider_feishu_hire.withdrawal import (
    UnreadableAnswer,
    check_referral_account_id,
    format_money,
    parse_bonus,
)

log = logging.getLogger(__name__)
# websockets logs the handshake's request line, URL and ticket included, at DEBUG: its
# logger here stops at INFO, so a triggerer logging at DEBUG never writes the ticket.
_websocket_log = logging.getLogger(f"{__name__}.websocket")
_websocket_log.setLevel(logging.INFO)

ENDPOINT_PATH = "/callback/ws/endpoint"
ASSETS_UPDATE_EVENT = "hire.referral_account.assets_update_v1"

# The endpoint's answers besides 0 (lark-oapi's ws/enum.py), and what each means for us.
ENDPOINT_BUSY = 1
ENDPOINT_FORBIDDEN = 403
ENDPOINT_AUTH_FAILED = 514
ENDPOINT_TOO_MANY_CONNECTIONS = 1000040350
_ENDPOINT_ADVICE = {
    ENDPOINT_BUSY: "Feishu is busy; trying again",
    ENDPOINT_FORBIDDEN: (
        "Feishu forbids this app a long connection: it must be a self-built (custom) app with the long "
        "connection chosen as its event subscription mode in the developer console"
    ),
    ENDPOINT_AUTH_FAILED: "Feishu rejected the App ID or App Secret of the connection",
    ENDPOINT_TOO_MANY_CONNECTIONS: (
        "the app has too many long connections open (Feishu allows few per app): another triggerer or "
        "another program holds them; each event goes to only one of them"
    ),
}

METHOD_CONTROL = 0
METHOD_DATA = 1
TYPE_PING, TYPE_PONG, TYPE_EVENT = "ping", "pong", "event"
ACK_PAYLOAD = b'{"code":200}'

# Split payloads whose parts stop arriving are forgotten after this long, and at most this
# many are kept at once, so a server that never finishes one cannot grow memory.
PARTS_TTL_SECONDS = 300.0
MAX_PARTIAL_MESSAGES = 64


class EndpointError(Exception):
    """Feishu did not hand out a long-connection URL; ``code`` is its answer (None when none arrived)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class FrameError(ValueError):
    """Bytes that are not a ``pbbp2.Frame``."""


class BadEvent(ValueError):
    """An event whose content cannot be read exactly; the message names the field."""


# -- the endpoint ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientConfig:
    """Feishu's settings for one connection, in seconds; it may send new ones with any ``pong``.

    ``reconnect_count`` is kept for what Feishu says, but never obeyed: a trigger that gave up
    would leave balances unpaid until someone noticed.
    """

    reconnect_count: int = -1
    reconnect_interval: float = 120.0
    reconnect_nonce: float = 30.0
    ping_interval: float = 120.0

    def updated(self, answer: object) -> ClientConfig:
        """These settings with the ones a ``ClientConfig`` object from Feishu names; unusable values are ignored."""
        if not isinstance(answer, Mapping):
            return self
        changes: dict[str, Any] = {}
        for key, name in (
            ("ReconnectCount", "reconnect_count"),
            ("ReconnectInterval", "reconnect_interval"),
            ("ReconnectNonce", "reconnect_nonce"),
            ("PingInterval", "ping_interval"),
        ):
            value = answer.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, Decimal, float)):
                continue
            if name == "reconnect_count":
                changes[name] = int(value)
            elif value >= 0 and (name != "ping_interval" or value > 0):
                changes[name] = float(value)
        return replace(self, **changes)


@dataclass(frozen=True)
class Endpoint:
    """Where to dial: the WebSocket URL carries a one-time ticket, so it is never logged (see :attr:`where`)."""

    url: str = field(repr=False)
    service_id: int
    config: ClientConfig

    @property
    def where(self) -> str:
        """Scheme, host and path: enough to say where, without the URL's credentials."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"


def check_ws_url(url: object) -> tuple[str, int]:
    """The WebSocket URL Feishu answered and its ``service_id``; wss unless it points at this machine."""
    if not isinstance(url, str) or not url:
        raise EndpointError("the endpoint answer carries no URL")
    parts = urlsplit(url)
    if parts.scheme not in ("wss", "ws") or not parts.hostname:
        raise EndpointError(f"the endpoint answered a URL that is not a WebSocket URL ({parts.scheme}://...)")
    if parts.scheme == "ws" and not _is_loopback(parts.hostname):
        raise EndpointError(
            f"the endpoint answered plain ws:// to the remote host {parts.hostname}: events would cross the "
            "network in clear; only loopback (the sandbox) may use ws://"
        )
    service = parse_qs(parts.query).get("service_id", [""])[0]
    if not service.isdigit():
        raise EndpointError("the endpoint's URL carries no numeric service_id")
    return url, int(service)


def fetch_endpoint(
    base_url: str | None, app_id: str, app_secret: str, *, timeout: float = 10.0, config: ClientConfig | None = None
) -> Endpoint:
    """Ask Feishu where to open the long connection; raise :class:`EndpointError` saying why not.

    Blocking (``requests``): the trigger runs it in a thread. ``config`` supplies the
    settings Feishu's answer leaves out. The App Secret goes only into the request body,
    never into an error.
    """
    if not app_id or not app_secret:
        raise EndpointError("the connection's login (App ID) or password (App Secret) is empty")
    base = check_base_url(base_url)
    try:
        response = requests.post(
            base + ENDPOINT_PATH,
            json={"AppID": app_id, "AppSecret": app_secret},
            headers={"locale": "zh"},
            timeout=timeout,
            allow_redirects=False,  # a redirect would carry the App Secret wherever it points
        )
    except requests.RequestException as exc:
        raise EndpointError(f"could not reach {base}: {type(exc).__name__}") from None
    try:
        answer = parse_envelope(response)
    except FeishuAPIError as err:
        advice = _ENDPOINT_ADVICE.get(err.code) if err.code is not None else None
        raise EndpointError(f"{advice}: {err}" if advice else str(err), err.code) from None
    data = answer.get("data")
    if not isinstance(data, Mapping):
        raise EndpointError("the endpoint answer carries no data")
    url, service_id = check_ws_url(data.get("URL"))
    return Endpoint(url, service_id, (config or ClientConfig()).updated(data.get("ClientConfig")))


# -- frames ----------------------------------------------------------------------------------


@dataclass
class Frame:
    """One ``pbbp2.Frame``. ``headers`` keep their order and repeats, as on the wire."""

    seq_id: int = 0
    log_id: int = 0
    service: int = 0
    method: int = METHOD_CONTROL
    headers: list[tuple[str, str]] = field(default_factory=list)
    payload_encoding: str = ""
    payload_type: str = ""
    payload: bytes = b""
    log_id_new: str = ""

    def header(self, key: str) -> str | None:
        return next((value for name, value in self.headers if name == key), None)

    def int_header(self, key: str, default: int) -> int:
        value = self.header(key)
        if value is None or not value.strip():
            return default
        try:
            return int(value)
        except ValueError:
            raise FrameError(f"frame header {key} is {value!r}, not a number") from None


# lark-oapi's pbbp2.proto (proto2): wire name, number, type, and the attribute of :class:`Frame`.
_FRAME_FIELDS = (
    ("SeqID", 1, "uint64", "seq_id"),
    ("LogID", 2, "uint64", "log_id"),
    ("service", 3, "int32", "service"),
    ("method", 4, "int32", "method"),
    ("headers", 5, "Header", "headers"),
    ("payload_encoding", 6, "string", "payload_encoding"),
    ("payload_type", 7, "string", "payload_type"),
    ("payload", 8, "bytes", "payload"),
    ("LogIDNew", 9, "string", "log_id_new"),
)
_ATTRIBUTES = {wire: attribute for wire, _, kind, attribute in _FRAME_FIELDS if kind != "Header"}
_ALWAYS_WRITTEN = ("SeqID", "LogID", "service", "method")
_message_class: Any = None


def _frame_class() -> Any:
    """The protobuf class of ``pbbp2.Frame``, built once. Every field optional: we read leniently."""
    global _message_class
    if _message_class is None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        proto = descriptor_pb2.FieldDescriptorProto
        types = {
            "uint64": proto.TYPE_UINT64,
            "int32": proto.TYPE_INT32,
            "string": proto.TYPE_STRING,
            "bytes": proto.TYPE_BYTES,
        }
        schema = descriptor_pb2.FileDescriptorProto(name="feishu_hire_pbbp2.proto", package="pbbp2", syntax="proto2")
        header = schema.message_type.add(name="Header")
        for name, number in (("key", 1), ("value", 2)):
            header.field.add(name=name, number=number, type=proto.TYPE_STRING, label=proto.LABEL_OPTIONAL)
        frame = schema.message_type.add(name="Frame")
        for name, number, kind, _ in _FRAME_FIELDS:
            if kind == "Header":
                frame.field.add(
                    name=name, number=number, type=proto.TYPE_MESSAGE, type_name=".pbbp2.Header",
                    label=proto.LABEL_REPEATED,
                )  # fmt: skip
            else:
                frame.field.add(name=name, number=number, type=types[kind], label=proto.LABEL_OPTIONAL)
        pool = descriptor_pool.DescriptorPool()
        pool.Add(schema)
        _message_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("pbbp2.Frame"))
    return _message_class


def encode_frame(frame: Frame) -> bytes:
    """The frame as protobuf bytes; SeqID, LogID, service and method are always written (the SDK's are required)."""
    message = _frame_class()()
    for wire, attribute in _ATTRIBUTES.items():
        value = getattr(frame, attribute)
        if wire in _ALWAYS_WRITTEN or value:
            setattr(message, wire, value)
    for key, value in frame.headers:
        message.headers.add(key=key, value=value)
    return bytes(message.SerializeToString())


def decode_frame(data: bytes) -> Frame:
    from google.protobuf.message import DecodeError

    if not isinstance(data, (bytes, bytearray)):
        raise FrameError(f"a {type(data).__name__} message where a binary frame belongs")
    message = _frame_class()()
    try:
        message.ParseFromString(bytes(data))
    except DecodeError as exc:
        raise FrameError(f"not a pbbp2.Frame ({len(data)} bytes): {exc}") from None
    values = {attribute: getattr(message, wire) for wire, attribute in _ATTRIBUTES.items()}
    return Frame(headers=[(h.key, h.value) for h in message.headers], **values)


def ping_frame(service_id: int) -> Frame:
    return Frame(service=service_id, method=METHOD_CONTROL, headers=[("type", TYPE_PING)])


def ack_frame(frame: Frame, handled_ms: int) -> Frame:
    """The same frame back, payload ``{"code": 200}``, plus ``biz_rt`` (handling time in ms) as the SDK sends."""
    return replace(frame, headers=[*frame.headers, ("biz_rt", str(handled_ms))], payload=ACK_PAYLOAD)


class Reassembly:
    """Joins the ``seq`` parts (0 to ``sum`` - 1) of one ``message_id``; parts may come in any order, or twice."""

    def __init__(self, ttl: float = PARTS_TTL_SECONDS, limit: int = MAX_PARTIAL_MESSAGES) -> None:
        self.ttl, self.limit = ttl, limit
        self._parts: OrderedDict[str, tuple[float, int, dict[int, bytes]]] = OrderedDict()

    def add(self, frame: Frame) -> bytes | None:
        """The whole payload once every part is in (at once for an unsplit frame), else None."""
        total = frame.int_header("sum", 1)
        if total <= 1:
            return frame.payload
        seq = frame.int_header("seq", 0)
        message_id = frame.header("message_id") or ""
        if not message_id or not 0 <= seq < total:
            raise FrameError(f"split frame part {seq} of {total} without a usable message_id")
        now = time.monotonic()
        while self._parts and (len(self._parts) >= self.limit or next(iter(self._parts.values()))[0] < now - self.ttl):
            dropped, _ = self._parts.popitem(last=False)
            log.warning("Dropped the incomplete split message %s: its other parts never came", dropped)
        started, _, parts = self._parts.pop(message_id, (now, total, {}))
        parts[seq] = frame.payload
        if len(parts) == total:
            return b"".join(parts[n] for n in range(total))
        self._parts[message_id] = (started, total, parts)
        return None

    def __len__(self) -> int:
        return len(self._parts)


# -- the event -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferralAssetsUpdate:
    """One ``assets_update_v1`` event: the account's confirmed balance after the change, at ``modify_time`` (ms)."""

    event_id: str
    referral_account_id: str
    point_bonus: int
    cash_bonus: Mapping[str, Decimal]
    modify_time: int

    @property
    def is_empty(self) -> bool:
        """Nothing left to withdraw, e.g. the event that follows our own withdrawal."""
        return self.point_bonus == 0 and not any(self.cash_bonus.values())

    @property
    def balance_key(self) -> str:
        """The balance at ``modify_time``: the same for a repeat of this event, different for any later change.

        The balance is in it as well as the time, so two changes within one millisecond
        still differ.
        """
        cash = ",".join(f"{currency}={format_money(amount)}" for currency, amount in sorted(self.cash_bonus.items()))
        return f"{self.modify_time}:{self.point_bonus}:{cash}"

    def as_payload(self) -> dict[str, Any]:
        """JSON-safe (a trigger event's payload): cash as decimal strings, ``modify_time`` as Feishu writes it."""
        return {
            "event_id": self.event_id,
            "referral_account_id": self.referral_account_id,
            "point_bonus": self.point_bonus,
            "cash_bonus": {currency: format_money(amount) for currency, amount in sorted(self.cash_bonus.items())},
            "modify_time": str(self.modify_time),
        }

    @classmethod
    def from_payload(cls, payload: object) -> ReferralAssetsUpdate:
        """Read :meth:`as_payload`'s output back (a DAG reading asset events); raises :class:`BadEvent`."""
        if not isinstance(payload, Mapping):
            raise BadEvent(f"payload is {type(payload).__name__}, not an object")
        return _update(
            payload.get("event_id"),
            payload.get("referral_account_id"),
            payload.get("point_bonus"),
            [{"currency_type": c, "amount": a} for c, a in (payload.get("cash_bonus") or {}).items()],
            payload.get("modify_time"),
            "payload",
        )


def parse_event(payload: bytes) -> tuple[str, str, ReferralAssetsUpdate | None]:
    """``(event_type, event_id, update)`` of a schema 2.0 event; ``update`` is None for other event types.

    Numbers with a fraction parse as Decimal. An ``assets_update_v1`` event that cannot be
    read exactly raises :class:`BadEvent` naming the field. Absent amounts count as zero
    (Feishu omits empty fields); an absent ``modify_time`` is an error, since the
    withdrawal's order id rests on it.
    """
    try:
        body = json.loads(payload, parse_float=Decimal)
    except ValueError:
        raise BadEvent(f"event payload is not JSON ({len(payload)} bytes)") from None
    header = body.get("header") if isinstance(body, dict) else None
    if not isinstance(header, dict):
        raise BadEvent("event has no header object (only schema 2.0 events are read)")
    event_type, event_id = header.get("event_type"), header.get("event_id")
    if not isinstance(event_type, str) or not isinstance(event_id, str) or not event_id:
        raise BadEvent("event header lacks event_type or event_id")
    if event_type != ASSETS_UPDATE_EVENT:
        return event_type, event_id, None
    event = body.get("event")
    if not isinstance(event, dict):
        raise BadEvent(f"event {event_id}: event is not an object")
    assets = event.get("assets")
    if not isinstance(assets, dict):
        raise BadEvent(f"event {event_id}: event.assets is not an object")
    bonus = assets.get("confirmed_bonus") or {}
    if not isinstance(bonus, dict):
        raise BadEvent(f"event {event_id}: event.assets.confirmed_bonus is not an object")
    update = _update(
        event_id, event.get("account_id"), bonus.get("point_bonus"), bonus.get("cash_bonus"),
        event.get("modify_time"), "event",
    )  # fmt: skip
    return event_type, event_id, update


def _update(
    event_id: object, account_id: object, points: object, cash: object, modify_time: object, where: str
) -> ReferralAssetsUpdate:
    """The record from its parts, each checked; ``where`` prefixes the field names in errors."""
    if not isinstance(event_id, str) or not event_id:
        raise BadEvent(f"{where}: event_id is missing")
    try:
        account = check_referral_account_id(account_id, f"{where}.account_id")
    except (TypeError, ValueError) as exc:
        raise BadEvent(f"event {event_id}: {exc}") from None
    bonus = {"point_bonus": points} if points is not None else {}  # Feishu omits empty fields
    try:
        whole_points, amounts = parse_bonus({**bonus, "cash_bonus": cash})
    except UnreadableAnswer as exc:
        raise BadEvent(f"event {event_id}: {exc}") from None
    text = str(modify_time).strip() if isinstance(modify_time, (str, int)) and not isinstance(modify_time, bool) else ""
    if not text.isdigit() or len(text) > 16:
        raise BadEvent(f"event {event_id}: {where}.modify_time {modify_time!r} is not milliseconds since the epoch")
    return ReferralAssetsUpdate(event_id, account, whole_points, amounts, int(text))


def latest_updates(updates: Iterable[ReferralAssetsUpdate]) -> list[ReferralAssetsUpdate]:
    """Each account's latest update by ``modify_time`` (events arrive out of order), in account order.

    Several events of one account that reach one DAG run collapse into one withdrawal: the
    latest balance is the one that will be withdrawn, and the earlier ones are in it.
    """
    latest: dict[str, ReferralAssetsUpdate] = {}
    for update in updates:
        known = latest.get(update.referral_account_id)
        if known is None or (update.modify_time, update.event_id) > (known.modify_time, known.event_id):
            latest[update.referral_account_id] = update
    return [latest[account] for account in sorted(latest)]


class SeenEvents:
    """The last ``limit`` event ids, oldest first: repeats are acknowledged without a second trigger event."""

    def __init__(self, ids: Iterable[str] = (), limit: int = 1000) -> None:
        self.limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()
        for event_id in ids:
            self.add(event_id)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> None:
        self._ids[event_id] = None
        self._ids.move_to_end(event_id)
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def as_list(self) -> list[str]:
        return list(self._ids)


# -- the connection --------------------------------------------------------------------------


class LongConnection:
    """One app's long connection, dialled again for ever when it drops.

    ``endpoint`` fetches a fresh :class:`Endpoint` (asynchronously) before every dial: the
    URL's ticket is single-use, and credentials fixed in the meantime are picked up.
    ``config`` is used until Feishu sends its own. ``random`` picks the reconnect delay
    (a seeded one makes tests repeatable).
    """

    def __init__(
        self,
        endpoint: Callable[[ClientConfig], Awaitable[Endpoint]],
        *,
        config: ClientConfig | None = None,
        random_delay: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self._endpoint = endpoint
        self.config = config or ClientConfig()
        self._random_delay = random_delay
        self.connections = 0  # successful dials, for logs and tests
        self._reassembly = Reassembly()

    async def updates(self) -> AsyncIterator[ReferralAssetsUpdate]:
        """Every ``assets_update_v1`` event, each acknowledged once the consumer asks for the next one.

        Other event types and unreadable events are acknowledged and skipped (the latter
        logged: the balance stays in Feishu for the next event or the month-end run). A
        consumer that stops or fails leaves its current event unacknowledged, so Feishu
        delivers it again. Never returns; cancel it to stop.
        """
        delay: float | None = None
        first = True
        while True:
            if delay:
                log.info("Reconnecting to Feishu's event long connection in %.1fs", delay)
                await asyncio.sleep(delay)
            connected_before = self.connections
            try:
                async for update in self._session():
                    yield update
            except EndpointError as err:
                log.error("No long-connection endpoint: %s", err)
            except (OSError, asyncio.TimeoutError, WebSocketException) as exc:
                log.warning("Feishu's event long connection dropped: %s", _reason(exc))
            except Exception:  # anything unforeseen must not end the payouts: log it, and dial again
                log.exception("Feishu's event long connection failed unexpectedly")
            connected = self.connections > connected_before
            # After a drop (or at start), a random delay up to ReconnectNonce spreads many
            # clients out; after a failed dial, every ReconnectInterval.
            delay = (
                self._random_delay(0, self.config.reconnect_nonce)
                if connected or first
                else self.config.reconnect_interval
            )
            first = False

    async def _session(self) -> AsyncIterator[ReferralAssetsUpdate]:
        endpoint = await self._endpoint(self.config)
        self.config = endpoint.config
        # Feishu's own ping/pong keeps the connection alive; the WebSocket-level one stays on
        # too (as in the SDK), so a half-open connection is noticed within a minute.
        async with connect(endpoint.url, max_size=None, open_timeout=30, proxy=None, logger=_websocket_log) as ws:
            self.connections += 1
            log.info("Connected to Feishu's event long connection at %s", endpoint.where)
            pinger = asyncio.create_task(self._ping(ws, endpoint.service_id))
            try:
                async for message in ws:
                    received = time.monotonic()
                    try:
                        frame = decode_frame(message if isinstance(message, bytes) else message.encode())
                    except FrameError as exc:
                        log.warning("Ignored a message from Feishu: %s", exc)
                        continue
                    if frame.method == METHOD_CONTROL:
                        self._control(frame)
                        continue
                    whole, update = self._event(frame)
                    if not whole:
                        continue  # one part of a split message: the frame completing it is acknowledged
                    if update is not None:
                        yield update  # the consumer took it: only now is it acknowledged
                    handled = int((time.monotonic() - received) * 1000)
                    await ws.send(encode_frame(ack_frame(frame, handled)))
            finally:
                pinger.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pinger

    def _control(self, frame: Frame) -> None:
        if frame.header("type") != TYPE_PONG or not frame.payload:
            return
        try:
            self.config = self.config.updated(json.loads(frame.payload, parse_float=Decimal))
        except ValueError:
            log.warning("Ignored a pong whose ClientConfig is not JSON")

    def _event(self, frame: Frame) -> tuple[bool, ReferralAssetsUpdate | None]:
        """(whether the frame completes a message, the update it carries if it is one)."""
        try:
            payload = self._reassembly.add(frame)
        except FrameError as exc:
            log.warning("Ignored a data frame: %s", exc)
            return False, None
        if payload is None:
            return False, None
        try:
            event_type, event_id, update = parse_event(payload)
        except BadEvent as exc:
            log.error("Acknowledged an unreadable event, nothing done: %s", exc)
            return True, None
        if update is None:
            log.debug("Acknowledged event %s of type %s: not a referral balance change", event_id, event_type)
        return True, update

    async def _ping(self, ws: Any, service_id: int) -> None:
        """A ``ping`` every PingInterval (re-read each time: a ``pong`` may change it)."""
        with contextlib.suppress(ConnectionClosed):  # the receiving side notices and dials again
            while True:
                await ws.send(encode_frame(ping_frame(service_id)))
                await asyncio.sleep(self.config.ping_interval)


def _reason(exc: BaseException) -> str:
    """Why a connection ended, without the URL (it carries a ticket)."""
    if isinstance(exc, ConnectionClosed):
        return f"closed ({exc.rcvd.code if exc.rcvd else 'no close frame'})"
    if isinstance(exc, InvalidStatus):
        return f"the server refused the WebSocket with HTTP {exc.response.status_code}"
    return type(exc).__name__ + (f": {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else "")
