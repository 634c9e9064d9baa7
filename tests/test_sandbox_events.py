"""The sandbox's event long connection, driven by a tiny client of the test's own.

Frames are parsed here with ``google.protobuf`` from a ``pbbp2.Frame`` descriptor built in
this file, so the sandbox's hand-written codec is checked against an independent one.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from airflow_provider_feishu_hire.sandbox import (
    ASSETS_UPDATE,
    DEFAULT_APP_ID,
    DEFAULT_APP_SECRET,
    DEFAULT_TENANT_KEY,
    DEFAULT_VERIFICATION_TOKEN,
    Account,
    FeishuSandbox,
)
from airflow_provider_feishu_hire.sandbox.long_connection import Frame, decode_frame, encode_frame

RICH = "8001"  # 1200 points and 3000.00 CNY
EMPTY = "8002"
ROOT = Path(__file__).resolve().parent.parent
CREDENTIALS = {"AppID": DEFAULT_APP_ID, "AppSecret": DEFAULT_APP_SECRET}
QUICK = 0.2  # redeliver_after in tests that want redelivery
NEVER = 600.0  # ... and in tests that must not see it


def _frame_class() -> Any:
    """``pbbp2.Frame`` as the official SDK's proto declares it (proto2, required fields and all)."""
    proto = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="pbbp2_test.proto", package="pbbp2_test", syntax="proto2")
    header = file.message_type.add(name="Header")
    header.field.add(name="key", number=1, type=proto.TYPE_STRING, label=proto.LABEL_REQUIRED)
    header.field.add(name="value", number=2, type=proto.TYPE_STRING, label=proto.LABEL_REQUIRED)
    frame = file.message_type.add(name="Frame")
    for name, number, kind in (
        ("SeqID", 1, proto.TYPE_UINT64),
        ("LogID", 2, proto.TYPE_UINT64),
        ("service", 3, proto.TYPE_INT32),
        ("method", 4, proto.TYPE_INT32),
    ):
        frame.field.add(name=name, number=number, type=kind, label=proto.LABEL_REQUIRED)
    frame.field.add(
        name="headers",
        number=5,
        type=proto.TYPE_MESSAGE,
        type_name=".pbbp2_test.Header",
        label=proto.LABEL_REPEATED,
    )
    for name, number, kind in (
        ("payload_encoding", 6, proto.TYPE_STRING),
        ("payload_type", 7, proto.TYPE_STRING),
        ("payload", 8, proto.TYPE_BYTES),
        ("LogIDNew", 9, proto.TYPE_STRING),
    ):
        frame.field.add(name=name, number=number, type=kind, label=proto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("pbbp2_test.Frame"))


PbFrame = _frame_class()


def _headers(frame: Any) -> dict[str, str]:
    return {h.key: h.value for h in frame.headers}


class Listener:
    """An app on the long connection: asks the endpoint for a URL, connects, reads frames, acknowledges."""

    def __init__(self, sandbox: FeishuSandbox) -> None:
        answer = _endpoint(sandbox)
        assert answer["code"] == 0, answer
        self.url = answer["data"]["URL"]
        self.service_id = int(parse_qs(urlsplit(self.url).query)["service_id"][0])
        self.ws: ClientConnection = connect(self.url, open_timeout=5)

    def frame(self, timeout: float = 5) -> Any:
        message = self.ws.recv(timeout=timeout)
        assert isinstance(message, bytes), "frames are binary"
        frame = PbFrame()
        frame.ParseFromString(message)  # refuses a frame without its required fields
        return frame

    def event(self, *, ack: bool = True) -> tuple[Any, dict[str, Any]]:
        """The next event (reassembled if split) and its last frame; money parsed as Decimal."""
        parts: dict[int, bytes] = {}
        while True:
            frame = self.frame()
            headers = _headers(frame)
            assert frame.method == 1 and headers["type"] == "event", frame
            parts[int(headers["seq"])] = frame.payload
            if len(parts) == int(headers["sum"]):
                break
        payload = b"".join(parts[seq] for seq in sorted(parts))
        if ack:
            self.ack(frame)
        return frame, json.loads(payload, parse_float=Decimal)

    def ack(self, frame: Any, code: int = 200) -> None:
        """What the SDK does: the same frame back, a ``biz_rt`` header added, payload ``{"code": 200}``."""
        answer = PbFrame()
        answer.CopyFrom(frame)
        answer.headers.add(key="biz_rt", value="1")
        answer.payload = json.dumps({"code": code}).encode()
        self.ws.send(answer.SerializeToString())

    def ping(self) -> Any:
        ping = PbFrame(SeqID=0, LogID=0, service=self.service_id, method=0)
        ping.headers.add(key="type", value="ping")
        self.ws.send(ping.SerializeToString())
        return self.frame()

    def close(self) -> None:
        self.ws.close()


def _endpoint(sandbox: FeishuSandbox, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = requests.post(
        f"{sandbox.url}/callback/ws/endpoint", json=CREDENTIALS if body is None else body, headers={"locale": "zh"}
    )
    assert response.status_code == 200
    answer: dict[str, Any] = response.json()
    return answer


def _control(sandbox: FeishuSandbox, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = requests.post(f"{sandbox.url}/_sandbox/{path}", json=body or {})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _until(check: Callable[[], bool]) -> None:
    """Wait for the sandbox's event loop to catch up with something the client already sent."""
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline, "the sandbox never got there"
        time.sleep(0.01)


Start = Callable[..., FeishuSandbox]


@pytest.fixture
def start() -> Iterator[Start]:
    started: list[FeishuSandbox] = []

    def make(**options: Any) -> FeishuSandbox:
        options.setdefault("redeliver_after", NEVER)
        accounts = [Account(RICH, 1200, {"CNY": Decimal("3000.00")}), Account(EMPTY)]
        sandbox = FeishuSandbox(accounts, rate_limits=False, **options).start()
        started.append(sandbox)
        return sandbox

    yield make
    for sandbox in started:  # closes the listeners' connections too
        sandbox.stop()


# -- the endpoint -----------------------------------------------------------------------------


def test_the_endpoint_hands_out_a_websocket_url_and_the_client_config(start: Start) -> None:
    sandbox = start(client_config={"PingInterval": 3, "ReconnectInterval": 2})
    answer = _endpoint(sandbox)

    assert answer["code"] == 0
    url = urlsplit(answer["data"]["URL"])
    query = parse_qs(url.query)
    assert (url.scheme, url.hostname, url.path) == ("ws", "127.0.0.1", "/ws")
    assert f"ws://{url.netloc}" == sandbox.ws_url and url.port != urlsplit(sandbox.url).port
    assert query["device_id"][0] and query["service_id"][0].isdigit()
    assert answer["data"]["ClientConfig"] == {
        "ReconnectCount": -1,
        "ReconnectInterval": 2,
        "ReconnectNonce": 30,
        "PingInterval": 3,
    }
    assert _endpoint(sandbox)["data"]["URL"] != answer["data"]["URL"]  # a device_id per call
    assert sandbox.state()["long_connection"]["endpoints"] == 2


@pytest.mark.parametrize(
    "body",
    [
        {"AppID": DEFAULT_APP_ID, "AppSecret": "wrong"},
        {"AppID": "cli_someone_else", "AppSecret": DEFAULT_APP_SECRET},
        {"app_id": DEFAULT_APP_ID, "app_secret": DEFAULT_APP_SECRET},  # the token endpoint's spelling
    ],
)
def test_wrong_credentials_get_514_and_no_url(start: Start, body: dict[str, str]) -> None:
    answer = _endpoint(start(), body)

    assert answer["code"] == 514 and "data" not in answer
    assert DEFAULT_APP_SECRET not in json.dumps(answer)


def test_a_store_app_is_refused_the_long_connection(start: Start) -> None:
    assert _endpoint(start(app_type="isv"))["code"] == 403


def test_only_a_url_the_endpoint_handed_out_opens_a_connection(start: Start) -> None:
    sandbox = start()
    good = urlsplit(_endpoint(sandbox)["data"]["URL"])
    service_id = parse_qs(good.query)["service_id"][0]
    made_up = f"{sandbox.ws_url}/ws?device_id=0123456789abcdef&service_id={service_id}"

    with pytest.raises(InvalidStatus) as refused:
        connect(made_up, open_timeout=5)

    response = refused.value.response
    assert response.status_code == 403
    assert response.headers["handshake-status"] == "514" and response.headers["handshake-msg"]
    assert sandbox.state()["long_connection"]["connections"] == 0


@pytest.mark.parametrize(("kind", "code"), [("busy", 1), ("connection_limit", 1000040350)])
def test_a_fault_refuses_the_endpoint_once(start: Start, kind: str, code: int) -> None:
    sandbox = start()
    _control(sandbox, "faults", {"kind": kind, "endpoint": "ws_endpoint"})

    assert _endpoint(sandbox)["code"] == code
    assert _endpoint(sandbox)["code"] == 0


# -- events -----------------------------------------------------------------------------------


def test_a_credit_sends_the_assets_update_event_with_exact_amounts(start: Start) -> None:
    sandbox = start()
    listener = Listener(sandbox)

    sandbox.credit(RICH, 5, {"CNY": Decimal("0.10")})
    frame, event = listener.event()

    headers = _headers(frame)
    assert headers["sum"] == "1" and headers["seq"] == "0" and headers["message_id"] and headers["trace_id"]
    assert frame.service == listener.service_id
    assert b'"amount": 3000.10' in frame.payload  # a bare two-place number, as Feishu sends money
    assert event["schema"] == "2.0"
    header = event["header"]
    assert re.fullmatch(r"[0-9a-f]{32}", header["event_id"]) and re.fullmatch(r"[0-9]{13}", header["create_time"])
    assert {k: header[k] for k in ("event_type", "app_id", "tenant_key", "token")} == {
        "event_type": ASSETS_UPDATE,
        "app_id": DEFAULT_APP_ID,
        "tenant_key": DEFAULT_TENANT_KEY,
        "token": DEFAULT_VERIFICATION_TOKEN,
    }
    assert event["event"]["account_id"] == RICH
    assert event["event"]["assets"] == {
        "confirmed_bonus": {"point_bonus": 1205, "cash_bonus": [{"currency_type": "CNY", "amount": Decimal("3000.10")}]}
    }
    assert re.fullmatch(r"[0-9]{13}", event["event"]["modify_time"])
    _until(lambda: sandbox.state()["events"][header["event_id"]]["acked"])
    assert sandbox.state()["events"] == {
        header["event_id"]: {"event_type": ASSETS_UPDATE, "delivered": 1, "acked": True, "acks": 1}
    }


def test_a_credit_over_http_sends_the_event_too(start: Start) -> None:
    sandbox = start()
    listener = Listener(sandbox)

    _control(sandbox, "credit", {"account_id": EMPTY, "cash_bonus": [{"currency_type": "USD", "amount": "0.20"}]})

    assets = listener.event()[1]["event"]["assets"]["confirmed_bonus"]
    assert assets == {"point_bonus": 0, "cash_bonus": [{"currency_type": "USD", "amount": Decimal("0.20")}]}


def test_a_withdrawal_that_moved_money_sends_the_new_zero_balance(start: Start) -> None:
    sandbox = start()
    listener = Listener(sandbox)
    token = requests.post(
        f"{sandbox.url}/open-apis/auth/v3/tenant_access_token/internal",
        json={"app_id": DEFAULT_APP_ID, "app_secret": DEFAULT_APP_SECRET},
    ).json()["tenant_access_token"]

    def withdraw(account_id: str, order: str) -> int:
        response = requests.post(
            f"{sandbox.url}/open-apis/hire/v1/referral_account/{account_id}/withdraw",
            json={"withdraw_bonus_type": [1, 2], "external_order_id": order},
            headers={"Authorization": f"Bearer {token}"},
        )
        code: int = response.json()["code"]
        return code

    assert withdraw(EMPTY, "9000000000000000001") == 0  # nothing moved: no event
    assert withdraw(RICH, "9000000000000000002") == 0
    assert withdraw(RICH, "9000000000000000002") == 0  # a replay moves nothing: no event

    event = listener.event()[1]["event"]
    assert event["account_id"] == RICH
    assert event["assets"] == {"confirmed_bonus": {"point_bonus": 0, "cash_bonus": []}}
    assert len(sandbox.state()["events"]) == 1


def test_a_credit_of_nothing_changes_no_balance_and_sends_nothing(start: Start) -> None:
    sandbox = start()
    sandbox.credit(RICH, 0, {"CNY": "0.00"})

    assert sandbox.state()["events"] == {}


def test_events_raised_while_nobody_listens_wait_for_a_client(start: Start) -> None:
    sandbox = start()
    sandbox.credit(RICH, 1)
    sandbox.credit(EMPTY, 2)

    listener = Listener(sandbox)

    assert {listener.event()[1]["event"]["account_id"] for _ in range(2)} == {RICH, EMPTY}


def test_an_acknowledged_event_is_not_delivered_again(start: Start) -> None:
    sandbox = start(redeliver_after=QUICK)
    listener = Listener(sandbox)
    sandbox.credit(RICH, 1)
    event_id = listener.event()[1]["header"]["event_id"]
    _until(lambda: sandbox.state()["events"][event_id]["acked"])

    time.sleep(3 * QUICK)  # past the redelivery delay
    sentinel = sandbox.emit_event()

    assert listener.event()[1]["header"]["event_id"] == sentinel
    assert sandbox.state()["events"][event_id] == {
        "event_type": ASSETS_UPDATE,
        "delivered": 1,
        "acked": True,
        "acks": 1,
    }


def test_an_unacknowledged_event_is_delivered_again_under_a_new_message_id(start: Start) -> None:
    sandbox = start(redeliver_after=QUICK)
    listener = Listener(sandbox)
    sandbox.credit(RICH, 1)

    first, event = listener.event(ack=False)
    again, repeated = listener.event(ack=False)
    failed, _ = listener.event(ack=False)
    listener.ack(failed, code=500)  # an answer that is not 200 acknowledges nothing
    last, _ = listener.event()

    assert repeated == event
    assert len({_headers(f)["message_id"] for f in (first, again, failed, last)}) == 4
    event_id = event["header"]["event_id"]
    _until(lambda: sandbox.state()["events"][event_id]["acked"])
    assert sandbox.state()["events"][event_id]["delivered"] == 4


def test_an_event_left_unacknowledged_comes_again_on_the_next_connection(start: Start) -> None:
    sandbox = start()  # no redelivery by timer: only the reconnection brings it back
    listener = Listener(sandbox)
    sandbox.credit(RICH, 1)
    event_id = listener.event(ack=False)[1]["header"]["event_id"]
    listener.close()

    again = Listener(sandbox)

    assert again.event()[1]["header"]["event_id"] == event_id
    again.close()


def test_another_event_type_can_be_emitted_for_clients_to_ignore(start: Start) -> None:
    sandbox = start()
    listener = Listener(sandbox)

    answer = _control(sandbox, "events/emit", {"event_type": "im.message.receive_v1"})
    event = listener.event()[1]

    assert event["header"]["event_id"] == answer["data"]["event_id"]
    assert event["header"]["event_type"] == "im.message.receive_v1"
    assert "account_id" not in event["event"]


# -- ping and pong ----------------------------------------------------------------------------


def test_a_ping_gets_a_pong_which_carries_a_changed_client_config_once(start: Start) -> None:
    sandbox = start()
    listener = Listener(sandbox)

    plain = listener.ping()
    changed = _control(sandbox, "events/client_config", {"PingInterval": 7})["data"]
    news = listener.ping()
    again = listener.ping()

    assert (plain.method, _headers(plain)["type"], plain.HasField("payload")) == (0, "pong", False)
    assert json.loads(news.payload) == changed == {**changed, "PingInterval": 7}
    assert not again.HasField("payload")
    assert sandbox.state()["long_connection"]["pings"] == 3


# -- faults -----------------------------------------------------------------------------------


def test_a_split_payload_reassembles_from_its_parts(start: Start) -> None:
    sandbox = start()
    listener = Listener(sandbox)
    sandbox.inject("split_event", endpoint="events", parts=3)
    sandbox.credit(RICH, 1)

    frames = [listener.frame() for _ in range(3)]

    headers = [_headers(f) for f in frames]
    assert [h["seq"] for h in headers] == ["0", "1", "2"] and {h["sum"] for h in headers} == {"3"}
    assert len({h["message_id"] for h in headers}) == 1
    event = json.loads(b"".join(f.payload for f in frames), parse_float=Decimal)
    assert event["event"]["account_id"] == RICH
    listener.ack(frames[-1])
    _until(lambda: sandbox.state()["events"][event["header"]["event_id"]]["acked"])


def test_a_duplicate_delivery_repeats_the_event_id(start: Start) -> None:
    sandbox = start()
    listener = Listener(sandbox)
    _control(sandbox, "faults", {"kind": "duplicate_event", "endpoint": "events"})
    sandbox.credit(RICH, 1)

    first, event = listener.event()
    second, same = listener.event()

    assert same == event and _headers(first)["message_id"] != _headers(second)["message_id"]
    event_id = event["header"]["event_id"]
    _until(lambda: sandbox.state()["events"][event_id]["acks"] == 2)
    assert sandbox.state()["events"][event_id]["delivered"] == 2


def test_a_dropped_connection_brings_the_event_back_on_reconnect(start: Start) -> None:
    sandbox = start()
    listener = Listener(sandbox)
    sandbox.inject("drop_connection", endpoint="events", after=1)  # the second event cuts the line
    sandbox.credit(RICH, 1)
    first = listener.event()[1]["header"]["event_id"]
    second = sandbox.emit_event()

    with pytest.raises(ConnectionClosed):
        while True:  # the second event may or may not arrive before the cut; no ack can go back
            listener.event(ack=False)

    again = Listener(sandbox)
    assert again.event()[1]["header"]["event_id"] == second
    _until(lambda: sandbox.state()["events"][second]["acked"])
    assert sandbox.state()["events"][second]["delivered"] == 2
    assert sandbox.state()["events"][first]["delivered"] == 1
    again.close()


def test_connections_can_be_dropped_on_demand(start: Start) -> None:
    sandbox = start()
    listener = Listener(sandbox)
    _until(lambda: sandbox.state()["long_connection"]["connected"] == 1)

    assert _control(sandbox, "events/drop")["data"] == {"dropped": 1}

    with pytest.raises(ConnectionClosed):
        listener.frame()
    _until(lambda: sandbox.state()["long_connection"]["connected"] == 0)


def test_an_ignored_ack_means_the_event_comes_again(start: Start) -> None:
    sandbox = start(redeliver_after=QUICK)
    listener = Listener(sandbox)
    sandbox.inject("ignore_ack", endpoint="events")
    sandbox.credit(RICH, 1)

    event = listener.event()[1]
    repeated = listener.event()[1]

    event_id = event["header"]["event_id"]
    assert repeated["header"]["event_id"] == event_id
    _until(lambda: sandbox.state()["events"][event_id]["acked"])
    assert sandbox.state()["events"][event_id] == {
        "event_type": ASSETS_UPDATE,
        "delivered": 2,
        "acked": True,
        "acks": 2,
    }


# -- a hostile server ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["not_json", "deep_json", "modify_time"])
def test_a_poison_event_is_delivered_again_until_acknowledged(start: Start, kind: str) -> None:
    sandbox = start(redeliver_after=QUICK)
    listener = Listener(sandbox)
    event_id = sandbox.long_connection.poison(kind)

    first = listener.frame()
    again = listener.frame()  # unanswered: it comes again, under a new message_id
    listener.ack(again)

    assert first.payload == again.payload and _headers(first)["message_id"] != _headers(again)["message_id"]
    if kind == "modify_time":
        body = json.loads(first.payload)
        assert body["header"]["event_id"] == event_id and body["event"]["modify_time"] == "²"
    else:
        with pytest.raises((ValueError, RecursionError)):
            json.loads(first.payload)
    _until(lambda: sandbox.state()["events"][event_id]["acked"])


@pytest.mark.parametrize(("kind", "headers"), [("bad_split", {"sum": "many"}), ("too_many_parts", {"sum": "1000000"})])
def test_a_poison_frame_carries_headers_no_client_can_use(start: Start, kind: str, headers: dict[str, str]) -> None:
    sandbox = start()
    listener = Listener(sandbox)
    event_id = sandbox.long_connection.poison(kind)

    frame = listener.frame()
    listener.ack(frame)

    assert _headers(frame).items() >= headers.items()
    _until(lambda: sandbox.state()["events"][event_id]["acked"])


def test_hostile_client_config_goes_out_unchecked_only_when_asked(start: Start) -> None:
    sandbox = start()
    with pytest.raises(ValueError, match="whole number"):
        sandbox.long_connection.configure({"PingInterval": 0.001})
    sandbox.long_connection.configure({"PingInterval": 0.001, "ReconnectInterval": -5}, hostile=True)

    config = _endpoint(sandbox)["data"]["ClientConfig"]

    assert (config["PingInterval"], config["ReconnectInterval"]) == (0.001, -5)


@pytest.mark.parametrize(("kind", "parses"), [("garbage", False), ("parts", True), ("oversize", True)])
def test_a_flood_sends_frames_of_the_size_asked(start: Start, kind: str, parses: bool) -> None:
    sandbox = start()
    listener = Listener(sandbox)

    assert sandbox.long_connection.flood(kind, 3, 1000) == 3

    messages = [listener.ws.recv(timeout=5) for _ in range(3)]
    assert all(isinstance(m, bytes) and len(m) >= 1000 for m in messages)
    if parses:
        frames = [PbFrame.FromString(m) for m in messages]
        assert len({_headers(f)["message_id"] for f in frames}) == 3
        assert {_headers(f)["sum"] for f in frames} == {"2" if kind == "parts" else "1"}
    else:
        with pytest.raises(DecodeError):
            PbFrame.FromString(messages[0])
    assert sandbox.state()["long_connection"]["flooded"] == 3


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "split_event", "endpoint": "withdraw"},
        {"kind": "http_500", "endpoint": "events"},
        {"kind": "busy", "endpoint": "any"},
        {"kind": "split_event", "endpoint": "events", "parts": 1},
        {"kind": "duplicate_event", "endpoint": "events", "parts": 2},
        {"kind": "drop_connection", "endpoint": "events", "after": -1},
    ],
)
def test_a_fault_that_cannot_apply_is_refused(start: Start, fault: dict[str, Any]) -> None:
    sandbox = start()
    response = requests.post(f"{sandbox.url}/_sandbox/faults", json=fault)

    assert response.status_code == 400 and response.json()["code"] == 1002002
    assert sandbox.faults == []


# -- the frame codec --------------------------------------------------------------------------


def test_the_sandbox_codec_and_protobuf_read_each_other() -> None:
    ours = Frame(
        seq_id=2**64 - 1,
        log_id=7,
        service=-5,
        method=1,
        headers=[("type", "event"), ("message_id", "m1"), ("名", "值")],
        payload=b'{"code": 200}',
        log_id_new="trace",
    )
    theirs = PbFrame()
    theirs.ParseFromString(encode_frame(ours))
    assert (theirs.SeqID, theirs.LogID, theirs.service, theirs.method) == (2**64 - 1, 7, -5, 1)
    assert [(h.key, h.value) for h in theirs.headers] == ours.headers
    assert (theirs.payload, theirs.LogIDNew, theirs.HasField("payload_type")) == (ours.payload, "trace", False)

    theirs.payload_type = "json"
    assert decode_frame(theirs.SerializeToString()) == Frame(**{**vars(ours), "payload_type": "json"})
    assert decode_frame(PbFrame(SeqID=0, LogID=0, service=0, method=0).SerializeToString()) == Frame()


def test_a_frame_without_its_required_fields_is_not_a_frame() -> None:
    partial = PbFrame(SeqID=1, LogID=1, service=1)  # no method
    with pytest.raises(ValueError, match="method"):
        decode_frame(partial.SerializePartialToString())
    with pytest.raises(ValueError):
        decode_frame(b"\x08")  # a key with no value


def test_an_undecodable_frame_is_counted_and_acknowledges_nothing(start: Start) -> None:
    sandbox = start()
    listener = Listener(sandbox)
    sandbox.credit(RICH, 1)
    frame, event = listener.event(ack=False)
    incomplete = PbFrame()
    incomplete.CopyFrom(frame)
    incomplete.ClearField("method")
    incomplete.payload = b'{"code": 200}'

    listener.ws.send(incomplete.SerializePartialToString())

    _until(lambda: sandbox.state()["long_connection"]["bad_frames"] == 1)
    assert not sandbox.state()["events"][event["header"]["event_id"]]["acked"]


# -- the command line -------------------------------------------------------------------------


def test_the_command_line_sandbox_serves_the_long_connection() -> None:
    command = [sys.executable, "-m", "airflow_provider_feishu_hire.sandbox", "--port", "0", "--redeliver-after", "1"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        banner = server.stdout.readline() if server.stdout else ""
        found = re.search(r"on (http://\S+) .*long connection on (ws://[^)\s]+)", banner)
        assert found, banner
        url = found.group(1)
        answer = requests.post(f"{url}/callback/ws/endpoint", json=CREDENTIALS).json()
        assert answer["data"]["URL"].startswith(found.group(2) + "/ws?")
        with connect(answer["data"]["URL"], open_timeout=5) as ws:
            requests.post(f"{url}/_sandbox/credit", json={"account_id": "7001000000000000001", "point_bonus": 1})
            frame = PbFrame()
            frame.ParseFromString(ws.recv(timeout=5))
        assert json.loads(frame.payload)["event"]["account_id"] == "7001000000000000001"
    finally:
        server.terminate()
        server.wait(timeout=5)
