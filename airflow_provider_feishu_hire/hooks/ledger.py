"""The Airflow side of the payout ledger: a connection id in, a migrated :class:`Ledger` out.

The ledger lives in any database Airflow users already run, through common-sql's
``DbApiHook`` (PostgreSQL via ``apache-airflow-providers-postgres``; SQLite). Without a
``feishu_hire_ledger`` connection it is an embedded SQLite file in ``$AIRFLOW_HOME``: zero
configuration on one machine, and refused where tasks run on several machines, since a
file per worker would split the one record of what was paid.
"""

from __future__ import annotations

import os
import sqlite3
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.providers.common.sql.hooks.sql import DbApiHook
from airflow.sdk import BaseHook, Connection
from airflow.sdk.exceptions import AirflowNotFoundException

from airflow_provider_feishu_hire.ledger import DEFAULT_LEDGER_CONN_ID, Ledger, LedgerError

EMBEDDED_LEDGER_FILE = "feishu_hire_ledger.db"
# Executors whose tasks run on other machines, each with its own $AIRFLOW_HOME.
DISTRIBUTED_EXECUTORS = ("CeleryExecutor", "KubernetesExecutor", "EdgeExecutor", "CeleryKubernetesExecutor")
PAYROLL_TABLE = "feishu_hire_payroll"


class SqliteLedgerDbHook(DbApiHook):
    """A SQLite file as a ``DbApiHook``, so the embedded ledger needs no extra provider.

    Connections are opened in autocommit mode, shareable across threads (the ledger gives
    each thread its own anyway) and wait up to a minute for another writer's lock.
    """

    conn_name_attr = "sqlite_conn_id"
    default_conn_name = DEFAULT_LEDGER_CONN_ID
    conn_type = "sqlite"
    hook_name = "Feishu Hire ledger (SQLite)"
    _placeholder = "?"

    def __init__(self, path: str | os.PathLike[str], **kwargs: Any) -> None:
        self.path = str(path)
        connection = Connection(conn_id=DEFAULT_LEDGER_CONN_ID, conn_type="sqlite", host=self.path)
        super().__init__(connection=connection, **kwargs)

    @property
    def dialect_name(self) -> str:
        return "sqlite"

    def get_conn(self) -> sqlite3.Connection:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        return sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)


class FeishuHireLedgerHook(BaseHook):
    """The payout ledger behind the ``feishu_hire_ledger`` connection (any common-sql database).

    Supported and tested: PostgreSQL (conn type ``postgres``, for deployments with several
    workers) and SQLite (conn type ``sqlite``, host = the file's path). With no such
    connection, ``$AIRFLOW_HOME/feishu_hire_ledger.db``.
    """

    conn_name_attr = "ledger_conn_id"
    default_conn_name = DEFAULT_LEDGER_CONN_ID
    hook_name = "Feishu Hire ledger"

    def __init__(self, ledger_conn_id: str = DEFAULT_LEDGER_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ledger_conn_id = ledger_conn_id

    @cached_property
    def sql_hook(self) -> DbApiHook:
        try:
            conn = self.get_connection(self.ledger_conn_id)
        except AirflowNotFoundException:
            if self.ledger_conn_id != DEFAULT_LEDGER_CONN_ID:
                raise
            _refuse_sqlite_on_several_machines(
                f"No {DEFAULT_LEDGER_CONN_ID} connection, and the embedded SQLite ledger"
            )
            home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
            return SqliteLedgerDbHook(Path(home) / EMBEDDED_LEDGER_FILE)
        if conn.conn_type == "sqlite":
            if not conn.host or not conn.host.strip():
                raise LedgerError(f"connection {self.ledger_conn_id} (sqlite) needs the database file's path as host")
            _refuse_sqlite_on_several_machines(f"Connection {self.ledger_conn_id} is SQLite, which")
            return SqliteLedgerDbHook(conn.host)
        hook = conn.get_hook()
        if not isinstance(hook, DbApiHook):
            raise LedgerError(f"connection {self.ledger_conn_id} ({conn.conn_type}) is not a SQL database")
        return hook

    @cached_property
    def dialect(self) -> str:
        name = self.sql_hook.dialect_name
        return "postgresql" if name in ("postgres", "postgresql") else name

    @cached_property
    def default_payroll_dir(self) -> Path | None:
        """Beside an SQLite ledger; none for a server database, whose payroll table every worker reads."""
        sql_hook = self.sql_hook
        return Path(sql_hook.path).parent / "feishu_hire_payroll" if isinstance(sql_hook, SqliteLedgerDbHook) else None

    def get_conn(self) -> Ledger:
        return self.ledger

    @cached_property
    def ledger(self) -> Ledger:
        """The ledger, its tables created or checked: one DB-API connection per thread that uses it."""
        made = Ledger(self.sql_hook.get_conn, self.dialect)
        made.migrate()
        return made

    def payroll_batch_rows(self, payroll_batch_id: int) -> list[tuple[Any, ...]]:
        """The payroll table's lines of one batch, as stored, through common-sql (how an import reads them)."""
        return list(
            self.sql_hook.get_records(
                "SELECT referral_account_id, external_order_id, trans_time, bonus_type, currency, amount "
                f"FROM {PAYROLL_TABLE} WHERE payroll_batch_id = {self.sql_hook.placeholder} "
                "ORDER BY external_order_id, bonus_type, currency",
                parameters=(payroll_batch_id,),
            )
        )

    def close(self) -> None:
        if "ledger" in self.__dict__:
            self.ledger.close()


def _refuse_sqlite_on_several_machines(subject: str) -> None:
    """SQLite is one file on one machine: under an executor that spreads tasks over machines it splits the ledger."""
    executor = _configured_executor()
    distributed = [name for name in DISTRIBUTED_EXECUTORS if name in executor]
    if distributed:
        raise LedgerError(
            f"{subject} cannot be used with {distributed[0]}: each worker would keep its own file (SQLite's "
            "locking is not safe on network file systems either) and the record of what was paid would split. "
            f"Point {DEFAULT_LEDGER_CONN_ID} at a database every worker reaches (PostgreSQL), e.g. "
            "AIRFLOW_CONN_FEISHU_HIRE_LEDGER='postgresql://user:pass@host:5432/payouts'."
        )


def _configured_executor() -> str:
    try:
        from airflow.sdk import conf as sdk_conf
    except ImportError:  # Airflow releases whose SDK has no conf yet
        from airflow.configuration import conf

        return str(conf.get("core", "executor", fallback="") or "")
    return str(sdk_conf.get("core", "executor", fallback="") or "")
