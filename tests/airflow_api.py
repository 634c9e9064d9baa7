"""Airflow's public REST API as a user drives it: log in, trigger, clear, delete, read states and asset events."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from tests.conftest import LocalAirflow, wait_for


class Api:
    """Airflow's public REST API, logged in as a user of the simple auth manager (by default LocalAirflow's admin)."""

    def __init__(self, local: LocalAirflow, login: tuple[str, str] | None = None) -> None:
        self.url = local.url
        username, password = login or local.login
        answer = self._send("POST", "/auth/token", {"username": username, "password": password}, None)
        self.token = answer["access_token"]

    def __call__(self, method: str, path: str, body: object = None) -> Any:
        return self._send(method, "/api/v2" + path, body, self.token)

    def _send(self, method: str, path: str, body: object, token: str | None) -> Any:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def try_get(self, path: str) -> Any:
        """The answer, or None while it is not there yet (404) or the api-server's SQLite is busy (500)."""
        try:
            return self("GET", path)
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 500):
                return None
            raise

    def retrying(self, method: str, path: str, body: object = None) -> Any:
        """A write the api-server's busy SQLite may refuse (HTTP 500) before doing anything: sent until it is taken."""
        for _ in range(10):
            try:
                return self(method, path, body)
            except urllib.error.HTTPError as exc:
                if exc.code != 500:
                    raise
        raise AssertionError(f"{method} {path} kept failing")

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any]) -> str:
        """Start a run under a chosen id, so a retry after a lost answer cannot start two."""
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf}
        for _ in range(5):
            try:
                return str(self("POST", f"/dags/{dag_id}/dagRuns", body)["dag_run_id"])
            except urllib.error.HTTPError as exc:
                if exc.code == 409:
                    return run_id
                if exc.code != 500:
                    raise
        raise AssertionError(f"could not start {run_id}")

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        """The run's final state, or None while it is not finished."""
        state = (self.try_get(f"/dags/{dag_id}/dagRuns/{run_id}") or {}).get("state")
        return state if state in ("success", "failed") else None

    def finished(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        return str(wait_for(lambda: self.run_state(dag_id, run_id), f"run {run_id} to finish", timeout=timeout))

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """Each task's state in a run (a mapped task's: the first instance's)."""
        found: dict[str, str | None] = {}
        for ti in self("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]:
            found.setdefault(ti["task_id"], ti["state"])
        return found

    def task_log(self, dag_id: str, run_id: str, task_id: str) -> str:
        """The task's log of its latest try, as the UI's log view shows it."""
        ti = self("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
        log = self("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{ti['try_number']}")
        return json.dumps(log["content"])

    def asset_events(self, uri: str) -> list[dict[str, Any]]:
        """Every event of the asset named ``uri``, oldest first."""
        assets = self.try_get(f"/assets?uri_pattern={uri}") or {"assets": []}
        (asset,) = [a for a in assets["assets"] if a["uri"] == uri]
        found = self.try_get(f"/assets/events?asset_id={asset['id']}&order_by=timestamp&limit=100") or {}
        return list(found.get("asset_events", []))

    def decide(self, dag_id: str, run_id: str, option: str, task_id: str = "approve_payout") -> dict[str, Any]:
        """Answer the approval as a person would, and again if Airflow asks again; return what it showed.

        Airflow 3.3.2 can lose an answer given while the scheduler is still settling the parked
        task (its resumed process is told to stop, and the retry asks again). Money never moves
        on a lost answer: only an answer that reaches the task lets the withdrawals run. A
        person sees the new request and answers it; so does this test, at most three times.
        """
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails"
        ti = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        waiting = ("awaiting_input", "deferred")  # Airflow 3.3 parks the task; 3.2 defers it to the triggerer

        def pending() -> dict[str, Any] | None:
            detail = self.try_get(path)
            state = (self.try_get(ti) or {}).get("state")
            return detail if detail and not detail["response_received"] and state in waiting else None

        def answered_or_asked_again() -> str | None:
            state = (self.try_get(ti) or {}).get("state")
            if state in ("success", "skipped", "failed", "upstream_failed"):
                return "answered"
            return "asked again" if pending() else None

        shown = None
        for _ in range(3):
            asked = wait_for(pending, "the approval to ask a person", timeout=300)
            shown = shown or dict(asked)
            time.sleep(2)  # reading the totals
            self("PATCH", path, {"chosen_options": [option], "params_input": {}})
            if wait_for(answered_or_asked_again, "the approval to take the answer", timeout=300) == "answered":
                return shown
        raise AssertionError(f"Airflow lost every answer to the approval of {run_id}")
