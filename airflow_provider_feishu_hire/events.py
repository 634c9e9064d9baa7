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
   an event that is not acknowledged is delivered again. :meth:`LongConnection.deliveries`
   hands out each message unacknowledged, as a :class:`Delivery`, and
   :meth:`LongConnection.acknowledge` answers it when its consumer says so (Airflow 3.3's
   ack mode: once the asset event is stored); :meth:`LongConnection.updates` acknowledges
   an event when its consumer asks for the next one (Airflow 3.2: once Airflow has taken it).
4. A dropped connection is dialled again after a random delay up to ``ReconnectNonce``,
   then every ``ReconnectInterval``, for ever.

Delivery is at least once: the same ``event_id`` can come again, and events can come out
of order (``modify_time`` orders one account's changes). :class:`SeenEvents` drops repeats
cheaply; what makes a repeat harmless is the withdrawal's order id (see the example DAG).

A hostile or broken server cannot hurt the triggerer: every unreadable event or data
frame becomes a :class:`Delivery` with a ``problem``, is logged once and kept in
:attr:`LongConnection.rejected`, and is acknowledged so that it is not delivered again
(Feishu has no "rejected" answer; the balance it was about stays in Feishu for the next
event or the sweep). Nothing a server sends ends a connection except a frame over
:data:`MAX_FRAME_BYTES`. The settings a server sends are clamped (``*_RANGE``), and split
messages are capped in parts and bytes, so memory stays bounded under a flood.

The frame codec uses ``google.protobuf`` with the message types built at runtime from
their field list, in a private descriptor pool, so nothing is generated and an installed
lark-oapi (which registers its own ``pbbp2.proto``) cannot clash with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import random
import time
from collections import OrderedDict, deque
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

# -- what a server may set or send: each bound keeps one hostile or broken server from
# harming the triggerer it shares with every other trigger.

RECONNECT_INTERVAL_RANGE = (1.0, 600.0)
"""Seconds between dials after a failed one. Feishu's default is 120; below 1 s a server
answering ``0`` would have us hammer ``/callback/ws/endpoint`` (186,112 requests a second
were measured), above 10 minutes a typo would stall payouts until the sweep."""

RECONNECT_NONCE_RANGE = (0.0, 600.0)
"""The upper end of the random delay before dialling again after a drop (default 30 s);
0 is legitimate (no spreading), and :data:`MIN_RECONNECT_DELAY` still applies."""

MIN_RECONNECT_DELAY = 1.0
"""No dial follows the previous one sooner than this, whatever the settings: a server that
accepts and at once closes every connection costs at most one endpoint request and one
dial a second."""

PING_INTERVAL_RANGE = (1.0, 300.0)
"""Seconds between our ``ping`` frames (default 120). A server's ``0.001`` would be a ping
flood of our own making; above 5 minutes a server may think us gone (the WebSocket's own
keepalive still notices a dead peer)."""

MAX_FRAME_BYTES = 1 << 20
"""The WebSocket's ``max_size``: a bigger message closes the connection (1009) before it is
read into memory. A referral event is under 1 KiB and Feishu splits big payloads into
parts (``sum``/``seq``), so a real frame stays far below it."""

MAX_MESSAGE_BYTES = 1 << 20
"""The largest event we read, its split parts joined; a bigger one is rejected."""

MAX_SPLIT_PARTS = 64
"""The most parts (``sum``) one message may be split into; more is rejected at once."""

MAX_PARTIAL_MESSAGES = 64
MAX_PARTIAL_BYTES = 4 << 20
PARTS_TTL_SECONDS = 300.0
"""Split messages whose parts have not all come: at most this many, holding at most this
many bytes, for at most this long; the oldest is forgotten first (it is not acknowledged,
so Feishu delivers it again). A server that never finishes its messages cannot grow memory."""

REJECTIONS_KEPT = 100
"""Rejected frames and events kept in :attr:`LongConnection.rejected` for inspection."""


class EndpointError(Exception):
    """Feishu did not hand out a long-connection URL; ``code`` is its answer (None when none arrived)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class FrameError(ValueError):
    """Bytes that are not a ``pbbp2.Frame``."""


class BadEvent(ValueError):
    """An event whose content cannot be read exactly; the message names the field, ``event_id`` the event if known."""

    def __init__(self, message: str, event_id: str | None = None) -> None:
        super().__init__(message)
        self.event_id = event_id


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
        """These settings with the ones a ``ClientConfig`` object from Feishu names, each clamped to its range.

        A value out of its range (``*_RANGE``) is clamped and logged; one that is not a
        number, or not a finite one, is ignored. Feishu sends these with every endpoint
        answer and may send them with any ``pong``: a server must not be able to set a
        ping flood or a reconnect storm.
        """
        if not isinstance(answer, Mapping):
            return self
        changes: dict[str, Any] = {}
        count = answer.get("ReconnectCount")
        if isinstance(count, int) and not isinstance(count, bool):
            changes["reconnect_count"] = count
        for key, name, (low, high) in _CLAMPED_SETTINGS:
            value = answer.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, Decimal, float)):
                continue
            number = float(value)
            if math.isnan(number):
                continue
            clamped = min(max(number, low), high)
            if clamped != number and clamped != getattr(self, name):
                log.warning(
                    "Feishu set %s to %s; using %s, the nearest value in [%s, %s]", key, value, clamped, low, high
                )
            changes[name] = clamped
        return replace(self, **changes)


_CLAMPED_SETTINGS = (
    ("ReconnectInterval", "reconnect_interval", RECONNECT_INTERVAL_RANGE),
    ("ReconnectNonce", "reconnect_nonce", RECONNECT_NONCE_RANGE),
    ("PingInterval", "ping_interval", PING_INTERVAL_RANGE),
)


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
    if not (service.isascii() and service.isdigit()):
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


class Tally:
    """Counts something a server can make happen endlessly, and says when to log it.

    The 1st, 10th, 100th, ... time: a flood of them cannot flood the log, and the log
    still shows how big the flood was.
    """

    def __init__(self) -> None:
        self.count = 0

    def note(self) -> bool:
        """Count one more; True when this one should be logged."""
        self.count += 1
        return not math.log10(self.count) % 1


class Reassembly:
    """Joins the ``seq`` parts (0 to ``sum`` - 1) of one ``message_id``; parts may come in any order, or twice.

    Bounded whatever a server sends: a message may have at most :data:`MAX_SPLIT_PARTS`
    parts and :data:`MAX_MESSAGE_BYTES` bytes (else :class:`FrameError`), and the unfinished
    ones together at most :data:`MAX_PARTIAL_MESSAGES` messages and :data:`MAX_PARTIAL_BYTES`
    bytes, each for :data:`PARTS_TTL_SECONDS` (else the oldest is forgotten).
    """

    def __init__(self) -> None:
        self._parts: OrderedDict[str, tuple[float, dict[int, bytes]]] = OrderedDict()
        self._bytes = 0  # payload bytes held in _parts
        self._dropped = Tally()

    def add(self, frame: Frame) -> bytes | None:
        """The whole payload once every part is in (at once for an unsplit frame), else None."""
        total = frame.int_header("sum", 1)
        if total <= 1:
            if len(frame.payload) > MAX_MESSAGE_BYTES:
                raise FrameError(f"a message of {len(frame.payload)} bytes, more than {MAX_MESSAGE_BYTES}")
            return frame.payload
        seq = frame.int_header("seq", 0)
        message_id = frame.header("message_id") or ""
        if not message_id or not 0 <= seq < total:
            raise FrameError(f"split frame part {seq} of {total} without a usable message_id")
        if total > MAX_SPLIT_PARTS:
            raise FrameError(f"a message split into {total} parts, more than {MAX_SPLIT_PARTS}")
        started, parts = self._take(message_id)
        parts[seq] = frame.payload
        size = sum(map(len, parts.values()))
        if size > MAX_MESSAGE_BYTES:
            raise FrameError(f"split message {message_id} has {size} bytes, more than {MAX_MESSAGE_BYTES}")
        if len(parts) == total:
            return b"".join(parts[n] for n in range(total))
        self._make_room(size, time.monotonic())
        self._parts[message_id] = (started, parts)
        self._bytes += size
        return None

    def _take(self, message_id: str) -> tuple[float, dict[int, bytes]]:
        """The parts of ``message_id`` so far, out of the store (put back by :meth:`add` if still incomplete)."""
        started, parts = self._parts.pop(message_id, (time.monotonic(), {}))
        self._bytes -= sum(map(len, parts.values()))
        return started, parts

    def _make_room(self, size: int, now: float) -> None:
        while self._parts:
            oldest_started, _ = next(iter(self._parts.values()))
            full = len(self._parts) >= MAX_PARTIAL_MESSAGES or self._bytes + size > MAX_PARTIAL_BYTES
            if not full and oldest_started >= now - PARTS_TTL_SECONDS:
                return
            dropped = next(iter(self._parts))
            self._take(dropped)
            if self._dropped.note():
                log.warning(
                    "Dropped the incomplete split message %s (the %s. so far on this connection): its other "
                    "parts did not come in time, or too many messages are unfinished",
                    dropped, self._dropped.count,
                )  # fmt: skip


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
    except (ValueError, RecursionError):  # RecursionError: a server's [[[[...]]]] nested too deep
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
        raise BadEvent(f"event {event_id}: event is not an object", event_id)
    assets = event.get("assets")
    if not isinstance(assets, dict):
        raise BadEvent(f"event {event_id}: event.assets is not an object", event_id)
    bonus = assets.get("confirmed_bonus") or {}
    if not isinstance(bonus, dict):
        raise BadEvent(f"event {event_id}: event.assets.confirmed_bonus is not an object", event_id)
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
        raise BadEvent(f"event {event_id}: {exc}", event_id) from None
    bonus = {"point_bonus": points} if points is not None else {}  # Feishu omits empty fields
    try:
        whole_points, amounts = parse_bonus({**bonus, "cash_bonus": cash})
    except UnreadableAnswer as exc:
        raise BadEvent(f"event {event_id}: {exc}", event_id) from None
    text = str(modify_time).strip() if isinstance(modify_time, (str, int)) and not isinstance(modify_time, bool) else ""
    # ASCII digits only: str.isdigit() also accepts "²" and "١", which int() refuses or reads as another number.
    if not (text.isascii() and text.isdigit()) or len(text) > 16:
        raise BadEvent(
            f"event {event_id}: {where}.modify_time {modify_time!r} is not milliseconds since the epoch", event_id
        )
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
    """The last ``limit`` ids seen, oldest forgotten first: bounded memory for telling repeats apart."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> None:
        self._ids[event_id] = None
        self._ids.move_to_end(event_id)
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)


# -- the connection --------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """A data frame or event that could not be read, as kept for inspection: never its payload.

    The payload is not kept (an event's header carries the app's verification token); its
    size and SHA-256 identify it against Feishu's records.
    """

    event_id: str | None
    message_id: str | None
    reason: str
    size: int
    sha256: str
    at: float  # time.time()

    def as_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id, "message_id": self.message_id, "reason": self.reason,
            "size": self.size, "sha256": self.sha256, "at": self.at,
        }  # fmt: skip


@dataclass(frozen=True, eq=False)
class Delivery:
    """One complete message from the long connection, not yet acknowledged.

    ``update`` is set for a readable balance change, ``problem`` (a :class:`Rejection`)
    for a data frame or event that cannot be read; neither for other event types.
    :meth:`LongConnection.acknowledge` answers it on the connection it came by.
    """

    event_id: str | None
    update: ReferralAssetsUpdate | None = None
    problem: Rejection | None = None
    frame: Frame = field(default_factory=Frame, repr=False)
    received: float = 0.0  # time.monotonic(), for the acknowledgement's biz_rt
    connection: Any = field(default=None, repr=False)  # the WebSocket it came by


class LongConnection:
    """One app's long connection, dialled again for ever when it drops.

    ``endpoint`` fetches a fresh :class:`Endpoint` (asynchronously) before every dial: the
    URL's ticket is single-use, and credentials fixed in the meantime are picked up.
    ``config`` is used until Feishu sends its own. ``random`` picks the reconnect delay
    (a seeded one makes tests repeatable). :attr:`rejected` holds the last
    :data:`REJECTIONS_KEPT` frames and events that could not be read.
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
        self.rejected: deque[Rejection] = deque(maxlen=REJECTIONS_KEPT)
        self._logged = SeenEvents(limit=10 * REJECTIONS_KEPT)  # rejections already logged, by event or message id
        self._unidentified = Tally()  # rejected frames without any id

    async def updates(self) -> AsyncIterator[ReferralAssetsUpdate]:
        """Every ``assets_update_v1`` event, each acknowledged once the consumer asks for the next one.

        Other event types and unreadable events are acknowledged and skipped. A consumer
        that stops or fails leaves its current event unacknowledged, so Feishu delivers it
        again. Never returns; cancel it to stop.
        """
        async for delivery in self.deliveries():
            if delivery.update is not None:
                yield delivery.update  # the consumer took it: only now is it acknowledged
            await self.acknowledge(delivery)

    async def deliveries(self) -> AsyncIterator[Delivery]:
        """Every complete data message, unacknowledged, across reconnects. Never returns; cancel it to stop.

        Nothing a server sends ends this: unreadable frames are logged once and kept in
        :attr:`rejected`, and deliveries carry them as ``problem`` when they can be
        acknowledged; anything unforeseen is logged and the connection dialled again.
        """
        delay: float | None = None
        first = True
        while True:
            if delay:
                log.info("Reconnecting to Feishu's event long connection in %.1fs", delay)
                await asyncio.sleep(delay)
            connected_before = self.connections
            try:
                async for delivery in self._session():
                    yield delivery
            except EndpointError as err:
                log.error("No long-connection endpoint: %s", err)
            except (OSError, asyncio.TimeoutError, WebSocketException) as exc:
                log.warning("Feishu's event long connection dropped: %s", _reason(exc))
            except Exception:  # anything unforeseen must not end the payouts: log it, and dial again
                log.exception("Feishu's event long connection failed unexpectedly")
            connected = self.connections > connected_before
            # After a drop (or at start), a random delay up to ReconnectNonce spreads many
            # clients out; after a failed dial, every ReconnectInterval; never sooner than
            # MIN_RECONNECT_DELAY.
            delay = max(
                MIN_RECONNECT_DELAY,
                self._random_delay(0, self.config.reconnect_nonce)
                if connected or first
                else self.config.reconnect_interval,
            )
            first = False

    async def acknowledge(self, delivery: Delivery) -> None:
        """Answer ``{"code": 200}`` on the connection it came by; if that is gone, Feishu delivers it again."""
        handled = int((time.monotonic() - delivery.received) * 1000)
        with contextlib.suppress(ConnectionClosed):
            await delivery.connection.send(encode_frame(ack_frame(delivery.frame, handled)))

    async def _session(self) -> AsyncIterator[Delivery]:
        endpoint = await self._endpoint(self.config)
        self.config = endpoint.config
        # Feishu's own ping/pong keeps the connection alive; the WebSocket-level one stays on
        # too (as in the SDK), so a half-open connection is noticed within a minute. No
        # compression: one network read of deflated frames inflates them all at once, before
        # the receive queue's limit can stop reading (a server sent 60 MB in 256 KiB that way).
        async with connect(
            endpoint.url, max_size=MAX_FRAME_BYTES, compression=None, open_timeout=30, proxy=None,
            logger=_websocket_log,
        ) as ws:  # fmt: skip
            self.connections += 1
            log.info("Connected to Feishu's event long connection at %s", endpoint.where)
            pinger = asyncio.create_task(self._ping(ws, endpoint.service_id))
            reassembly = Reassembly()  # a message's parts come on one connection
            try:
                async for message in ws:
                    received = time.monotonic()
                    try:
                        frame = decode_frame(message if isinstance(message, bytes) else message.encode())
                    except FrameError as exc:  # nothing to acknowledge: no frame, no message_id
                        self._reject(None, None, str(exc), message if isinstance(message, bytes) else b"")
                        continue
                    if frame.method == METHOD_CONTROL:
                        self._control(frame)
                        continue
                    delivery = self._read(frame, reassembly)
                    if delivery is not None:
                        # The acknowledgement replaces the payload, so a delivery waiting for it
                        # (up to MAX_IN_FLIGHT in ack mode) need not hold a megabyte of it.
                        answerable = replace(frame, payload=b"")
                        yield replace(delivery, frame=answerable, received=received, connection=ws)
            finally:
                pinger.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pinger

    def _control(self, frame: Frame) -> None:
        if frame.header("type") != TYPE_PONG or not frame.payload:
            return
        try:
            self.config = self.config.updated(json.loads(frame.payload, parse_float=Decimal))
        except (ValueError, RecursionError):
            log.warning("Ignored a pong whose ClientConfig is not JSON")

    def _read(self, frame: Frame, reassembly: Reassembly) -> Delivery | None:
        """The delivery a data frame completes, None while a split message waits for parts."""
        message_id = frame.header("message_id")
        try:
            payload = reassembly.add(frame)
        except FrameError as exc:
            return Delivery(None, problem=self._reject(None, message_id, str(exc), frame.payload))
        if payload is None:
            return None
        try:
            event_type, event_id, update = parse_event(payload)
        except BadEvent as exc:
            return Delivery(exc.event_id, problem=self._reject(exc.event_id, message_id, str(exc), payload))
        except Exception as exc:  # a reader's bug must not make the event come back for ever
            log.exception("Reading event of message %s failed", message_id)
            problem = self._reject(None, message_id, f"unreadable: {type(exc).__name__}", payload)
            return Delivery(None, problem=problem)
        if update is None:
            log.debug("Event %s of type %s is not a referral balance change", event_id, event_type)
        return Delivery(event_id, update=update)

    def _reject(self, event_id: str | None, message_id: str | None, reason: str, payload: bytes) -> Rejection:
        """Keep it for inspection, and log it once per event (or message) id."""
        rejection = Rejection(
            event_id, message_id, reason[:500], len(payload), hashlib.sha256(payload).hexdigest(), time.time()
        )
        self.rejected.append(rejection)
        key = event_id or message_id
        if key is None:  # undecodable bytes
            if not self._unidentified.note():
                return rejection
            reason = f"{rejection.reason} (unreadable frame number {self._unidentified.count})"
        elif key in self._logged:
            return rejection
        else:
            self._logged.add(key)
            reason = rejection.reason
        log.error(
            "Rejected %s from Feishu's long connection (acknowledged, nothing done; the balance stays in "
            "Feishu for the next event or the sweep): %s",
            f"event {event_id}" if event_id else f"message {message_id}" if message_id else "a frame",
            reason,
        )
        return rejection

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
