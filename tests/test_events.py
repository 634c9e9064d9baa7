"""The event long connection against the sandbox's: frames, acknowledgements, repeats, reconnects, split payloads.

Client level: no Airflow processes. The sandbox's frame codec is written by hand and ours
uses google.protobuf, so the codec tests check two independent implementations against
each other; everything else goes over a real WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any, TypeVar

import pytest

from airflow_provider_feishu_hire.events import (
    ASSETS_UPDATE_EVENT,
    BadEvent,
    ClientConfig,
    Endpoint,
    EndpointError,
    Frame,
    LongConnection,
    ReferralAssetsUpdate,
    decode_frame,
    encode_frame,
    fetch_endpoint,
    latest_updates,
    parse_event,
)
from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_ID, DEFAULT_APP_SECRET, Account, FeishuSandbox
from airflow_provider_feishu_hire.sandbox import long_connection as sandbox_ws
from airflow_provider_feishu_hire.triggers.events import FeishuReferralAssetsTrigger
from tests.conftest import connection_json

ACCOUNT = "7300000000000000001"
OTHER = "7300000000000000002"
# Short settings, as the sandbox's endpoint and pongs hand them out.
QUICK = {"ReconnectInterval": 1, "ReconnectNonce": 1, "PingInterval": 1}
T = TypeVar("T")


@pytest.fixture
def sandbox() -> Iterator[FeishuSandbox]:
    accounts = [Account(ACCOUNT), Account(OTHER)]
    with FeishuSandbox(accounts, rate_limits=False, redeliver_after=1.0, client_config=QUICK) as running:
        yield running


def endpoint_of(sandbox: FeishuSandbox) -> Callable[[ClientConfig], Any]:
    async def endpoint(config: ClientConfig) -> Endpoint:
        return await asyncio.to_thread(fetch_endpoint, sandbox.url, DEFAULT_APP_ID, DEFAULT_APP_SECRET, config=config)

    return endpoint


async def wait_for(check: Callable[[], T], timeout: float = 20.0) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds (a hang, not a timing claim)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still {value!r} after {timeout}s")
        await asyncio.sleep(0.05)


async def next_of(updates: AsyncIterator[T], timeout: float = 20.0) -> T:
    return await asyncio.wait_for(updates.__anext__(), timeout)


async def stop(updates: Any, *pending: asyncio.Future[Any]) -> None:
    """Cancel what still waits for an event, then close the generator (and with it the connection)."""
    for future in pending:
        future.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await future
    await updates.aclose()


def events(sandbox: FeishuSandbox) -> dict[str, dict[str, Any]]:
    return dict(sandbox.state()["events"])


def connected(sandbox: FeishuSandbox) -> int:
    return int(sandbox.state()["long_connection"]["connected"])


# -- frames, both codecs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        Frame(
            seq_id=2**64 - 1,
            log_id=7,
            service=-5,
            method=1,
            headers=[("type", "event"), ("sum", "2"), ("seq", "1")],
            payload=b'{"code":200}',
            log_id_new="trace",
        ),
        Frame(service=123456, headers=[("type", "ping")]),
        Frame(method=1, headers=[("k", "值"), ("k", "second")], payload=bytes(range(256)), payload_type="json"),
    ],
)
def test_our_frames_and_the_sandboxs_decode_each_other(frame: Frame) -> None:
    theirs = sandbox_ws.decode_frame(encode_frame(frame))
    assert (theirs.seq_id, theirs.log_id, theirs.service, theirs.method, theirs.headers) == (
        frame.seq_id, frame.log_id, frame.service, frame.method, frame.headers,
    )  # fmt: skip
    assert (theirs.payload or b"") == frame.payload and (theirs.log_id_new or "") == frame.log_id_new
    back = sandbox_ws.Frame(
        frame.seq_id, frame.log_id, frame.service, frame.method, list(frame.headers),
        payload=frame.payload or None, payload_type=frame.payload_type or None, log_id_new=frame.log_id_new or None,
    )  # fmt: skip
    assert decode_frame(sandbox_ws.encode_frame(back)) == frame


def test_garbage_is_not_a_frame() -> None:
    with pytest.raises(ValueError, match=r"not a pbbp2\.Frame"):
        decode_frame(b"\xff\xff\xff")


# -- the event -------------------------------------------------------------------------------


def event_bytes(event: dict[str, Any], event_id: str = "e1") -> bytes:
    header = {"event_id": event_id, "event_type": ASSETS_UPDATE_EVENT}
    return json.dumps({"schema": "2.0", "header": header, "event": event}).encode()


def test_an_assets_update_is_read_exactly_and_survives_the_trigger_payload() -> None:
    raw = (
        b'{"schema":"2.0","header":{"event_id":"e9","event_type":"' + ASSETS_UPDATE_EVENT.encode() + b'"},'
        b'"event":{"account_id":"7147998241542539527","modify_time":"1685431415036","assets":{"confirmed_bonus":'
        b'{"point_bonus":100,"cash_bonus":[{"currency_type":"CNY","amount":100.10},{"currency_type":"USD","amount":3}]}}}}'
    )
    _, event_id, update = parse_event(raw)
    assert event_id == "e9" and update is not None
    assert update.cash_bonus == {"CNY": Decimal("100.10"), "USD": Decimal(3)}
    assert update.as_payload() == {
        "event_id": "e9",
        "referral_account_id": "7147998241542539527",
        "point_bonus": 100,
        "cash_bonus": {"CNY": "100.10", "USD": "3.00"},
        "modify_time": "1685431415036",
    }
    assert ReferralAssetsUpdate.from_payload(json.loads(json.dumps(update.as_payload()))) == update


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"account_id": "a/b", "assets": {}, "modify_time": "1"}, "account_id"),
        ({"account_id": "1", "assets": {}}, "modify_time"),
        ({"account_id": "1", "assets": {}, "modify_time": "²"}, "modify_time"),  # isdigit() yet not int()
        ({"account_id": "1", "assets": {}, "modify_time": "١٢"}, "modify_time"),  # int() reads it as 12
        ({"account_id": "1", "assets": {"confirmed_bonus": {"point_bonus": 1.5}}, "modify_time": "1"}, "point_bonus"),
        (
            {"account_id": "1", "modify_time": "1", "assets": {"confirmed_bonus": {"cash_bonus": [{"amount": 1}]}}},
            "cash_bonus",
        ),
        ({"account_id": "1", "modify_time": "1"}, "assets"),
    ],
)
def test_an_unreadable_assets_update_names_its_field(event: dict[str, Any], field: str) -> None:
    with pytest.raises(BadEvent, match=field) as caught:
        parse_event(event_bytes(event))
    assert caught.value.event_id == "e1"  # so the rejection is logged and kept under the event's id


def test_several_events_of_one_account_collapse_to_the_latest_by_modify_time() -> None:
    def update(event_id: str, account: str, points: int, modify_time: int) -> ReferralAssetsUpdate:
        return ReferralAssetsUpdate(event_id, account, points, {}, modify_time)

    late, early, other = update("b", ACCOUNT, 30, 200), update("a", ACCOUNT, 10, 100), update("c", OTHER, 0, 50)
    assert latest_updates([late, other, early]) == [late, other]  # out of order, as Feishu may deliver
    assert latest_updates([late, early, late]) == [late]
    assert [u.is_empty for u in latest_updates([late, other])] == [False, True]
    assert late.balance_key != update("x", ACCOUNT, 40, 200).balance_key  # two changes in one millisecond


# -- the endpoint ----------------------------------------------------------------------------


def test_the_endpoint_hands_out_a_url_and_client_config(sandbox: FeishuSandbox) -> None:
    endpoint = fetch_endpoint(sandbox.url, DEFAULT_APP_ID, DEFAULT_APP_SECRET)
    assert endpoint.service_id > 0
    assert endpoint.config == ClientConfig(reconnect_count=-1, reconnect_interval=1, reconnect_nonce=1, ping_interval=1)
    assert "device_id" not in repr(endpoint) and "device_id" not in endpoint.where  # the URL's ticket stays out


@pytest.mark.parametrize(
    ("setup", "code", "says"),
    [
        (lambda s: None, 514, "rejected the App ID or App Secret"),
        (lambda s: s.inject("busy", endpoint="ws_endpoint"), 1, "busy"),
        (lambda s: s.inject("connection_limit", endpoint="ws_endpoint"), 1000040350, "too many long connections"),
    ],
)
def test_endpoint_refusals_are_explained_without_the_secret(
    sandbox: FeishuSandbox, setup: Callable[[FeishuSandbox], None], code: int, says: str
) -> None:
    setup(sandbox)
    secret = "wrong-secret-value" if code == 514 else DEFAULT_APP_SECRET
    with pytest.raises(EndpointError, match=says) as caught:
        fetch_endpoint(sandbox.url, DEFAULT_APP_ID, secret)
    assert caught.value.code == code
    assert secret not in str(caught.value)


def test_a_store_app_is_refused_the_long_connection() -> None:
    with FeishuSandbox([], app_type="isv") as store_app, pytest.raises(EndpointError) as caught:
        fetch_endpoint(store_app.url, DEFAULT_APP_ID, DEFAULT_APP_SECRET)
    assert caught.value.code == 403 and "self-built" in str(caught.value)


def test_plain_ws_to_a_remote_host_is_refused() -> None:
    from airflow_provider_feishu_hire.events import check_ws_url

    with pytest.raises(EndpointError, match="in clear"):
        check_ws_url("ws://example.com/ws?device_id=1&service_id=2")


# -- over the WebSocket ----------------------------------------------------------------------


def test_a_credit_arrives_and_is_acknowledged_only_when_the_consumer_asks_for_more(sandbox: FeishuSandbox) -> None:
    async def scenario() -> None:
        updates = LongConnection(endpoint_of(sandbox)).updates()
        first = asyncio.ensure_future(next_of(updates))  # a generator dials when first asked
        await wait_for(lambda: connected(sandbox))
        sandbox.credit(ACCOUNT, 120, {"CNY": "88.80"})
        update = await first
        assert (update.referral_account_id, update.point_bonus, dict(update.cash_bonus)) == (
            ACCOUNT, 120, {"CNY": Decimal("88.80")},
        )  # fmt: skip
        assert events(sandbox)[update.event_id]["acked"] is False  # taken, not yet acknowledged
        asking = asyncio.ensure_future(next_of(updates))
        await wait_for(lambda: events(sandbox)[update.event_id]["acked"])
        assert events(sandbox)[update.event_id]["delivered"] == 1
        await stop(updates, asking)

    asyncio.run(scenario())


def test_other_event_types_are_acknowledged_and_skipped(sandbox: FeishuSandbox) -> None:
    async def scenario() -> None:
        updates = LongConnection(endpoint_of(sandbox)).updates()
        first = asyncio.ensure_future(next_of(updates))
        await wait_for(lambda: connected(sandbox))
        message_id = sandbox.emit_event()  # an im.message.receive_v1
        await wait_for(lambda: events(sandbox)[message_id]["acked"])
        sandbox.credit(OTHER, 5)
        assert (await first).referral_account_id == OTHER
        await stop(updates)

    asyncio.run(scenario())


def test_a_split_payload_is_joined_and_acknowledged_once(sandbox: FeishuSandbox) -> None:
    async def scenario() -> None:
        updates = LongConnection(endpoint_of(sandbox)).updates()
        first = asyncio.ensure_future(next_of(updates))
        await wait_for(lambda: connected(sandbox))
        sandbox.inject("split_event", endpoint="events", parts=3)
        sandbox.credit(ACCOUNT, 7, {"CNY": "1.25", "HKD": "2.50"})
        update = await first
        assert dict(update.cash_bonus) == {"CNY": Decimal("1.25"), "HKD": Decimal("2.50")}
        second = asyncio.ensure_future(next_of(updates))
        await wait_for(lambda: events(sandbox)[update.event_id]["acked"])
        assert events(sandbox)[update.event_id]["acks"] == 1
        assert sandbox.state()["long_connection"]["unknown_acks"] == 0
        await stop(updates, second)

    asyncio.run(scenario())


def test_pings_carry_the_service_id_and_a_pong_changes_the_settings(sandbox: FeishuSandbox) -> None:
    async def scenario() -> None:
        connection = LongConnection(endpoint_of(sandbox))
        updates = connection.updates()
        pending = asyncio.ensure_future(next_of(updates, timeout=60))
        await wait_for(lambda: connected(sandbox))
        sandbox.configure_client(ReconnectInterval=7)
        await wait_for(lambda: connection.config.reconnect_interval == 7)  # from a pong
        assert sandbox.state()["long_connection"]["bad_frames"] == 0
        await stop(updates, pending)

    asyncio.run(scenario())


def test_a_dropped_connection_is_dialled_again_and_the_unacknowledged_event_comes_again(
    sandbox: FeishuSandbox,
) -> None:
    async def scenario() -> None:
        connection = LongConnection(endpoint_of(sandbox))
        updates = connection.updates()
        first = asyncio.ensure_future(next_of(updates))
        await wait_for(lambda: connected(sandbox))
        sandbox.inject("drop_connection", endpoint="events")  # cut right after the event's frames went out
        sandbox.credit(ACCOUNT, 10)
        delivered = await first
        again = await next_of(updates)  # the acknowledgement could not arrive: delivered again, after a redial
        assert again.event_id == delivered.event_id and connection.connections == 2
        third = asyncio.ensure_future(next_of(updates))
        await wait_for(lambda: events(sandbox)[delivered.event_id]["acked"])
        sandbox.drop_connections()  # a plain network failure while idle
        await wait_for(lambda: connection.connections == 3 and connected(sandbox))
        sandbox.credit(OTHER, 3)
        assert (await third).referral_account_id == OTHER
        await stop(updates)

    asyncio.run(scenario())


def test_reconnects_follow_feishus_schedule_and_never_give_up(sandbox: FeishuSandbox) -> None:
    delays: list[tuple[float, float]] = []

    def random_delay(low: float, high: float) -> float:
        delays.append((low, high))
        return 0.0

    async def scenario() -> None:
        sandbox.inject("busy", endpoint="ws_endpoint", times=3)  # three refused dials before one succeeds
        config = ClientConfig(reconnect_count=1, reconnect_interval=0.1, reconnect_nonce=0.3, ping_interval=1)
        connection = LongConnection(endpoint_of(sandbox), config=config, random_delay=random_delay)
        updates = connection.updates()
        first = asyncio.ensure_future(next_of(updates))
        await wait_for(lambda: connected(sandbox))
        assert delays == [(0, 0.3)]  # a random delay up to ReconnectNonce, then every ReconnectInterval
        sandbox.credit(ACCOUNT, 1)
        assert (await first).point_bonus == 1
        await stop(updates)

    asyncio.run(scenario())


# -- the trigger -----------------------------------------------------------------------------


def test_the_trigger_yields_each_event_once_despite_repeats_and_keeps_secrets_out(
    sandbox: FeishuSandbox, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FEISHU_HIRE_DEFAULT", connection_json(sandbox.url))
    trigger = FeishuReferralAssetsTrigger()
    classpath, kwargs = trigger.serialize()
    assert kwargs == {"feishu_hire_conn_id": "feishu_hire_default", "remember": 1000}
    assert classpath == "airflow_provider_feishu_hire.triggers.events.FeishuReferralAssetsTrigger"

    async def scenario() -> list[dict[str, Any]]:
        run = trigger.run()
        first = asyncio.ensure_future(next_of(run))
        await wait_for(lambda: connected(sandbox))
        sandbox.inject("duplicate_event", endpoint="events")  # two message_ids, one event_id
        sandbox.inject("ignore_ack", endpoint="events", times=2)  # both answers lost: delivered a third time
        sandbox.credit(ACCOUNT, 50, {"CNY": "0.10"})
        payloads = [(await first).payload]
        following = asyncio.ensure_future(next_of(run, timeout=60))
        await wait_for(lambda: events(sandbox)[payloads[0]["event_id"]]["acked"])
        sandbox.credit(OTHER, 2)
        payloads.append((await following).payload)
        await stop(run)
        return payloads

    with caplog.at_level(logging.DEBUG):
        payloads = asyncio.run(scenario())
    assert [p["referral_account_id"] for p in payloads] == [ACCOUNT, OTHER]  # the repeats never became events
    assert payloads[0]["cash_bonus"] == {"CNY": "0.10"} and payloads[0]["point_bonus"] == 50
    assert events(sandbox)[payloads[0]["event_id"]]["delivered"] == 3  # twice at once, then again
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("websockets.server"))
    assert "Connected to Feishu's event long connection" in ours
    for secret in (DEFAULT_APP_SECRET, "device_id"):  # the URL's query is the connection's ticket
        assert secret not in ours
