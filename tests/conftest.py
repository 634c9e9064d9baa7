"""Shared fixtures: an in-process Feishu sandbox over real HTTP, and an isolated Airflow home."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before anything imports Airflow: never touch the developer's ~/airflow.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="feishu-hire-tests-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"

from airflow_provider_feishu_hire.client import FeishuClient, RetryPolicy  # noqa: E402
from airflow_provider_feishu_hire.sandbox import (  # noqa: E402
    DEFAULT_APP_ID,
    DEFAULT_APP_SECRET,
    FeishuSandbox,
)

ROOT = Path(__file__).resolve().parent.parent
FAST_RETRY = RetryPolicy(max_attempts=5, backoff_base=0.01, backoff_max=0.05, budget=20)


def pytest_sessionfinish() -> None:
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)


@pytest.fixture
def sandbox() -> Iterator[FeishuSandbox]:
    with FeishuSandbox(rate_limits=False) as running:
        yield running


@pytest.fixture
def client(sandbox: FeishuSandbox) -> Iterator[FeishuClient]:
    with FeishuClient(DEFAULT_APP_ID, DEFAULT_APP_SECRET, sandbox.url, timeout=2, retry=FAST_RETRY) as made:
        yield made


def connection_json(url: str, **extra: object) -> str:
    """A ``feishu_hire`` connection in the JSON form of ``AIRFLOW_CONN_<ID>``."""
    return json.dumps(
        {
            "conn_type": "feishu_hire",
            "host": url,
            "login": DEFAULT_APP_ID,
            "password": DEFAULT_APP_SECRET,
            "extra": extra,
        }
    )


@pytest.fixture
def feishu_connection(sandbox: FeishuSandbox, monkeypatch: pytest.MonkeyPatch) -> FeishuSandbox:
    monkeypatch.setenv("AIRFLOW_CONN_FEISHU_HIRE_DEFAULT", connection_json(sandbox.url, retry_budget=20))
    return sandbox


class AirflowRunner:
    """Runs ``airflow dags test`` in a subprocess against a migrated SQLite metadata DB."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.dags = home / "dags"
        self.dags.mkdir()

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            **extra,
        }

    def airflow(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=600,
        )

    def add_dag(self, source: Path) -> None:
        shutil.copy(source, self.dags / source.name)

    def dags_test(self, dag_id: str, conf: dict[str, object], **env: str) -> subprocess.CompletedProcess[str]:
        return self.airflow("dags", "test", dag_id, "--conf", json.dumps(conf), **env)

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        import sqlite3

        with sqlite3.connect(self.home / "airflow.db") as db:
            return db.execute(sql, params).fetchall()


@pytest.fixture(scope="session")
def airflow_runner(tmp_path_factory: pytest.TempPathFactory) -> AirflowRunner:
    runner = AirflowRunner(tmp_path_factory.mktemp("airflow_home"))
    migrated = runner.airflow("db", "migrate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    return runner
