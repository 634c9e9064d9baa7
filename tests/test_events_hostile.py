"""A hostile or broken Feishu cannot hurt the triggerer: poison events, hostile settings, floods.

The sandbox plays the server over a real WebSocket. Each test asserts what a finance team
would notice: the connection is not dialled again and again, memory stays bounded, and a
genuine credit sent after the attack still arrives.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_feishu_hire.events import (
    PING_INTERVAL_RANGE,
    RECONNECT_INTERVAL_RANGE,
    RECONNECT_NONCE_RANGE,
    ClientConfig,
    LongConnection,
)
from airflow_provider_feishu_hire.sandbox import Account, FeishuSandbox
from tests.test_events import ACCOUNT, QUICK, connected, endpoint_of, events, next_of, stop, wait_for


@pytest.fixture
def sandbox() -> Iterator[FeishuSandbox]:
    with FeishuSandbox([Account(ACCOUNT)], rate_limits=False, redeliver_after=1.0, client_config=QUICK) as running:
        yield running


@pytest.mark.parametrize("kind", ["modify_time", "not_json", "deep_json", "bad_split", "too_many_parts"])
def test_a_poison_event_is_acknowledged_once_logged_once_kept_and_later_credits_arrive(
    sandbox: FeishuSandbox, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> LongConnection:
        connection = LongConnection(endpoint_of(sandbox))
        updates = connection.updates()
        first = asyncio.ensure_future(next_of(updates))
        await wait_for(lambda: connected(sandbox))
        poison = sandbox.long_connection.poison(kind)
        await wait_for(lambda: events(sandbox)[poison]["acked"])
        await asyncio.sleep(2.5)  # two redelivery periods: an unacknowledged poison would have come again
        sandbox.credit(ACCOUNT, 3, {"CNY": "0.30"})
        update = await first
        assert (update.point_bonus, dict(update.cash_bonus)) == (3, {"CNY": Decimal("0.30")})
        assert events(sandbox)[poison]["delivered"] == 1
        await stop(updates)
        return connection

    with caplog.at_level(logging.INFO, logger="airflow_provider_feishu_hire"):
        connection = asyncio.run(scenario())
    assert connection.connections == 1  # no reconnect loop
    (rejection,) = connection.rejected
    rejected_logs = [r for r in caplog.records if r.getMessage().startswith("Rejected")]
    assert len(rejected_logs) == 1
    if kind == "modify_time":  # the event could be read as far as its id: logged and kept under it
        poison_id = next(iter(events(sandbox)))
        assert rejection.event_id == poison_id and poison_id in rejected_logs[0].getMessage()
        assert "modify_time" in rejection.reason
    else:
        assert rejection.message_id is not None and rejection.message_id in rejected_logs[0].getMessage()


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"ReconnectInterval": 0, "ReconnectNonce": 0, "PingInterval": Decimal("0.001")}, (1.0, 0.0, 1.0)),
        ({"ReconnectInterval": -5, "ReconnectNonce": -1, "PingInterval": -1}, (1.0, 0.0, 1.0)),
        ({"ReconnectInterval": 10**12, "ReconnectNonce": 1e300, "PingInterval": Decimal("1e99999")}, (600, 600, 300)),
        ({"ReconnectInterval": math.nan, "ReconnectNonce": "5", "PingInterval": True}, (120, 30, 120)),  # ignored
        ({"ReconnectInterval": 7, "ReconnectNonce": 3, "PingInterval": 9}, (7, 3, 9)),  # sane values stand
    ],
)
def test_server_settings_are_clamped_to_their_ranges(answer: dict[str, Any], expected: tuple[float, ...]) -> None:
    config = ClientConfig().updated(answer)
    assert (config.reconnect_interval, config.reconnect_nonce, config.ping_interval) == expected
    for value, (low, high) in zip(
        expected, (RECONNECT_INTERVAL_RANGE, RECONNECT_NONCE_RANGE, PING_INTERVAL_RANGE), strict=True
    ):
        assert low <= value <= high


def test_hostile_settings_and_a_server_that_drops_every_connection_cost_one_dial_a_second_at_most(
    sandbox: FeishuSandbox,
) -> None:
    """ReconnectInterval/Nonce 0 and PingInterval 0.001 once meant 186,112 endpoint requests in a second."""
    sandbox.long_connection.configure(
        {"ReconnectInterval": 0, "ReconnectNonce": 0, "PingInterval": 0.001}, hostile=True
    )
    seconds = 4.0

    async def scenario() -> LongConnection:
        connection = LongConnection(endpoint_of(sandbox))
        updates = connection.updates()
        pending = asyncio.ensure_future(next_of(updates, timeout=60))
        await wait_for(lambda: connected(sandbox))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:  # every connection is cut as soon as it is up
            sandbox.drop_connections()
            await asyncio.sleep(0.02)
        await stop(updates, pending)
        return connection

    connection = asyncio.run(scenario())
    counts = sandbox.state()["long_connection"]
    assert connection.config.ping_interval == PING_INTERVAL_RANGE[0]
    assert counts["endpoints"] <= seconds + 2, counts  # one at the start, then at most one a second
    assert counts["pings"] <= counts["connections"] * 2, counts  # one when connected, at most one a second after


def test_hostile_settings_from_a_pong_are_clamped_and_the_connection_still_works(sandbox: FeishuSandbox) -> None:
    async def scenario() -> None:
        connection = LongConnection(endpoint_of(sandbox))
        updates = connection.updates()
        first = asyncio.ensure_future(next_of(updates))
        await wait_for(lambda: connected(sandbox))
        sandbox.long_connection.configure({"PingInterval": 0.001, "ReconnectInterval": "soon"}, hostile=True)
        await wait_for(lambda: sandbox.state()["long_connection"]["pings"] >= 3)  # the pong carrying it came
        pings = sandbox.state()["long_connection"]["pings"]
        await asyncio.sleep(2)
        assert sandbox.state()["long_connection"]["pings"] - pings <= 3  # ~one a second, not a thousand
        assert connection.config.ping_interval == PING_INTERVAL_RANGE[0]
        sandbox.credit(ACCOUNT, 1)
        assert (await first).point_bonus == 1
        assert connection.connections == 1
        await stop(updates)

    asyncio.run(scenario())


BOUND = 16 * 2**20
"""The flooded client's memory peak must stay under this: 4 MiB of unfinished split parts
(MAX_PARTIAL_BYTES) plus the WebSocket's buffers of a few 1 MiB frames; a literal, so
raising a cap in the code cannot raise it too."""

# The client runs in a process of its own, so tracemalloc measures it alone, not the sandbox.
CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys, tracemalloc
    from airflow_provider_feishu_hire.events import LongConnection, fetch_endpoint
    from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_ID, DEFAULT_APP_SECRET

    async def endpoint(config):
        return await asyncio.to_thread(fetch_endpoint, sys.argv[1], DEFAULT_APP_ID, DEFAULT_APP_SECRET, config=config)

    async def main():
        connection = LongConnection(endpoint)
        updates = connection.updates()
        first = asyncio.ensure_future(updates.__anext__())
        while not connection.connections:
            await asyncio.sleep(0.01)
        tracemalloc.start()
        print("connected", flush=True)
        update = await first
        _, peak = tracemalloc.get_traced_memory()
        print(json.dumps({"peak": peak, "points": update.point_bonus, "connections": connection.connections,
                          "rejected": len(connection.rejected)}), flush=True)

    asyncio.run(main())
    """
)


def test_a_flood_keeps_the_clients_memory_and_log_bounded_and_the_next_credit_arrives(
    sandbox: FeishuSandbox, tmp_path: Path
) -> None:
    """~190 MB of garbage frames and split parts that never finish; the client's peak stays near the caps."""
    log = tmp_path / "client.log"  # a file, not a pipe: nobody reads a pipe while the flood is sent
    with log.open("w") as stderr:
        client = subprocess.Popen(
            [sys.executable, "-c", CLIENT, sandbox.url], stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        try:
            assert client.stdout is not None
            assert client.stdout.readline().strip() == "connected"
            flooded = sandbox.long_connection.flood("parts", 2000, 64 * 1024)  # each the first of two parts
            flooded += sandbox.long_connection.flood("garbage", 1000, 64 * 1024)
            sandbox.credit(ACCOUNT, 42)
            out, _ = client.communicate(timeout=120)
        finally:
            client.kill()
    result = json.loads(out.strip().splitlines()[-1])
    print(f"flooded {flooded} frames; client's tracemalloc peak {result['peak'] / 2**20:.1f} MiB")
    assert flooded == 3000 and result["points"] == 42
    assert result["connections"] == 1  # the flood never cut the connection
    assert result["peak"] < BOUND, f"{result['peak']} bytes"
    lines = log.read_text().splitlines()
    assert 3 <= len(lines) <= 12, lines  # the 1st, 10th, 100th, ... dropped message and garbage frame


def test_an_oversized_frame_closes_one_connection_and_no_more(sandbox: FeishuSandbox) -> None:
    async def scenario() -> LongConnection:
        connection = LongConnection(endpoint_of(sandbox))
        updates = connection.updates()
        first = asyncio.ensure_future(next_of(updates))
        await wait_for(lambda: connected(sandbox))
        await asyncio.to_thread(sandbox.long_connection.flood, "oversize", 1, 2 * 2**20)
        await wait_for(lambda: connection.connections == 2)  # closed with 1009 before it was read, dialled again
        sandbox.credit(ACCOUNT, 5)
        assert (await first).point_bonus == 5
        await stop(updates)
        return connection

    assert asyncio.run(scenario()).connections == 2
