"""Airflow 3.3's ack mode: Feishu's event is acknowledged only once Airflow has stored its asset event.

The trigger runs under Airflow's own ``SharedStreamManager``, driven as the triggerer's
``run_trigger`` drives it: each trigger event is bound to the raw event it came from, and
"stored" is the supervisor's persistence confirmation, given here when the test says so.
A stop without confirmation is a triggerer killed before the database had the event.
The sandbox's long connection is real; what it acknowledged is what Feishu would know.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

pytest.importorskip("airflow.triggers.shared_stream", reason="ack mode needs Airflow 3.3")

from airflow.configuration import conf
from airflow.triggers.shared_stream import SharedStreamManager

from airflow_provider_feishu_hire.sandbox import Account, FeishuSandbox
from airflow_provider_feishu_hire.triggers.events import (
    MAX_IN_FLIGHT,
    REJECTED_EVENTS_KEY,
    FeishuReferralAssetsTrigger,
)
from tests.conftest import connection_json
from tests.test_events import ACCOUNT, OTHER, QUICK, connected, events, wait_for


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[FeishuSandbox]:
    accounts = [Account(ACCOUNT), Account(OTHER)]
    with FeishuSandbox(accounts, rate_limits=False, redeliver_after=1.0, client_config=QUICK) as running:
        monkeypatch.setenv("AIRFLOW_CONN_FEISHU_HIRE_DEFAULT", connection_json(running.url))
        yield running


class StateStore:
    """An asset state store as Airflow 3.3 hands a watcher trigger (``aget``/``aset``), in memory."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    async def aget(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    async def aset(self, key: str, value: Any) -> None:
        self.values[key] = value


class Triggerer:
    """One triggerer process's part in ack mode: the manager, each watcher's task, the events not yet stored.

    ``watchers`` triggers of the same connection, as two assets watching one app would be.
    """

    def __init__(self, store: StateStore | None = None, watchers: int = 1) -> None:
        # As the triggerer builds it, from [triggerer] shared_stream_subscriber_queue_size.
        self.manager = SharedStreamManager(
            max_subscriber_queue=conf.getint("triggerer", "shared_stream_subscriber_queue_size")
        )
        self.unstored: list[tuple[int | None, dict[str, Any]]] = []  # (persist seq, payload)
        self.stored: list[dict[str, Any]] = []
        self.tasks = [asyncio.ensure_future(self._run(trigger_id, store)) for trigger_id in range(1, watchers + 1)]

    async def _run(self, trigger_id: int, store: StateStore | None) -> None:
        """What ``TriggerRunner.run_trigger`` does for a shared-stream trigger."""
        trigger = FeishuReferralAssetsTrigger()
        trigger.asset_state_store = store  # type: ignore[assignment]
        key = trigger.shared_stream_key()
        stream = self.manager.subscribe(trigger_id=trigger_id, trigger=trigger, key=key)
        events: AsyncIterator[Any] = trigger.filter_shared_stream(stream)
        async for event in events:
            seq = self.manager.bind_pending_event(trigger_id=trigger_id, key=key)  # no await in between, as there
            self.unstored.append((seq, event.payload))

    def store(self) -> list[dict[str, Any]]:
        """The supervisor wrote the events to the database and confirms them; returns them."""
        batch, self.unstored = self.unstored, []
        self.stored += [payload for _, payload in batch]
        self.manager.confirm_persisted(seq for seq, _ in batch if seq is not None)
        return [payload for _, payload in batch]

    async def kill(self) -> None:
        """Gone, with whatever was not stored: the long connection closes without another word."""
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.manager.stop_all()


def test_an_event_is_acknowledged_only_once_airflow_stored_it(sandbox: FeishuSandbox) -> None:
    async def scenario() -> None:
        triggerer = Triggerer()
        await wait_for(lambda: connected(sandbox))
        sandbox.credit(ACCOUNT, 10)
        await wait_for(lambda: triggerer.unstored)
        await asyncio.sleep(2.5)  # taken by the triggerer, redelivered meanwhile: still not acknowledged
        (payload,) = triggerer.store()
        assert events(sandbox)[payload["event_id"]]["acked"] is False
        await wait_for(lambda: events(sandbox)[payload["event_id"]]["acked"])
        assert triggerer.unstored == [] and payload["point_bonus"] == 10  # the redeliveries became no event
        await triggerer.kill()

    asyncio.run(scenario())


def test_a_triggerer_killed_before_the_event_was_stored_gets_it_again_after_a_restart(
    sandbox: FeishuSandbox,
) -> None:
    async def scenario() -> None:
        first = Triggerer()
        await wait_for(lambda: connected(sandbox))
        sandbox.credit(ACCOUNT, 10)
        await wait_for(lambda: first.unstored)
        ((_, lost),) = first.unstored
        await first.kill()  # the asset event never reached the database
        assert events(sandbox)[lost["event_id"]]["acked"] is False

        second = Triggerer()
        await wait_for(lambda: second.unstored)
        assert second.store() == [lost]  # the same event, whole
        await wait_for(lambda: events(sandbox)[lost["event_id"]]["acked"])
        await second.kill()

    asyncio.run(scenario())


def test_a_triggerer_killed_after_the_acknowledgement_does_not_get_the_event_again(sandbox: FeishuSandbox) -> None:
    async def scenario() -> None:
        first = Triggerer()
        await wait_for(lambda: connected(sandbox))
        sandbox.credit(ACCOUNT, 10)
        await wait_for(lambda: first.unstored)
        (paid,) = first.store()
        await wait_for(lambda: events(sandbox)[paid["event_id"]]["acked"])
        await first.kill()

        second = Triggerer()
        await wait_for(lambda: connected(sandbox))
        sandbox.credit(OTHER, 3)
        await wait_for(lambda: second.unstored)
        assert [p["referral_account_id"] for p in second.store()] == [OTHER]
        await second.kill()

    asyncio.run(scenario())


def test_a_repeat_of_a_stored_event_is_acknowledged_without_a_second_asset_event(sandbox: FeishuSandbox) -> None:
    async def scenario() -> None:
        triggerer = Triggerer()
        await wait_for(lambda: connected(sandbox))
        sandbox.inject("duplicate_event", endpoint="events")  # two copies at once, while the first is in flight
        sandbox.inject("ignore_ack", endpoint="events")  # and our acknowledgement lost: it comes a third time
        sandbox.credit(ACCOUNT, 10)
        await wait_for(lambda: triggerer.unstored)
        (payload,) = triggerer.store()
        event_id = payload["event_id"]
        await wait_for(lambda: events(sandbox)[event_id]["acked"])
        assert events(sandbox)[event_id]["delivered"] >= 3
        assert triggerer.unstored == [] and triggerer.stored == [payload]
        await triggerer.kill()

    asyncio.run(scenario())


def test_a_poison_event_goes_down_airflows_reject_path_is_kept_and_later_events_are_stored(
    sandbox: FeishuSandbox,
) -> None:
    store = StateStore()

    async def scenario() -> None:
        triggerer = Triggerer(store)
        await wait_for(lambda: connected(sandbox))
        poison = sandbox.long_connection.poison("modify_time")
        await wait_for(lambda: events(sandbox)[poison]["acked"])  # rejected: acknowledged, so never sent again
        assert triggerer.unstored == []
        sandbox.credit(ACCOUNT, 4)
        await wait_for(lambda: triggerer.unstored)
        assert [p["point_bonus"] for p in triggerer.store()] == [4]
        (kept,) = store.values[REJECTED_EVENTS_KEY]
        assert kept["event_id"] == poison and "modify_time" in kept["reason"]
        assert sandbox.state()["long_connection"]["connections"] == 1
        await triggerer.kill()

    asyncio.run(scenario())


@pytest.mark.parametrize("queue", [1024, 10])  # Airflow's default subscriber queue, and one below our window
def test_a_flood_of_events_waits_in_feishu_not_in_memory_and_every_one_is_stored(
    sandbox: FeishuSandbox, monkeypatch: pytest.MonkeyPatch, queue: int
) -> None:
    monkeypatch.setenv("AIRFLOW__TRIGGERER__SHARED_STREAM_SUBSCRIBER_QUEUE_SIZE", str(queue))
    window = min(MAX_IN_FLIGHT, queue)
    credits = 2 * window + 50

    async def scenario() -> None:
        triggerer = Triggerer()
        await wait_for(lambda: connected(sandbox))
        for n in range(credits):
            sandbox.credit(ACCOUNT if n % 2 else OTHER, 1)
        await wait_for(lambda: len(triggerer.unstored) == window)
        await asyncio.sleep(1.5)  # the database is slow: no more are taken, and the trigger does not fail
        assert len(triggerer.unstored) == window and not any(task.done() for task in triggerer.tasks)
        while len({p["event_id"] for p in triggerer.stored}) < credits:
            triggerer.store()
            await asyncio.sleep(0.1)
        await wait_for(lambda: all(e["acked"] for e in events(sandbox).values()))
        await triggerer.kill()

    asyncio.run(scenario())


def test_watchers_of_one_connection_share_its_long_connection_and_the_ack_waits_for_both(
    sandbox: FeishuSandbox,
) -> None:
    """Feishu gives each event to one connection: two connections would each miss half the events."""

    async def scenario() -> None:
        triggerer = Triggerer(watchers=2)
        await wait_for(lambda: connected(sandbox))
        sandbox.credit(ACCOUNT, 10)
        await wait_for(lambda: len(triggerer.unstored) == 2)  # one asset event per watcher
        first, second = triggerer.unstored
        triggerer.unstored = [first]
        triggerer.store()
        await asyncio.sleep(1.5)
        assert events(sandbox)[first[1]["event_id"]]["acked"] is False  # the other watcher's is not stored yet
        triggerer.unstored = [second]
        triggerer.store()
        await wait_for(lambda: events(sandbox)[first[1]["event_id"]]["acked"])
        assert sandbox.state()["long_connection"]["connections"] == 1
        await triggerer.kill()

    asyncio.run(scenario())
