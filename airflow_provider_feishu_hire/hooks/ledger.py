"""The Airflow side of the payout ledger: a connection id in, a migrated :class:`Ledger` out.

The ledger lives in a database Airflow users already run, through an SQLAlchemy engine made
from the connection: PostgreSQL by common-sql's ``DbApiHook.get_sqlalchemy_engine()``
(``apache-airflow-providers-postgres``, the ``[postgres]`` extra); MySQL/MariaDB (conn type
``mysql``) with PyMySQL (the ``[mysql]`` extra: pure Python, no compiler, unlike the
``mysqlclient`` that ``apache-airflow-providers-mysql`` requires); SQLite (a file). Without
a ``feishu_hire_ledger`` connection it is an embedded SQLite file in ``$AIRFLOW_HOME``: zero
configuration on one machine, and refused where tasks run on several machines, since a
file per worker would split the one record of what was paid.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.providers.common.sql.hooks.sql import DbApiHook
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException
from sqlalchemy import URL, create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from airflow_provider_feishu_hire.ledger import DEFAULT_LEDGER_CONN_ID, Ledger, LedgerError

EMBEDDED_LEDGER_FILE = "feishu_hire_ledger.db"
# Executors whose tasks run on other machines, each with its own $AIRFLOW_HOME.
DISTRIBUTED_EXECUTORS = ("CeleryExecutor", "KubernetesExecutor", "EdgeExecutor", "CeleryKubernetesExecutor")
MYSQL_CONN_TYPES = ("mysql", "mariadb")


def sqlite_engine(path: str | os.PathLike[str]) -> Engine:
    """An SQLite file's engine: a connection per transaction (the ledger's pragmas are set on each)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return create_engine(URL.create("sqlite", database=str(path)), poolclass=NullPool)


class FeishuHireLedgerHook(BaseHook):
    """The payout ledger behind the ``feishu_hire_ledger`` connection (any common-sql database).

    Supported and tested: PostgreSQL (conn type ``postgres``) and MySQL/MariaDB (conn type
    ``mysql``), for deployments with several workers; SQLite (conn type ``sqlite``, host = the
    file's path). With no such connection, ``$AIRFLOW_HOME/feishu_hire_ledger.db``.
    """

    conn_name_attr = "ledger_conn_id"
    default_conn_name = DEFAULT_LEDGER_CONN_ID
    hook_name = "Feishu Hire ledger"

    def __init__(self, ledger_conn_id: str = DEFAULT_LEDGER_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ledger_conn_id = ledger_conn_id

    @cached_property
    def sqlite_path(self) -> Path | None:
        """The SQLite file, when the ledger is one."""
        try:
            conn = self.get_connection(self.ledger_conn_id)
        except AirflowNotFoundException:
            if self.ledger_conn_id != DEFAULT_LEDGER_CONN_ID:
                raise
            _refuse_sqlite_on_several_machines(
                f"No {DEFAULT_LEDGER_CONN_ID} connection, and the embedded SQLite ledger"
            )
            home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
            return Path(home) / EMBEDDED_LEDGER_FILE
        if conn.conn_type != "sqlite":
            return None
        if not conn.host or not conn.host.strip():
            raise LedgerError(f"connection {self.ledger_conn_id} (sqlite) needs the database file's path as host")
        _refuse_sqlite_on_several_machines(f"Connection {self.ledger_conn_id} is SQLite, which")
        return Path(conn.host)

    @cached_property
    def engine(self) -> Engine:
        """The ledger database's SQLAlchemy engine, made from the connection."""
        if self.sqlite_path is not None:
            return sqlite_engine(self.sqlite_path)
        conn = self.get_connection(self.ledger_conn_id)
        if conn.conn_type in MYSQL_CONN_TYPES:
            # PyMySQL: apache-airflow-providers-mysql would need mysqlclient, which needs a compiler.
            url = URL.create(
                "mysql+pymysql", username=conn.login or None, password=conn.password or None, host=conn.host,
                port=conn.port, database=conn.schema or None, query={"charset": "utf8mb4"},
            )  # fmt: skip
            return create_engine(url, max_overflow=-1, pool_pre_ping=True)
        hook = conn.get_hook()
        if not isinstance(hook, DbApiHook):
            raise LedgerError(f"connection {self.ledger_conn_id} ({conn.conn_type}) is not a SQL database")
        return hook.get_sqlalchemy_engine(engine_kwargs={"max_overflow": -1, "pool_pre_ping": True})

    @cached_property
    def dialect(self) -> str:
        return self.ledger.dialect

    @cached_property
    def default_payroll_dir(self) -> Path | None:
        """Beside an SQLite ledger; none for a server database, whose payroll table every worker reads."""
        return None if self.sqlite_path is None else self.sqlite_path.parent / "feishu_hire_payroll"

    def get_conn(self) -> Ledger:
        return self.ledger

    @cached_property
    def ledger(self) -> Ledger:
        """The ledger, its tables created or upgraded: one pooled connection per transaction."""
        made = Ledger(self.engine)
        made.migrate()
        return made

    def payroll_batch_rows(self, payroll_batch_id: int) -> list[tuple[Any, ...]]:
        """The payroll table's lines of one batch, as stored (how an import reads them): account, order,
        trans_time, bonus type, currency, amount (an exact Decimal)."""
        return list(self.ledger.payroll_batch_lines(payroll_batch_id))

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
            f"Point {DEFAULT_LEDGER_CONN_ID} at a database every worker reaches (PostgreSQL, MySQL), e.g. "
            "AIRFLOW_CONN_FEISHU_HIRE_LEDGER='postgresql://user:pass@host:5432/payouts'."
        )


def _configured_executor() -> str:
    try:
        from airflow.sdk import conf as sdk_conf
    except ImportError:  # Airflow releases whose SDK has no conf yet
        from airflow.configuration import conf

        return str(conf.get("core", "executor", fallback="") or "")
    return str(sdk_conf.get("core", "executor", fallback="") or "")
