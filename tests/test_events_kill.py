"""A triggerer SIGKILLed around an acknowledgement loses no credit and pays none twice (Airflow 3.3's ack mode).

``airflow standalone`` runs the example event-payout DAG against the sandbox; its triggerer
is killed with SIGKILL right after Feishu's acknowledgement of an event, right before it
(the event handed to the triggerer, not yet acknowledged), and with a split event just
delivered, then started again. Every credited balance must be paid exactly once, by
Feishu's own ledger and by the payroll table; a poison event sent first is rejected once
and kept in the asset's state store. On Airflow 3.2 (no ack mode) a kill between
hand-over and storage loses the event until the sweep; this test is for 3.3.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

pytest.importorskip("airflow.triggers.shared_stream", reason="acknowledging after storage needs Airflow 3.3")

from airflow_provider_feishu_hire.sandbox import FeishuSandbox
from airflow_provider_feishu_hire.triggers.events import REJECTED_EVENTS_KEY
from tests.conftest import LocalAirflow, local_airflow, wait_for
from tests.test_event_dag import A, B, C, airflow_db, assert_each_payment_in_one_batch, sandbox, settled

# A killed triggerer's unacknowledged events are delivered again once it is back: the sandbox
# redelivers after 3 s, the trigger dials within ReconnectInterval + ReconnectNonce (1 s each
# here), and a run takes seconds. Two minutes allows for this shared two-core machine.
KILL_BOUND = 120

__all__ = ["sandbox"]  # the fixture: the same sandbox as the event DAG's own test


@pytest.fixture
def airflow(tmp_path: Path, sandbox: FeishuSandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalAirflow]:
    # A restarted triggerer takes over the dead one's triggers once its heartbeat is this old.
    monkeypatch.setenv("AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC", "1")
    monkeypatch.setenv("AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD", "4")
    with local_airflow(tmp_path, sandbox) as running:
        yield running


class Triggerers:
    """Kills the running triggerer (with its trigger runner) and starts another, as a crash and a restart would."""

    def __init__(self, local: LocalAirflow, log: Path) -> None:
        self.local, self.log = local, log
        self.started: list[subprocess.Popen[bytes]] = []

    def kill(self) -> None:
        mains = [p for p in psutil.process_iter(["cmdline"]) if self._is_triggerer(p)]
        assert mains, "no triggerer to kill"
        for process in mains:
            for victim in [process, *process.children(recursive=True)]:
                os.kill(victim.pid, signal.SIGKILL)

    def start(self) -> None:
        command = [sys.executable, "-m", "airflow", "triggerer"]
        with self.log.open("ab") as output:
            process = subprocess.Popen(
                command, env=self.local.env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started.append(process)

    def stop(self) -> None:
        for process in self.started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=60)

    def _is_triggerer(self, process: psutil.Process) -> bool:
        command = process.info["cmdline"] or []
        home = self.local.env["AIRFLOW_HOME"]
        try:
            ours = process.environ().get("AIRFLOW_HOME") == home
        except psutil.Error:
            return False
        return ours and "triggerer" in command and any("airflow" in part for part in command)


def kill_when(triggerers: Triggerers, sandbox: FeishuSandbox, check: Callable[[], bool], what: str) -> None:
    """SIGKILL the triggerer the moment ``check`` holds, start a new one, and wait until it holds the connection."""
    deadline = time.monotonic() + 120
    while not check():
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.005)
    dialled = sandbox.state()["long_connection"]["connections"]
    triggerers.kill()
    triggerers.start()
    # Until then the sandbox may still hand events to the dead connection, which is no test of the new one.
    wait_for(lambda: sandbox.state()["long_connection"]["connections"] > dialled, "the new triggerer connected")


def test_credits_are_paid_exactly_once_when_the_triggerer_is_killed_around_acknowledgements(
    sandbox: FeishuSandbox, airflow: LocalAirflow, tmp_path: Path
) -> None:
    def credit(account: str, points: int, cash: dict[str, str]) -> str:
        """Credit the account; returns the event the credit raised."""
        before = set(sandbox.state()["events"])
        sandbox.credit(account, points, cash)
        (event_id,) = set(sandbox.state()["events"]) - before
        return event_id

    def delivery(event_id: str) -> dict[str, Any]:
        return dict(sandbox.state()["events"][event_id])

    triggerers = Triggerers(airflow, tmp_path / "triggerers.log")
    try:
        wait_for(lambda: sandbox.state()["long_connection"]["connected"], "the triggerer holding the long connection")

        poison = sandbox.long_connection.poison("modify_time")  # rejected, kept, and no harm to what follows
        a = credit(A, 100, {"CNY": "10.50"})
        kill_when(triggerers, sandbox, lambda: delivery(a)["acked"], "acknowledged A's event")

        b = credit(B, 5, {"CNY": "0.01"})
        handed_over = lambda: delivery(b)["delivered"] and not delivery(b)["acked"]  # noqa: E731
        kill_when(triggerers, sandbox, handed_over, "delivered B's event, not yet acknowledged")

        sandbox.inject("split_event", endpoint="events", parts=3)
        c = credit(C, 7, {"HKD": "3.30"})
        kill_when(triggerers, sandbox, lambda: delivery(c)["delivered"], "sent C's split event")
        restarted = time.monotonic()

        wait_for(lambda: settled(sandbox, airflow), "every credit paid and every run finished", timeout=KILL_BOUND)
        print(f"Everything credited was paid {time.monotonic() - restarted:.0f} s after the last restart")
    finally:
        triggerers.stop()

    paid = Counter(e["referral_account_id"] for e in sandbox.state()["ledger"])
    assert paid == {A: 1, B: 1, C: 1}
    assert sandbox.state()["long_connection"]["connections"] >= 4  # each kill cost the connection
    assert delivery(b)["delivered"] >= 2  # unacknowledged at the kill: delivered again after the restart
    assert delivery(poison)["delivered"] == 1 and delivery(poison)["acked"]
    ((kept,),) = airflow_db(
        airflow,
        "SELECT s.value FROM asset_state_store s JOIN asset a ON a.id = s.asset_id WHERE a.name = ? AND s.key = ?",
        "feishu_referral_balances",
        REJECTED_EVENTS_KEY,
    )
    assert [r["event_id"] for r in json.loads(kept)] == [poison]
    assert_each_payment_in_one_batch(tmp_path / "ledger.db", sandbox)
