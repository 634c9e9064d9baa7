"""The payout ledger: the one durable record of every withdrawal, in a SQL database every worker shares.

No Airflow here: a :class:`Ledger` is given an SQLAlchemy ``Engine`` (SQLite, PostgreSQL,
MySQL/MariaDB) and does the rest; ``hooks/ledger.py`` turns a connection id into one.

Why a database and not XCom or a file: Airflow's retries and clears move a task between
tries and machines, and a zombie try can run beside its own retry. Payment systems keep
idempotency keys and outcomes in one shared, transactional store for exactly this reason.

The package, one job a file, each read top to bottom:

- ``state_machine.py``: the statuses and the transition table (status × outcome → status);
- ``model.py``: the values the ledger takes and returns, and its errors;
- ``schema.py``: every table, once; ``migrations.py`` and ``revisions/``: Alembic upgrades;
- ``database.py``: the engine, transactions, and what each database spells its own way;
- ``leases.py``: run generations, task leases, the shared pace;
- ``withdrawals.py``: claims and outcomes (the state machine at work), and reads;
- ``settlements.py``: two people settle what automation cannot;
- ``payroll.py``: payroll batches; ``records.py``: previews, approvals, registrations, reconciliations.

The public API is what this module exports (``__all__``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine

from airflow_provider_feishu_hire.defaults import DEFAULT_LEDGER_CONN_ID
from airflow_provider_feishu_hire.ledger.database import DIALECTS, engine_for
from airflow_provider_feishu_hire.ledger.model import (
    APP_SCOPE,
    APPROVE,
    AUTO_APPROVED,
    DAG_SCOPE,
    NOT_REQUIRED,
    NOTHING_TO_PAY,
    PAYROLL_SCOPES,
    REJECT,
    RUN_SCOPE,
    Approval,
    Claim,
    Intent,
    Lease,
    LedgerError,
    LedgerRow,
    Mismatch,
    NeedsReview,
    OrderIdConflict,
    PayrollBatch,
    PayrollScope,
    Reconciliation,
    RecordedReconciliation,
    Settlement,
    Superseded,
    TaskTry,
    raw_json,
)
from airflow_provider_feishu_hire.ledger.records import Records
from airflow_provider_feishu_hire.ledger.schema import CONSOLE_INDEXES, PAYROLL_TABLE
from airflow_provider_feishu_hire.ledger.state_machine import (
    NEEDS_APPROVAL,
    OPEN_STATUSES,
    PAID,
    REJECTED,
    REVIEW,
    SENDING,
    SKIPPED,
    STATUSES,
    TRANSITIONS,
    UNSENT,
    UNSENT_STATUSES,
    Outcome,
)
from airflow_provider_feishu_hire.ledger.withdrawals import IN_FLIGHT_SECONDS


class Ledger(Records):
    """The ledger in one database. Safe to share between threads: each call takes its own connection.

    ``Ledger(engine)`` with an SQLAlchemy engine, or ``Ledger(connect, dialect)`` with a
    function that opens a DB-API connection (``sqlite3``, ``psycopg2``, ``pymysql``) and
    ``"sqlite"``, ``"postgresql"`` or ``"mysql"``. Every method is one short transaction,
    committed before it returns, so a process killed at any point leaves the ledger at a
    state some method produced. :meth:`migrate` creates or upgrades the tables first.
    """

    def __init__(
        self,
        bind: Engine | Callable[[], Any],
        dialect: str | None = None,
        *,
        in_flight_seconds: float = IN_FLIGHT_SECONDS,
    ) -> None:
        if isinstance(bind, Engine):
            super().__init__(bind)
        else:
            if dialect is None:
                raise LedgerError(f"say which database connect() opens: one of {', '.join(DIALECTS)}")
            super().__init__(engine_for(bind, dialect), connect=bind)
        self.in_flight_seconds = in_flight_seconds

    def migrate(self) -> None:
        """Create the tables or upgrade them (Alembic); refuse a ledger written by a newer provider ("upgrade")."""
        from airflow_provider_feishu_hire.ledger.migrations import migrate  # Alembic only where a task opens one

        migrate(self)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "APPROVE", "APP_SCOPE", "AUTO_APPROVED", "CONSOLE_INDEXES", "DAG_SCOPE", "DEFAULT_LEDGER_CONN_ID",
    "IN_FLIGHT_SECONDS",
    "NEEDS_APPROVAL", "NOTHING_TO_PAY", "NOT_REQUIRED", "OPEN_STATUSES", "PAID", "PAYROLL_SCOPES", "PAYROLL_TABLE",
    "REJECT", "REJECTED", "REVIEW", "RUN_SCOPE", "SENDING", "SKIPPED", "STATUSES", "TRANSITIONS", "UNSENT",
    "UNSENT_STATUSES", "Approval", "Claim", "Intent", "Lease", "Ledger", "LedgerError", "LedgerRow", "Mismatch",
    "NeedsReview", "OrderIdConflict", "Outcome", "PayrollBatch", "PayrollScope", "Reconciliation",
    "RecordedReconciliation", "Settlement", "Superseded", "TaskTry", "raw_json",
]  # fmt: skip
