"""Feishu's event long connection, as the sandbox serves it: a WebSocket of protobuf ``pbbp2.Frame`` messages.

The frame codec is written out by hand (proto2 wire format: varints and length-delimited
fields) and shares nothing with the provider's client, whose codec is its own: two
independent implementations of the same wire format check each other.

``pbbp2.Frame`` (proto2; field numbers as in the official SDK's ``pbbp2.proto``):
``SeqID=1 uint64``, ``LogID=2 uint64``, ``service=3 int32``, ``method=4 int32`` (all
four required; 0 control, 1 data), ``headers=5 repeated Header{key=1, value=2}`` (both
required strings), ``payload_encoding=6 string``, ``payload_type=7 string``,
``payload=8 bytes``, ``LogIDNew=9 string``.

What travels over it: the client's ``ping`` control frames are answered with ``pong``
(whose payload carries a ClientConfig only when it changed since the client last heard
one); events go out as data frames (headers ``type=event``, ``message_id``,
``trace_id``, ``sum``, ``seq``; ``seq`` counts from 0 as the SDK's reassembly does) and
are delivered until the client answers with the same frame and payload ``{"code": 200}``.

Hostile-server faults, for clients that must survive a broken or malicious Feishu:
:meth:`LongConnection.poison` raises an event no client can read (delivered and
redelivered like any other until acknowledged), ``configure(..., hostile=True)`` hands
out settings no sane server would (0, 0.001, -5, 1e12, NaN, text), and
:meth:`LongConnection.flood` sends a burst of garbage frames, never-finished split
parts or oversized frames to every connected client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

CONTROL, DATA = 0, 1  # Frame.method
CLIENT_CONFIG_FIELDS = ("ReconnectCount", "ReconnectInterval", "ReconnectNonce", "PingInterval")
# The official SDK's own defaults until an endpoint answer or a pong says otherwise.
DEFAULT_CLIENT_CONFIG = {"ReconnectCount": -1, "ReconnectInterval": 120, "ReconnectNonce": 30, "PingInterval": 120}
WS_PATH = "/ws"

POISONS = ("not_json", "deep_json", "modify_time", "bad_split", "too_many_parts")
FLOODS = ("garbage", "parts", "oversize")

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_REQUIRED = {1: "SeqID", 2: "LogID", 3: "service", 4: "method"}
_UINT64 = 1 << 64


# -- the proto2 codec -----------------------------------------------------------------------


@dataclass
class Frame:
    """One ``pbbp2.Frame``; optional fields left None are absent on the wire."""

    seq_id: int = 0
    log_id: int = 0
    service: int = 0
    method: int = CONTROL
    headers: list[tuple[str, str]] = field(default_factory=list)
    payload_encoding: str | None = None
    payload_type: str | None = None
    payload: bytes | None = None
    log_id_new: str | None = None

    def header(self, key: str) -> str | None:
        return next((value for name, value in self.headers if name == key), None)


def encode_frame(frame: Frame) -> bytes:
    out = bytearray()
    for number, value in ((1, frame.seq_id), (2, frame.log_id), (3, frame.service), (4, frame.method)):
        out += _key(number, _VARINT) + _varint(value)  # required: always written, zero or not
    for key, text in frame.headers:
        header = _length_field(1, key.encode()) + _length_field(2, text.encode())
        out += _length_field(5, header)
    for number, optional in ((6, frame.payload_encoding), (7, frame.payload_type)):
        if optional is not None:
            out += _length_field(number, optional.encode())
    if frame.payload is not None:
        out += _length_field(8, frame.payload)
    if frame.log_id_new is not None:
        out += _length_field(9, frame.log_id_new.encode())
    return bytes(out)


def decode_frame(data: bytes) -> Frame:
    """Raises ValueError for anything a proto2 parser would refuse, a missing required field included."""
    frame = Frame()
    seen: set[int] = set()
    for number, wire, value in _fields(data):
        expected = _VARINT if number in _REQUIRED else _LENGTH if 5 <= number <= 9 else None
        if expected is None:
            continue  # an unknown field: proto2 keeps it, nothing here reads it
        if wire != expected:
            raise ValueError(f"field {number} has wire type {wire}, not {expected}")
        seen.add(number)
        if number == 1:
            frame.seq_id = _as_int(value) % _UINT64
        elif number == 2:
            frame.log_id = _as_int(value) % _UINT64
        elif number in (3, 4):
            signed = _int32(_as_int(value))
            if number == 3:
                frame.service = signed
            else:
                frame.method = signed
        elif number == 5:
            frame.headers.append(_decode_header(_as_bytes(value)))
        elif number == 8:
            frame.payload = _as_bytes(value)
        else:
            text = _as_bytes(value).decode()
            if number == 6:
                frame.payload_encoding = text
            elif number == 7:
                frame.payload_type = text
            else:
                frame.log_id_new = text
    missing = [name for number, name in _REQUIRED.items() if number not in seen]
    if missing:
        raise ValueError(f"required fields {missing} are missing")
    return frame


def _decode_header(data: bytes) -> tuple[str, str]:
    parts: dict[int, str] = {}
    for number, wire, value in _fields(data):
        if number in (1, 2):
            if wire != _LENGTH:
                raise ValueError(f"Header field {number} has wire type {wire}, not {_LENGTH}")
            parts[number] = _as_bytes(value).decode()
    if set(parts) != {1, 2}:
        raise ValueError("a Header needs both key and value")
    return parts[1], parts[2]


def _fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        value: int | bytes
        if wire == _VARINT:
            value, pos = _read_varint(data, pos)
        elif wire in (_LENGTH, _FIXED64, _FIXED32):
            if wire == _LENGTH:
                size, pos = _read_varint(data, pos)
            else:
                size = 8 if wire == _FIXED64 else 4
            if pos + size > len(data):
                raise ValueError(f"field {number} runs past the end of the message")
            value, pos = data[pos : pos + size], pos + size
        else:
            raise ValueError(f"field {number} has unsupported wire type {wire}")
        yield number, wire, value


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _length_field(number: int, data: bytes) -> bytes:
    return _key(number, _LENGTH) + _varint(len(data)) + data


def _varint(value: int) -> bytes:
    value %= _UINT64  # a negative int32 is its 64-bit two's complement: ten bytes
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        if shift >= 70:
            raise ValueError("varint longer than ten bytes")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _int32(value: int) -> int:
    value %= 1 << 32
    return value - (1 << 32) if value >= 1 << 31 else value


def _as_int(value: int | bytes) -> int:
    assert isinstance(value, int)
    return value


def _as_bytes(value: int | bytes) -> bytes:
    assert isinstance(value, bytes)
    return value


# -- the server -----------------------------------------------------------------------------


@dataclass(eq=False)
class _Client:
    ws: ServerConnection
    device_id: str
    service_id: int
    config_version: int  # the ClientConfig version the client has been told, by the endpoint or a pong


@dataclass(eq=False)
class _Event:
    event_id: str
    event_type: str
    body: bytes
    deliveries: int = 0  # frames (or sets of split frames) sent
    acks: int = 0  # {"code": 200} answers received
    acked: bool = False  # no longer delivered
    carrier: _Client | None = None  # the client its latest delivery went to, until acked or given up
    attempt: int = 0  # bumps with every delivery, so a stale redelivery timer knows it is stale
    headers: Mapping[str, str] | None = None  # a poison's damaged frame headers, over the usual ones


class LongConnection:
    """The WebSocket side of the sandbox, on its own loopback port and event-loop thread.

    ``take_fault(endpoint, kind)`` is the sandbox's fault queue; ``lock`` is the
    sandbox's lock, so balances and the events they raise change together.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        lock: threading.RLock,
        take_fault: Callable[[str, str], Any],
        redeliver_after: float,
        client_config: Mapping[str, int],
    ) -> None:
        self.redeliver_after = float(redeliver_after)
        self._lock = lock
        self._take_fault = take_fault
        self._config = dict(client_config)
        self._config_version = 0
        self._socket = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._devices: dict[str, int] = {}  # device_id handed out by the endpoint -> its service_id
        self._clients: list[_Client] = []
        self._events: dict[str, _Event] = {}  # in the order raised
        self._message_events: dict[str, _Event] = {}  # every message_id sent -> its event
        self._turn = 0
        self._seq = 0
        self.counts = {
            "endpoints": 0, "connections": 0, "pings": 0, "bad_frames": 0, "unknown_acks": 0, "flooded": 0,
        }  # fmt: skip

    @property
    def base_url(self) -> str:
        host, port = self._socket.getsockname()[:2]
        return f"ws://[{host}]:{port}" if ":" in host else f"ws://{host}:{port}"

    def start(self) -> None:
        if self._thread is not None:
            return
        loop = self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        failed: list[BaseException] = []

        async def open_server() -> Server:
            return await serve(
                self._serve,
                sock=self._socket,
                process_request=self._admit,
                ping_interval=None,  # Feishu's keepalive is the client's ping frames, not WebSocket pings
                max_size=None,
            )

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(open_server())
            except BaseException as exc:  # handed to start(), which raises it in the caller's thread
                failed.append(exc)
                return
            finally:
                ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="feishu-sandbox-ws", daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            self._thread = None
            raise failed[0]

    def stop(self) -> None:
        loop, thread, server = self._loop, self._thread, self._server
        self._thread = None
        if loop is None or thread is None or server is None:
            self._socket.close()
            return

        async def shut() -> None:
            server.close()  # closes every connection (1001 going away) and waits for their handlers
            await server.wait_closed()
            leftovers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in leftovers:  # deliveries still sending: nobody is left to read them
                task.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._socket.close()

    # -- what the sandbox calls, from any thread ------------------------------------------

    def endpoint(self) -> dict[str, Any]:
        """The ``data`` of a successful ``/callback/ws/endpoint`` answer: a fresh URL and the ClientConfig."""
        device_id, service_id = secrets.token_hex(16), 100_000 + secrets.randbelow(900_000)
        with self._lock:
            self._devices[device_id] = service_id
            self.counts["endpoints"] += 1
            config = dict(self._config)
        query = urlencode({"device_id": device_id, "service_id": service_id})
        return {"URL": f"{self.base_url}{WS_PATH}?{query}", "ClientConfig": config}

    def configure(self, changes: Mapping[str, Any], *, hostile: bool = False) -> dict[str, Any]:
        """Change the ClientConfig that endpoint answers and pongs hand out.

        Checked as Feishu would (whole numbers, at least 0; ReconnectCount at least -1)
        unless ``hostile``: then any JSON value goes out as it is, as from a broken server.
        """
        unknown = set(changes) - set(CLIENT_CONFIG_FIELDS)
        if unknown:
            raise ValueError(f"unknown ClientConfig fields {sorted(unknown)}; they are {CLIENT_CONFIG_FIELDS}")
        for name, value in changes.items():
            least = -1 if name == "ReconnectCount" else 0  # -1 tries: reconnect forever
            if not hostile and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ValueError(f"ClientConfig {name} must be a whole number, at least {least}, not {value!r}")
        with self._lock:
            self._config.update(changes)
            self._config_version += 1
            return dict(self._config)

    def poison(self, kind: str) -> str:
        """Raise an event no client can read, delivered until acknowledged like any other; returns its event_id.

        ``not_json``: the payload is not JSON; ``deep_json``: JSON nested deeper than any
        parser's recursion; ``modify_time``: a balance change whose ``modify_time`` is
        ``"²"`` (passes ``str.isdigit()``, fails ``int()``); ``bad_split``: its frame says
        ``sum`` is ``"many"``; ``too_many_parts``: its frame claims 1,000,000 parts.
        """
        if kind not in POISONS:
            raise ValueError(f"poison {kind!r} is not one of {POISONS}")
        event_id = secrets.token_hex(16)
        envelope = {
            "schema": "2.0",
            "header": {"event_id": event_id, "event_type": "hire.referral_account.assets_update_v1"},
            "event": {"account_id": "7000000000000000001", "assets": {}, "modify_time": "²"},
        }
        body = {
            "not_json": b"\x00{not json",
            "deep_json": b"[" * 100_000 + b"]" * 100_000,
        }.get(kind, json.dumps(envelope).encode())
        headers = {"bad_split": {"sum": "many"}, "too_many_parts": {"sum": "1000000", "seq": "0"}}.get(kind)
        with self._lock:
            self._events[event_id] = _Event(event_id, "poison", body, headers=headers)
        self._soon(self._pump)
        return event_id

    def flood(self, kind: str, count: int, size: int) -> int:
        """Send ``count`` frames of ``size`` payload bytes to every connected client at once; returns frames sent.

        ``garbage``: bytes that are no frame; ``parts``: the first part of ``count``
        split messages whose other parts never come; ``oversize``: data frames of ``size``
        bytes (the client's size limit decides). Nothing is tracked as an event.
        """
        if kind not in FLOODS:
            raise ValueError(f"flood {kind!r} is not one of {FLOODS}")
        loop = self._loop
        if loop is None or self._thread is None:
            return 0

        async def send() -> int:
            with self._lock:
                clients = list(self._clients)
            sent = 0
            for client in clients:
                for _ in range(count):
                    if kind == "garbage":
                        message = b"\xff" * size  # a varint that never ends
                    else:
                        message_id = secrets.token_hex(16)
                        parts = "2" if kind == "parts" else "1"
                        headers = [("type", "event"), ("message_id", message_id), ("sum", parts), ("seq", "0")]
                        message = encode_frame(Frame(0, 0, client.service_id, DATA, headers, payload=b"x" * size))
                    try:
                        await client.ws.send(message)
                    except ConnectionClosed:
                        break
                    sent += 1
            with self._lock:
                self.counts["flooded"] += sent
            return sent

        return asyncio.run_coroutine_threadsafe(send(), loop).result(timeout=300)

    def publish(self, event_id: str, event_type: str, body: bytes) -> None:
        """Queue an event; it goes to a connected client now, or to the next one that connects."""
        with self._lock:
            self._events[event_id] = _Event(event_id, event_type, body)
        self._soon(self._pump)

    def drop_connections(self) -> int:
        """Cut every connection without a close handshake, as a network failure does; returns how many."""
        loop = self._loop
        if loop is None or self._thread is None:
            return 0

        async def cut() -> int:
            with self._lock:
                clients = list(self._clients)
            for client in clients:
                client.ws.transport.abort()
            return len(clients)

        return asyncio.run_coroutine_threadsafe(cut(), loop).result(timeout=10)

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "events": {
                    event.event_id: {
                        "event_type": event.event_type,
                        "delivered": event.deliveries,
                        "acked": event.acked,
                        "acks": event.acks,
                    }
                    for event in self._events.values()
                },
                "long_connection": {
                    **self.counts,
                    "connected": len(self._clients),
                    "client_config": dict(self._config),
                },
            }

    # -- the event loop's side ----------------------------------------------------------------

    def _soon(self, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # stopped meanwhile: the event stays queued, like any other
                loop.call_soon_threadsafe(callback)

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse the handshake the way Feishu's gateway does: an HTTP error with ``handshake-*`` headers."""
        url = urlsplit(request.path)
        if url.path != WS_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "404 page not found\n")
        device_id, service_id = _query(url.query)
        with self._lock:
            known = self._devices.get(device_id) if device_id else None
        if known is None or known != service_id:
            response = connection.respond(HTTPStatus.FORBIDDEN, "auth failed\n")
            response.headers["handshake-status"] = "514"
            response.headers["handshake-msg"] = "auth failed: unknown device_id or service_id"
            response.headers["handshake-autherrcode"] = "514"
            return response
        return None

    async def _serve(self, ws: ServerConnection) -> None:
        device_id, service_id = _query(urlsplit(ws.request.path if ws.request else "").query)
        with self._lock:
            client = _Client(ws, device_id or "", service_id or 0, self._config_version)
            self._clients.append(client)
            self.counts["connections"] += 1
        self._pump()
        try:
            async for message in ws:
                await self._receive(client, message)
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                self._clients.remove(client)
                for event in self._events.values():
                    if event.carrier is client:  # never acknowledged on this connection: deliver again
                        event.carrier = None
                        event.attempt += 1
            self._pump()

    async def _receive(self, client: _Client, message: str | bytes) -> None:
        try:
            if isinstance(message, str):
                raise ValueError("a text message; frames are binary")
            frame = decode_frame(message)
        except ValueError:
            with self._lock:
                self.counts["bad_frames"] += 1
            return
        kind = frame.header("type")
        if frame.method == CONTROL and kind == "ping":
            await self._pong(client, frame)
        elif frame.method == DATA:
            self._answered(frame)
        else:
            with self._lock:
                self.counts["bad_frames"] += 1

    async def _pong(self, client: _Client, ping: Frame) -> None:
        with self._lock:
            self.counts["pings"] += 1
            news = client.config_version != self._config_version
            client.config_version = self._config_version
            payload = json.dumps(self._config).encode() if news else None
        pong = Frame(ping.seq_id, ping.log_id, ping.service, CONTROL, [("type", "pong")], payload=payload)
        with contextlib.suppress(ConnectionClosed):  # the client is gone; its pong with it
            await client.ws.send(encode_frame(pong))

    def _answered(self, frame: Frame) -> None:
        """A data frame from the client answers a delivery; ``{"code": 200}`` acknowledges the event."""
        try:
            code = json.loads(frame.payload or b"").get("code")
        except (ValueError, AttributeError):
            code = None
        with self._lock:
            event = self._message_events.get(frame.header("message_id") or "")
            if event is None:
                self.counts["unknown_acks"] += 1
                return
            if code != 200:
                return  # not handled: the redelivery timer stands
            event.acks += 1
            if event.acked:
                return
        if self._take_fault("events", "ignore_ack"):
            return  # counted, but the event stays due: at-least-once with a vengeance
        with self._lock:
            event.acked = True
            event.carrier = None
            event.attempt += 1

    def _pump(self) -> None:
        """Hand every due event to a connected client (round robin), as Feishu gives each event to one."""
        assert self._loop is not None
        with self._lock:
            if not self._clients:
                return
            for event in self._events.values():
                if event.acked or event.carrier is not None:
                    continue
                client = self._clients[self._turn % len(self._clients)]
                self._turn += 1
                event.carrier = client
                event.attempt += 1
                self._loop.create_task(self._deliver(client, event, event.attempt))

    async def _deliver(self, client: _Client, event: _Event, attempt: int) -> None:
        split = self._take_fault("events", "split_event")
        duplicate = self._take_fault("events", "duplicate_event")
        drop = self._take_fault("events", "drop_connection")
        try:
            for _ in range(2 if duplicate else 1):
                message_id = secrets.token_hex(16)
                with self._lock:
                    self._message_events[message_id] = event
                for frame in self._data_frames(
                    client, event.body, message_id, split.parts if split else 1, event.headers
                ):
                    await client.ws.send(encode_frame(frame))
                with self._lock:
                    event.deliveries += 1
        except ConnectionClosed:
            return  # the connection's end hands the event on
        if drop:
            client.ws.transport.abort()
        assert self._loop is not None
        self._loop.call_later(self.redeliver_after, self._expire, event, attempt)

    def _expire(self, event: _Event, attempt: int) -> None:
        with self._lock:
            if event.acked or event.attempt != attempt:
                return
            event.carrier = None
        self._pump()

    def _data_frames(
        self, client: _Client, body: bytes, message_id: str, parts: int, damaged: Mapping[str, str] | None
    ) -> Iterator[Frame]:
        parts = max(1, min(parts, len(body)))  # an empty part would read as a missing one
        size = -(-len(body) // parts)
        chunks = [body[i * size : (i + 1) * size] for i in range(parts)]
        trace_id = secrets.token_hex(8)
        for seq, chunk in enumerate(chunks):
            with self._lock:
                self._seq += 1
                seq_id = self._seq
            usual = {
                "type": "event",
                "message_id": message_id,
                "trace_id": trace_id,
                "sum": str(parts),
                "seq": str(seq),
            }
            headers = list({**usual, **(damaged or {})}.items())
            yield Frame(seq_id, seq_id, client.service_id, DATA, headers, payload=chunk, log_id_new=trace_id)


def _query(query: str) -> tuple[str | None, int | None]:
    values = parse_qs(query)
    device_id = values.get("device_id", [None])[0]
    service = values.get("service_id", [""])[0] or ""
    return device_id, int(service) if service.isdigit() else None
