"""The payout ledger: the one durable record of every withdrawal, in a SQL database every worker shares.

No Airflow here: a :class:`Ledger` is given a way to open DB-API connections (SQLite or
PostgreSQL) and does the rest. The Airflow side (``hooks/ledger.py``) turns a connection
id into that.

Why a database and not XCom or a file: Airflow's retries and clears move a task between
tries and machines, and a zombie try can run beside its own retry. Payment systems keep
idempotency keys and outcomes in one shared, transactional store for exactly this reason.

One row per ``external_order_id`` (unique: Feishu answers a repeated id with the first
withdrawal whatever account is in the path). Its ``status`` only moves forward:

- ``skipped``: a balance check found nothing to withdraw; nothing was sent under this id;
- ``sending``: written *before* a withdrawal goes out and kept until Feishu's answer is
  recorded; also after a transient failure, since Feishu may have committed. A row in
  this state is never settled by a zero balance, only by sending the same id again;
- ``paid``: Feishu's answer (``trans_time``, points, every cash currency). Final;
- ``rejected``: Feishu refused, and no send under this id can have moved money;
- ``review``: money may have moved but the ledger cannot say how much (an answer that
  does not parse, or a refusal after a send whose outcome is unknown). Final for
  automation: a person settles it, nothing is re-sent.

Every send also appends a row to the attempt table (order id, DAG, run, task, map index,
try number, times, outcome), so the ledger shows who sent what when. Rows are never
deleted. Money is decimal text in SQLite and ``NUMERIC`` in PostgreSQL, never a float.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from airflow_provider_feishu_hire.withdrawal import Withdrawal, format_money, trans_time_iso

SKIPPED, SENDING, PAID, REJECTED, REVIEW = "skipped", "sending", "paid", "rejected", "review"
NEEDS_APPROVAL = "needs_approval"  # nothing sent: the balance is more than the run's approval covers
# Approval decisions: a person's two, a run that turned approval off, a preview that found nothing to pay.
APPROVE, REJECT, NOT_REQUIRED, NOTHING_TO_PAY = "Approve", "Reject", "not required", "nothing to pay"
AUTO_APPROVED = "auto-approved"  # one account's balance within the DAG's auto_approve_up_to policy
UNSENT = "unsent"  # an attempt's outcome only: refused before it reached Feishu (429, token)
OPEN_STATUSES = (SENDING, REVIEW)  # money may have moved and payroll cannot show it yet
# No send of the order id can have moved money: never sent, or every send refused. A balance read
# may settle these again (skipped, rejected, needs approval); any other status only a send settles.
UNSENT_STATUSES = (SKIPPED, REJECTED, NEEDS_APPROVAL)

DEFAULT_LEDGER_CONN_ID = "feishu_hire_ledger"
SCHEMA_VERSION = 3  # 2: reconciliations, registrations, approvals; 3: run generations, payroll batches
_MIGRATION_LOCK = 7_463_021_905  # any constant: PostgreSQL's advisory lock for migrate()
_PAYROLL_BATCH_LOCK = 7_463_021_906  # and for making payroll batches, one at a time
RUN_SCOPE, DAG_SCOPE, APP_SCOPE = "run", "dag", "app"
PAYROLL_SCOPES = (RUN_SCOPE, DAG_SCOPE, APP_SCOPE)
# An attempt started this recently and not finished may still be waiting for Feishu's answer;
# an older one died with its worker. (A call's retries end within the connection's budget.)
IN_FLIGHT_SECONDS = 600
# Senders waiting for one pace at once: every thread of every worker holds one slot at a time, so a
# stored slot this many intervals ahead came from a skewed clock, not from a queue.
_MAX_QUEUED_SLOTS = 1000
DIALECTS = ("sqlite", "postgresql")

# (SQLite, PostgreSQL) spellings; everything else in the DDL is common to both.
_TYPES = {
    "money": ("TEXT", "NUMERIC"),  # SQLite's NUMERIC affinity would turn "0.10" into a REAL
    "serial": ("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY"),
    "seconds": ("REAL", "DOUBLE PRECISION"),  # wall-clock times, not money
}

CONSOLE_INDEXES = (
    # The payouts console's pages (airflow_provider_feishu_hire/console; benchmarks/bench_console.py):
    # newest requests first and the date filter; the status filter and "needs attention"; one account;
    # paid per day summed from the indexes alone; an order's settlements; one DAG's reconciliations.
    "CREATE INDEX IF NOT EXISTS feishu_hire_withdrawal_requested ON feishu_hire_withdrawal "
    "(requested_at, external_order_id)",
    "CREATE INDEX IF NOT EXISTS feishu_hire_withdrawal_status ON feishu_hire_withdrawal (status, requested_at)",
    "CREATE INDEX IF NOT EXISTS feishu_hire_withdrawal_account ON feishu_hire_withdrawal "
    "(referral_account_id, requested_at)",
    "CREATE INDEX IF NOT EXISTS feishu_hire_withdrawal_paid_day ON feishu_hire_withdrawal "
    "(status, trans_time, dag_id, app_id, point_bonus, external_order_id)",
    "CREATE INDEX IF NOT EXISTS feishu_hire_withdrawal_cash_amount ON feishu_hire_withdrawal_cash "
    "(external_order_id, currency_type, amount)",
    "CREATE INDEX IF NOT EXISTS feishu_hire_settlement_order ON feishu_hire_settlement (external_order_id)",
    "CREATE INDEX IF NOT EXISTS feishu_hire_reconciliation_dag ON feishu_hire_reconciliation (dag_id, id)",
)

_DDL = (
    """CREATE TABLE IF NOT EXISTS feishu_hire_ledger_schema (
        version INTEGER NOT NULL, migrated_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS feishu_hire_withdrawal (
        external_order_id TEXT PRIMARY KEY,
        referral_account_id TEXT NOT NULL,
        withdraw_bonus_type TEXT NOT NULL,
        app_id TEXT NOT NULL,
        dag_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        map_index INTEGER NOT NULL,
        run_generation INTEGER NOT NULL DEFAULT 1,
        requested_at TEXT NOT NULL,
        status TEXT NOT NULL,
        sends INTEGER NOT NULL DEFAULT 0,
        trans_time BIGINT,
        point_bonus BIGINT,
        error_code BIGINT,
        error_msg TEXT,
        log_id TEXT,
        raw_answer TEXT,
        updated_at TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS feishu_hire_withdrawal_run ON feishu_hire_withdrawal (dag_id, run_id)",
    "CREATE INDEX IF NOT EXISTS feishu_hire_withdrawal_trans_time ON feishu_hire_withdrawal (trans_time)",
    """CREATE TABLE IF NOT EXISTS feishu_hire_withdrawal_cash (
        external_order_id TEXT NOT NULL REFERENCES feishu_hire_withdrawal (external_order_id),
        currency_type TEXT NOT NULL,
        amount {money} NOT NULL,
        PRIMARY KEY (external_order_id, currency_type))""",
    """CREATE TABLE IF NOT EXISTS feishu_hire_withdrawal_attempt (
        id {serial},
        external_order_id TEXT NOT NULL REFERENCES feishu_hire_withdrawal (external_order_id),
        dag_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        map_index INTEGER NOT NULL,
        try_number INTEGER NOT NULL,
        run_generation INTEGER NOT NULL DEFAULT 1,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        outcome TEXT,
        error_code BIGINT,
        error_msg TEXT,
        log_id TEXT)""",
    "CREATE INDEX IF NOT EXISTS feishu_hire_attempt_order ON feishu_hire_withdrawal_attempt (external_order_id)",
    """CREATE TABLE IF NOT EXISTS feishu_hire_payroll (
        external_order_id TEXT NOT NULL,
        bonus_type TEXT NOT NULL,
        currency TEXT NOT NULL,
        referral_account_id TEXT NOT NULL,
        trans_time TEXT NOT NULL,
        amount {money} NOT NULL,
        dag_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        payroll_batch_id BIGINT,
        PRIMARY KEY (external_order_id, bonus_type, currency))""",
    """CREATE TABLE IF NOT EXISTS feishu_hire_task_lease (
        dag_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        map_index INTEGER NOT NULL,
        try_number INTEGER NOT NULL,
        taken_at TEXT NOT NULL,
        ti_id TEXT,
        run_generation INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (dag_id, run_id, task_id, map_index))""",
    """CREATE TABLE IF NOT EXISTS feishu_hire_pace (
        pace_key TEXT PRIMARY KEY,
        next_slot {seconds} NOT NULL)""",
    # Each reconciliation with Feishu: the window sent (both ends inclusive), our totals, the verdict.
    """CREATE TABLE IF NOT EXISTS feishu_hire_reconciliation (
        id {serial},
        app_id TEXT NOT NULL,
        start_trans_time BIGINT NOT NULL,
        end_trans_time BIGINT NOT NULL,
        accounts INTEGER NOT NULL,
        point_bonus BIGINT NOT NULL,
        mismatches INTEGER NOT NULL,
        dag_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        reconciled_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS feishu_hire_reconciliation_mismatch (
        reconciliation_id BIGINT NOT NULL REFERENCES feishu_hire_reconciliation (id),
        referral_account_id TEXT NOT NULL,
        ledger_point_bonus BIGINT NOT NULL,
        feishu_point_bonus BIGINT NOT NULL,
        PRIMARY KEY (reconciliation_id, referral_account_id))""",
    # Registration is not idempotent at Feishu: the account id it answered, kept so a retry
    # or a re-run returns it instead of registering the referrer again.
    """CREATE TABLE IF NOT EXISTS feishu_hire_registration (
        app_id TEXT NOT NULL,
        referrer TEXT NOT NULL,
        referral_account_id TEXT NOT NULL,
        registered_at TEXT NOT NULL,
        PRIMARY KEY (app_id, referrer))""",
    # Who decided a DAG run's payout, when, and on which preview totals (cash as JSON of decimal strings).
    """CREATE TABLE IF NOT EXISTS feishu_hire_approval (
        id {serial},
        dag_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        decision TEXT NOT NULL,
        decided_by TEXT NOT NULL,
        decided_at TEXT NOT NULL,
        accounts INTEGER NOT NULL,
        point_bonus BIGINT NOT NULL,
        cash_bonus TEXT NOT NULL)""",
    # How a person settled an order the automation could not (review, or sending long after any send could
    # still answer): proposed with evidence by one person, confirmed by another, then applied. Kept for ever.
    """CREATE TABLE IF NOT EXISTS feishu_hire_settlement (
        id {serial},
        external_order_id TEXT NOT NULL REFERENCES feishu_hire_withdrawal (external_order_id),
        paid INTEGER NOT NULL,
        trans_time BIGINT,
        point_bonus BIGINT,
        cash_bonus TEXT,
        evidence TEXT NOT NULL,
        proposed_by TEXT NOT NULL,
        proposed_at TEXT NOT NULL,
        confirmed_by TEXT,
        confirmed_at TEXT)""",
    # What a payout's approver is shown: every account's balance at preview time, which an approval binds.
    """CREATE TABLE IF NOT EXISTS feishu_hire_payout_preview (
        id {serial},
        dag_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        run_generation INTEGER NOT NULL,
        task_id TEXT NOT NULL,
        previewed_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS feishu_hire_payout_preview_account (
        payout_preview_id BIGINT NOT NULL REFERENCES feishu_hire_payout_preview (id),
        referral_account_id TEXT NOT NULL,
        point_bonus BIGINT NOT NULL,
        cash_bonus TEXT NOT NULL,
        PRIMARY KEY (payout_preview_id, referral_account_id))""",
    # Which incarnation of a DAG run a task belongs to: Airflow re-creates a deleted run under the
    # same run_id, and its clear_number starts again at 0 with a new start_date (see run_generation).
    """CREATE TABLE IF NOT EXISTS feishu_hire_run_generation (
        dag_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        clear_number INTEGER NOT NULL,
        run_start TEXT NOT NULL,
        run_generation INTEGER NOT NULL,
        seen_at TEXT NOT NULL,
        PRIMARY KEY (dag_id, run_id, clear_number, run_start))""",
    # A payroll batch: what one export claimed, in one transaction, and its totals when it was made.
    """CREATE TABLE IF NOT EXISTS feishu_hire_payroll_batch (
        id {serial},
        scope TEXT NOT NULL,
        scope_key TEXT NOT NULL,
        dag_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        run_generation INTEGER NOT NULL,
        task_id TEXT NOT NULL,
        map_index INTEGER NOT NULL,
        try_number INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        accounts INTEGER NOT NULL,
        point_bonus BIGINT NOT NULL,
        cash_bonus TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS feishu_hire_payroll_batch_maker ON feishu_hire_payroll_batch (dag_id, run_id)",
    # Membership: the primary key puts every paid withdrawal in one batch at most, for ever.
    """CREATE TABLE IF NOT EXISTS feishu_hire_payroll_batch_member (
        external_order_id TEXT PRIMARY KEY REFERENCES feishu_hire_withdrawal (external_order_id),
        payroll_batch_id BIGINT NOT NULL REFERENCES feishu_hire_payroll_batch (id))""",
    "CREATE INDEX IF NOT EXISTS feishu_hire_payroll_member_batch ON feishu_hire_payroll_batch_member "
    "(payroll_batch_id)",
    # Which consumer has taken which batch: how an import de-duplicates repeated asset events.
    """CREATE TABLE IF NOT EXISTS feishu_hire_payroll_delivery (
        payroll_batch_id BIGINT NOT NULL REFERENCES feishu_hire_payroll_batch (id),
        consumer TEXT NOT NULL,
        delivered_at TEXT NOT NULL,
        PRIMARY KEY (payroll_batch_id, consumer))""",
    *CONSOLE_INDEXES,
)
# Columns that schema 3 added to tables of schemas 1 and 2 (the DDL above has them for new ledgers).
_ADDED_COLUMNS = (
    ("feishu_hire_withdrawal", "run_generation", "INTEGER NOT NULL DEFAULT 1"),
    ("feishu_hire_withdrawal_attempt", "run_generation", "INTEGER NOT NULL DEFAULT 1"),
    ("feishu_hire_task_lease", "ti_id", "TEXT"),
    ("feishu_hire_task_lease", "run_generation", "INTEGER NOT NULL DEFAULT 1"),
    ("feishu_hire_payroll", "payroll_batch_id", "BIGINT"),
    ("feishu_hire_approval", "run_generation", "INTEGER NOT NULL DEFAULT 1"),
    ("feishu_hire_approval", "triggered_by", "TEXT"),
    ("feishu_hire_approval", "payout_preview_id", "BIGINT"),
)


@dataclass(frozen=True)
class Mismatch:
    """An account whose withdrawn points Feishu and the ledger state differently."""

    referral_account_id: str
    ledger_point_bonus: int
    feishu_point_bonus: int

    def describe(self) -> str:
        return (
            f"account {self.referral_account_id}: ledger {self.ledger_point_bonus} points, "
            f"Feishu {self.feishu_point_bonus} points"
        )


@dataclass(frozen=True)
class Reconciliation:
    """One comparison with Feishu: the window (ms, both ends inclusive), what we sent, what disagreed."""

    app_id: str
    start_trans_time: int
    end_trans_time: int
    ledger_points: dict[str, int]
    mismatches: tuple[Mismatch, ...] = ()


@dataclass(frozen=True)
class Approval:
    """A person's decision on a DAG run's payout, with the preview totals it was made on."""

    dag_id: str
    run_id: str
    task_id: str
    decision: str  # "Approve", "Reject", or "not required" when the DAG run turned approval off
    decided_by: str
    decided_at: str  # ISO 8601, UTC
    accounts: int
    point_bonus: int
    cash_bonus: dict[str, str]  # currency -> decimal string
    run_generation: int = 1
    triggered_by: str | None = None  # who triggered the run (Airflow's triggering_user_name): never the approver
    payout_preview_id: int | None = None  # the per-account amounts the approver was shown


@dataclass(frozen=True)
class Settlement:
    """A person's account of what became of an order: paid (with Feishu's amounts and time) or not paid."""

    id: int
    external_order_id: str
    paid: bool
    trans_time: int | None
    point_bonus: int | None
    cash_bonus: dict[str, Decimal]
    evidence: str
    proposed_by: str
    proposed_at: str
    confirmed_by: str | None = None
    confirmed_at: str | None = None


@dataclass(frozen=True)
class PayrollScope:
    """Which paid withdrawals an export may claim for a new payroll batch.

    ``run``: the withdrawals sent by one DAG run (the example DAGs'), including what a deleted
    earlier generation of the same run_id paid and no batch holds;
    ``dag``: by any run of a DAG; ``app``: by one Feishu app, whatever DAG sent them.
    Withdrawals already in a batch are never claimed again, whatever the scope.
    """

    kind: str
    dag_id: str | None = None
    run_id: str | None = None
    run_generation: int = 1
    app_id: str | None = None

    def __post_init__(self) -> None:
        needs = {RUN_SCOPE: ("dag_id", "run_id"), DAG_SCOPE: ("dag_id",), APP_SCOPE: ("app_id",)}
        if self.kind not in needs:
            raise ValueError(f"payroll scope {self.kind!r} is unknown: use one of {', '.join(PAYROLL_SCOPES)}")
        missing = [name for name in needs[self.kind] if not getattr(self, name)]
        if missing:
            raise ValueError(f"payroll scope {self.kind!r} needs {' and '.join(missing)}")

    @property
    def key(self) -> str:
        if self.kind == RUN_SCOPE:
            return f"{self.dag_id}/{self.run_id}#{self.run_generation}"
        return str(self.dag_id if self.kind == DAG_SCOPE else self.app_id)

    def where(self) -> tuple[str, list[Any]]:
        if self.kind == RUN_SCOPE:
            # A deleted generation of this run_id has no export of its own any more: what it paid and
            # no batch holds (a zombie of it, say) goes with the run that took its place.
            return "dag_id = ? AND run_id = ? AND run_generation <= ?", [self.dag_id, self.run_id, self.run_generation]
        if self.kind == DAG_SCOPE:
            return "dag_id = ?", [self.dag_id]
        return "app_id = ?", [self.app_id]


@dataclass(frozen=True)
class PayrollBatch:
    """One payroll batch: the paid withdrawals one export claimed, for ever, and their totals."""

    id: int
    scope: str
    scope_key: str
    made_by: TaskTry
    created_at: str  # ISO 8601, UTC
    accounts: int
    point_bonus: int
    cash_bonus: dict[str, Decimal]
    members: tuple[LedgerRow, ...]

    def totals(self) -> dict[str, Any]:
        """JSON-safe totals: cash per currency as decimal strings."""
        return {
            "accounts": self.accounts,
            "withdrawals": len(self.members),
            "point_bonus": self.point_bonus,
            "cash_bonus": {currency: format_money(amount) for currency, amount in sorted(self.cash_bonus.items())},
        }


class LedgerError(ValueError):
    """The ledger cannot do what was asked, and waiting will not change it; the message says what to do."""


class OrderIdConflict(ValueError):
    """An ``external_order_id`` the ledger already holds for another account: refused before sending."""


class NeedsReview(LedgerError):
    """A withdrawal whose money may have moved in an amount the ledger cannot state."""


class Superseded(LedgerError):
    """This try of a task no longer holds its lease (a newer try, or a re-created run, took over): it sends nothing."""


@dataclass(frozen=True)
class TaskTry:
    """One try of one task instance, as the ledger tells tries apart.

    ``ti_id`` is Airflow's task-instance id, new for every try; ``run_generation`` is the
    incarnation of the DAG run (:meth:`Ledger.run_generation`). Outside Airflow both may
    be left at their defaults.
    """

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    try_number: int = 1
    ti_id: str | None = None
    run_generation: int = 1


@dataclass(frozen=True)
class Intent:
    """What is about to be sent, and by which try: recorded before the call."""

    external_order_id: str
    referral_account_id: str
    withdraw_bonus_type: Sequence[int]
    app_id: str
    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    try_number: int = 1
    ti_id: str | None = None
    run_generation: int = 1

    @property
    def task_try(self) -> TaskTry:
        return TaskTry(
            self.dag_id, self.run_id, self.task_id, self.map_index, self.try_number, self.ti_id, self.run_generation
        )


@dataclass(frozen=True)
class Claim:
    """The right to send ``intent`` once, or the recorded withdrawal if it was already paid.

    ``uncertain`` says an earlier send of this order id may have reached Feishu: a
    refusal now does not prove no money moved.
    """

    intent: Intent
    paid: Withdrawal | None = None
    attempt_id: int | None = None
    uncertain: bool = False


@dataclass
class LedgerRow:
    """One withdrawal as the ledger holds it."""

    external_order_id: str
    referral_account_id: str
    status: str
    dag_id: str
    run_id: str
    task_id: str
    sends: int
    error_code: int | None = None
    error_msg: str | None = None
    log_id: str | None = None
    withdrawal: Withdrawal | None = None
    raw_answer: str | None = None
    cash: dict[str, Decimal] = field(default_factory=dict)
    run_generation: int = 1
    payroll_batch_id: int | None = None

    def describe_problem(self) -> str:
        """Why this row is not settled, for a person: the facts first."""
        if self.status == REVIEW:
            return (
                f"account {self.referral_account_id} order {self.external_order_id} needs review "
                f"({self.error_msg or 'unreadable answer'})"
            )
        if self.status == SENDING:
            last = f", last error {self.error_code} {self.error_msg}" if self.error_msg else ""
            return f"account {self.referral_account_id} order {self.external_order_id} outcome unknown{last}"
        why = f" ({self.error_msg})" if self.error_msg else ""
        return f"account {self.referral_account_id} order {self.external_order_id} {self.status}{why}"


def _ledger_row(values: Sequence[Any], cash: dict[str, Decimal]) -> LedgerRow:
    (order_id, account, status, dag_id, run_id, task_id, sends, trans_time, points, code, msg, log_id, raw,
     generation, batch_id) = values  # fmt: skip
    withdrawal = Withdrawal(account, order_id, int(trans_time), int(points or 0), cash) if status == PAID else None
    return LedgerRow(
        order_id, account, status, dag_id, run_id, task_id, sends, code, msg, log_id, withdrawal, raw, cash,
        int(generation), None if batch_id is None else int(batch_id),
    )  # fmt: skip


def _cash_json(cash: Mapping[str, Decimal]) -> str:
    """Cash per currency as JSON of exact decimal strings."""
    return json.dumps({currency: format_money(amount) for currency, amount in cash.items()}, sort_keys=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Ledger:
    """The ledger in one database. Safe to share between threads (one DB-API connection each).

    ``connect`` opens a new DB-API connection; ``dialect`` is ``"sqlite"`` or
    ``"postgresql"``. Every method is one short transaction, committed before it returns,
    so a process killed at any point leaves the ledger at a state some method produced.
    """

    def __init__(
        self, connect: Callable[[], Any], dialect: str, *, in_flight_seconds: float = IN_FLIGHT_SECONDS
    ) -> None:
        if dialect not in DIALECTS:
            raise LedgerError(f"the ledger supports {' and '.join(DIALECTS)}, not {dialect!r}")
        self.dialect = dialect
        self.in_flight_seconds = in_flight_seconds
        self._connect = connect
        self._local = threading.local()
        self._opened: list[Any] = []
        self._opened_lock = threading.Lock()

    # -- connections and transactions ---------------------------------------------------------

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            if self.dialect == "postgresql":
                # Row locks last until commit only outside autocommit (an extra can switch it on).
                conn.autocommit = False
            if self.dialect == "sqlite":
                # Several processes (a zombie and its retry, mapped tasks) write the same file:
                # wait for each other's locks; WAL keeps readers off writers' backs and needs one
                # fsync per commit, and synchronous=FULL keeps every commit through a power cut.
                conn.execute("PRAGMA busy_timeout = 60000")
                conn.execute("PRAGMA synchronous = FULL")
                with suppress(Exception):  # switching needs a moment alone; another connection will do it
                    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                        conn.execute("PRAGMA journal_mode = WAL")
            self._local.conn = conn
            with self._opened_lock:
                self._opened.append(conn)
        return conn

    def close(self) -> None:
        with self._opened_lock:
            for conn in self._opened:
                conn.close()
            self._opened.clear()
        self._local = threading.local()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.dialect == "postgresql" else statement

    @contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[Any]:
        conn = self._connection()
        cursor = conn.cursor()
        if self.dialect == "sqlite":
            # Writers take the lock up front: two that both start by reading would otherwise
            # deadlock on the upgrade instead of waiting their turn. Readers do not block them.
            conn.commit()
            cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield _Cursor(cursor, self._sql)
        except BaseException:
            try:
                conn.rollback()
            except Exception:  # the connection itself is broken: the next call opens a new one
                self._forget(conn)
            raise
        else:
            conn.commit()
        finally:
            with suppress(Exception):
                cursor.close()

    def _forget(self, conn: Any) -> None:
        self._local.conn = None
        with self._opened_lock:
            if conn in self._opened:
                self._opened.remove(conn)
        with suppress(Exception):
            conn.close()

    # -- schema -------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create the tables (idempotent) and refuse a ledger written by a newer provider."""
        index = DIALECTS.index(self.dialect)
        types = {name: spellings[index] for name, spellings in _TYPES.items()}
        with self._transaction() as cur:
            if self.dialect == "postgresql":
                # Workers that start together on a new database would race on CREATE TABLE.
                cur.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            for statement in _DDL:
                cur.execute(statement.format(**types))
            cur.execute("SELECT max(version) FROM feishu_hire_ledger_schema")
            (version,) = cur.fetchone()
            if version is None or version < SCHEMA_VERSION:  # the DDL above added the missing tables
                for table, column, spelling in _ADDED_COLUMNS:
                    cur.execute(f"SELECT * FROM {table} WHERE 1 = 0")
                    if column not in cur.columns():
                        cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {spelling}")
                if version is not None and version < 3:
                    self._batch_legacy_payroll(cur)
                cur.execute("INSERT INTO feishu_hire_ledger_schema VALUES (?, ?)", (SCHEMA_VERSION, _now()))
            elif version > SCHEMA_VERSION:
                raise LedgerError(
                    f"the ledger's schema is version {version}, newer than this provider's {SCHEMA_VERSION}: "
                    "upgrade airflow-provider-feishu-hire on every worker"
                )

    def _batch_legacy_payroll(self, cur: _Cursor) -> None:
        """Schema 2 exported payroll by DAG run without batches: each run's exported rows become one batch.

        Without this, the first export under schema 3 would claim withdrawals that payroll
        already holds and hand them downstream a second time. Paid withdrawals that were
        never written to the payroll table stay unbatched, for the next export to claim.
        """
        cur.execute(
            "SELECT DISTINCT p.dag_id, p.run_id FROM feishu_hire_payroll p WHERE p.payroll_batch_id IS NULL "
            "ORDER BY 1, 2"
        )
        for dag_id, run_id in cur.fetchall():
            cur.execute(
                "SELECT DISTINCT p.external_order_id FROM feishu_hire_payroll p JOIN feishu_hire_withdrawal w "
                "ON w.external_order_id = p.external_order_id WHERE p.dag_id = ? AND p.run_id = ? "
                "AND p.payroll_batch_id IS NULL AND w.status = ? ORDER BY 1",
                (dag_id, run_id, PAID),
            )
            orders = [order_id for (order_id,) in cur.fetchall()]
            members = self._paid_rows(cur, orders)
            maker = TaskTry(dag_id, run_id, "schema 2 export", -1, 0)
            batch_id = self._insert_batch(cur, "legacy", f"{dag_id}/{run_id}", maker, members)
            cur.execute(
                "UPDATE feishu_hire_payroll SET payroll_batch_id = ? WHERE dag_id = ? AND run_id = ? "
                "AND payroll_batch_id IS NULL",
                (batch_id, dag_id, run_id),
            )

    # -- which incarnation of a DAG run ---------------------------------------------------------

    def run_generation(self, dag_id: str, run_id: str, clear_number: int, run_start: str) -> int:
        """The incarnation of the DAG run ``(dag_id, run_id)`` that a task seeing these run facts belongs to.

        Airflow lets a run be deleted and created again under the same ``run_id`` (scheduled
        and logical-date runs have deterministic ids). Its ``clear_number`` counts the clears
        of one run, from 0, and every clear gives the run a new ``start_date``; a re-created
        run starts again at 0 with a new ``start_date``. So facts seen before belong to the
        generation that saw them, a higher ``clear_number`` than any seen is a clear of the
        newest generation, and anything else is a new generation.
        """
        with self._transaction() as cur:
            cur.execute(
                "SELECT run_generation FROM feishu_hire_run_generation WHERE dag_id = ? AND run_id = ? "
                "AND clear_number = ? AND run_start = ?",
                (dag_id, run_id, clear_number, run_start),
            )
            found = cur.fetchone()
            if found is not None:
                return int(found[0])
            cur.execute(
                "SELECT run_generation, max(clear_number) FROM feishu_hire_run_generation WHERE dag_id = ? AND "
                "run_id = ? GROUP BY run_generation ORDER BY run_generation DESC",
                (dag_id, run_id),
            )
            newest = cur.fetchone()
            if newest is None:
                generation = 1
            else:
                generation = int(newest[0]) if clear_number > int(newest[1]) else int(newest[0]) + 1
            # Tasks of one run that start together compute the same answer: the first insert wins.
            cur.execute(
                "INSERT INTO feishu_hire_run_generation VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (dag_id, run_id, clear_number, run_start) DO NOTHING",
                (dag_id, run_id, clear_number, run_start, generation, _now()),
            )
            cur.execute(
                "SELECT run_generation FROM feishu_hire_run_generation WHERE dag_id = ? AND run_id = ? "
                "AND clear_number = ? AND run_start = ?",
                (dag_id, run_id, clear_number, run_start),
            )
            return int(cur.fetchone()[0])

    # -- before and after a withdrawal --------------------------------------------------------

    def claim(self, intent: Intent) -> Claim:
        """Record the intent to send, or return what the ledger already knows of this order id.

        Raises :class:`OrderIdConflict` when the order id belongs to another account and
        :class:`NeedsReview` when a person has to settle it first. Otherwise the row is
        ``sending`` when this returns, committed, before anything goes to Feishu.
        """
        now = _now()
        with self._transaction() as cur:
            self._check_lease(cur, intent.task_try)
            self._insert(cur, intent, SENDING, now)
            row = self._row(cur, intent.external_order_id, lock=True)
            self._check_same_withdrawal(cur, intent, row)
            if row.status == PAID:
                return Claim(intent, paid=row.withdrawal)
            if row.status == REVIEW:
                raise NeedsReview(
                    f"Review order {intent.external_order_id} of referral account {intent.referral_account_id} "
                    f"before paying it again: {row.error_msg}. It is not re-sent automatically."
                )
            # The row was just inserted (sends 0), or skipped/rejected/sending before. Whichever try
            # sends it owns it from now on: its run's payroll is where the payment belongs.
            uncertain = row.status == SENDING and row.sends > 0
            cur.execute(
                "UPDATE feishu_hire_withdrawal SET status = ?, sends = sends + 1, updated_at = ?, dag_id = ?, "
                "run_id = ?, task_id = ?, map_index = ?, run_generation = ? "
                "WHERE external_order_id = ? AND status NOT IN (?, ?)",
                (
                    SENDING,
                    now,
                    intent.dag_id,
                    intent.run_id,
                    intent.task_id,
                    intent.map_index,
                    intent.run_generation,
                    intent.external_order_id,
                    PAID,
                    REVIEW,
                ),
            )
            cur.execute(
                "INSERT INTO feishu_hire_withdrawal_attempt (external_order_id, dag_id, run_id, task_id, "
                "map_index, try_number, run_generation, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    intent.external_order_id,
                    intent.dag_id,
                    intent.run_id,
                    intent.task_id,
                    intent.map_index,
                    intent.try_number,
                    intent.run_generation,
                    now,
                ),
            )
            cur.execute(
                "SELECT max(id) FROM feishu_hire_withdrawal_attempt WHERE external_order_id = ?",
                (intent.external_order_id,),
            )
            (attempt_id,) = cur.fetchone()
        return Claim(intent, attempt_id=attempt_id, uncertain=uncertain)

    def skip(self, intent: Intent, reason: str) -> bool:
        """Record that a balance check found nothing to withdraw, unless this order id was ever sent.

        Returns False when the ledger holds any send under this order id, whatever its
        status: a zero balance may be that send's payment, so the caller must claim and
        send again (Feishu replays the original; it costs a call, never money).
        """
        return self._settle_unsent(intent, SKIPPED, None, reason)

    def refuse(self, intent: Intent, code: int | None, reason: str) -> bool:
        """Record that Feishu refused this account before any withdrawal was sent (its balance read).

        The run's payroll export then names the account: every account a run was asked to
        pay ends in the ledger with an outcome. Like :meth:`skip`, never recorded over an
        order id that was ever sent (returns False).
        """
        return self._settle_unsent(intent, REJECTED, code, reason)

    def hold(self, intent: Intent, reason: str) -> bool:
        """Record that the account holds more than the run's approval covers: nothing sent, a new approval pays it."""
        return self._settle_unsent(intent, NEEDS_APPROVAL, None, reason)

    def _settle_unsent(self, intent: Intent, status: str, code: int | None, reason: str) -> bool:
        """Settle an order id as ``skipped`` or ``rejected`` without a send, unless a send may have moved money.

        A row whose every send Feishu refused (``rejected``) holds no payment, so a later balance
        read that shows nothing settles it as skipped (Feishu may answer an empty withdrawal
        with an error, and that must not be re-sent for ever). A row just inserted counts as
        unsent (``sends`` 0) whatever status it was inserted with.
        """
        now = _now()
        with self._transaction() as cur:
            self._check_lease(cur, intent.task_try)
            self._insert(cur, intent, status, now)
            row = self._row(cur, intent.external_order_id, lock=True)
            self._check_same_withdrawal(cur, intent, row)
            if row.status not in UNSENT_STATUSES:
                return False  # a send of it may have moved money: only sending it again settles it
            cur.execute(
                "UPDATE feishu_hire_withdrawal SET status = ?, error_code = ?, error_msg = ?, updated_at = ?, "
                "dag_id = ?, run_id = ?, task_id = ?, map_index = ?, run_generation = ? WHERE external_order_id = ?",
                (
                    status,
                    code,
                    reason,
                    now,
                    intent.dag_id,
                    intent.run_id,
                    intent.task_id,
                    intent.map_index,
                    intent.run_generation,
                    intent.external_order_id,
                ),
            )
            return True

    def record_paid(self, claim: Claim, withdrawal: Withdrawal) -> LedgerRow:
        """Feishu's answer, with every cash currency; returns the row as it is left.

        A row already paid is left alone (a zombie's replay), and so is one in review: an
        answer that did not parse is never replaced by a later one.
        """
        order_id = claim.intent.external_order_id
        now = _now()
        with self._transaction() as cur:
            cur.execute(
                "UPDATE feishu_hire_withdrawal SET status = ?, trans_time = ?, point_bonus = ?, error_code = NULL, "
                "error_msg = NULL, log_id = NULL, updated_at = ? WHERE external_order_id = ? AND status NOT IN (?, ?)",
                (PAID, withdrawal.trans_time, withdrawal.point_bonus, now, order_id, PAID, REVIEW),
            )
            if cur.rowcount:
                for currency, amount in withdrawal.cash_bonus.items():
                    cur.execute(
                        "INSERT INTO feishu_hire_withdrawal_cash (external_order_id, currency_type, amount) "
                        "VALUES (?, ?, ?)",
                        (order_id, currency, self._money(amount)),
                    )
            self._finish_attempt(cur, claim, PAID, now)
            return self._row(cur, order_id)

    def record_failure(
        self,
        claim: Claim,
        *,
        code: int | None,
        msg: str,
        log_id: str | None,
        retryable: bool,
        uncertain: bool,
        reached: bool = True,
    ) -> LedgerRow:
        """What went wrong; returns the row as it is left, never moved back from paid or review.

        A transient failure keeps the row ``sending`` (Feishu may have committed). A
        permanent one is ``rejected`` only when no send of this order id can have reached
        Feishu. When another send of it is still waiting for its answer, the row stays
        ``sending`` for that send to settle; when an earlier send (this call's or another
        try's) ended without a known outcome, only a person can say whether money moved
        (``review``). ``reached`` false says this attempt never got to the withdraw endpoint
        (its login failed, Feishu's gateway refused it): it counts as no send, and it moves
        nothing to ``review`` — a row with an earlier unknown send stays ``sending`` for the
        next try to send again.
        """
        order_id = claim.intent.external_order_id
        now = _now()
        with self._transaction() as cur:
            row = self._row(cur, order_id, lock=True)
            if row.status == SENDING and not retryable:
                in_flight, unknown = self._other_attempts(cur, claim)
                if not reached:  # refused before the endpoint (a login): proves nothing about earlier sends
                    status = SENDING if in_flight or unknown or uncertain or claim.uncertain else REJECTED
                elif in_flight:
                    status = SENDING
                elif uncertain or claim.uncertain or unknown:
                    status = REVIEW
                else:
                    status = REJECTED
            else:
                status = SENDING
            cur.execute(
                "UPDATE feishu_hire_withdrawal SET status = ?, error_code = ?, error_msg = ?, log_id = ?, "
                "updated_at = ? WHERE external_order_id = ? AND status = ?",
                (status, code, msg, log_id, now, order_id, SENDING),
            )
            outcome = status if reached or status != SENDING else UNSENT
            self._finish_attempt(cur, claim, outcome, now, code=code, msg=msg, log_id=log_id)
            return self._row(cur, order_id)

    def _other_attempts(self, cur: _Cursor, claim: Claim) -> tuple[int, int]:
        """(sends of this order id still waiting for an answer, sends that ended with no known outcome)."""
        recent = (datetime.now(timezone.utc) - timedelta(seconds=self.in_flight_seconds)).isoformat(
            timespec="milliseconds"
        )
        cur.execute(
            "SELECT started_at, outcome FROM feishu_hire_withdrawal_attempt WHERE external_order_id = ? AND id <> ?",
            (claim.intent.external_order_id, claim.attempt_id or -1),
        )
        others = cur.fetchall()
        in_flight = sum(1 for started, outcome in others if outcome is None and started >= recent)
        unknown = sum(1 for started, outcome in others if outcome == SENDING or (outcome is None and started < recent))
        return in_flight, unknown

    def record_unreadable(self, claim: Claim, raw_answer: str, problem: str) -> None:
        """A success answer that does not parse: kept raw, never replaced, settled by a person."""
        now = _now()
        msg = f"Feishu's answer does not parse: {problem}"
        with self._transaction() as cur:
            cur.execute(
                "UPDATE feishu_hire_withdrawal SET status = ?, raw_answer = ?, error_msg = ?, updated_at = ? "
                "WHERE external_order_id = ? AND status NOT IN (?, ?)",
                (REVIEW, raw_answer, msg, now, claim.intent.external_order_id, PAID, REVIEW),
            )
            self._finish_attempt(cur, claim, REVIEW, now, msg=msg)

    # -- a person settles what automation cannot -------------------------------------------------

    def propose_settlement(
        self,
        external_order_id: str,
        *,
        paid: bool,
        evidence: str,
        proposed_by: str,
        trans_time: int | None = None,
        point_bonus: int | None = None,
        cash_bonus: Mapping[str, Decimal] | None = None,
    ) -> Settlement:
        """Record one person's account of an order in ``review`` (or ``sending`` with no send still able to
        answer); nothing changes until a second person confirms it. Returns the proposal."""
        if not evidence.strip():
            raise LedgerError(
                "evidence is empty: say what shows the outcome (Feishu's record, a log_id, a reconciliation)"
            )
        if not proposed_by.strip():
            raise LedgerError("proposed_by is empty: a settlement names the person who made it")
        if paid and (trans_time is None or point_bonus is None or point_bonus < 0):
            raise LedgerError("a settlement as paid needs Feishu's trans_time and the points paid (0 or more)")
        if paid and any(amount < 0 for amount in (cash_bonus or {}).values()):
            raise LedgerError("cash_bonus amounts cannot be negative")
        now = _now()
        with self._transaction() as cur:
            row = self._settleable(cur, external_order_id)
            cur.execute(
                "INSERT INTO feishu_hire_settlement (external_order_id, paid, trans_time, point_bonus, cash_bonus, "
                "evidence, proposed_by, proposed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    row.external_order_id,
                    int(paid),
                    trans_time if paid else None,
                    point_bonus if paid else None,
                    _cash_json(cash_bonus or {}) if paid else None,
                    evidence.strip(),
                    proposed_by.strip(),
                    now,
                ),
            )
            (settlement_id,) = cur.fetchone()
            return self._settlements(cur, "id = ?", [settlement_id])[0]

    def confirm_settlement(self, settlement_id: int, confirmed_by: str) -> LedgerRow:
        """A second person confirms a proposal: the order becomes ``paid`` (then the next payroll batch of its
        scope claims it) or ``rejected``, in the same transaction. Returns the row as it is left."""
        now = _now()
        with self._transaction() as cur:
            found = self._settlements(cur, "id = ?", [settlement_id])
            if not found:
                raise LedgerError(f"no settlement {settlement_id}")
            proposal = found[0]
            if proposal.confirmed_by is not None:
                raise LedgerError(f"settlement {settlement_id} was confirmed by {proposal.confirmed_by} already")
            if confirmed_by.strip() == proposal.proposed_by:
                raise LedgerError(
                    f"settlement {settlement_id} was proposed by {proposal.proposed_by}: another person must confirm it"
                )
            row = self._settleable(cur, proposal.external_order_id)
            cur.execute(
                "UPDATE feishu_hire_settlement SET confirmed_by = ?, confirmed_at = ? WHERE id = ?",
                (confirmed_by.strip(), now, settlement_id),
            )
            by = f"settled by {proposal.proposed_by} and {confirmed_by.strip()} (settlement {settlement_id})"
            if proposal.paid:
                cur.execute(
                    "UPDATE feishu_hire_withdrawal SET status = ?, trans_time = ?, point_bonus = ?, error_msg = ?, "
                    "updated_at = ? WHERE external_order_id = ?",
                    (PAID, proposal.trans_time, proposal.point_bonus, by, now, row.external_order_id),
                )
                for currency, amount in proposal.cash_bonus.items():
                    cur.execute(
                        "INSERT INTO feishu_hire_withdrawal_cash (external_order_id, currency_type, amount) "
                        "VALUES (?, ?, ?)",
                        (row.external_order_id, currency, self._money(amount)),
                    )
            else:
                cur.execute(
                    "UPDATE feishu_hire_withdrawal SET status = ?, error_msg = ?, updated_at = ? "
                    "WHERE external_order_id = ?",
                    (REJECTED, f"not paid: {by}", now, row.external_order_id),
                )
            return self._row(cur, row.external_order_id)

    def settlements(self, external_order_id: str | None = None) -> list[Settlement]:
        """Every settlement (of one order, if given), oldest first, confirmed or not."""
        where, params = ("external_order_id = ?", [external_order_id]) if external_order_id else ("1 = 1", [])
        with self._transaction(write=False) as cur:
            return self._settlements(cur, where, params)

    def attempts(self, external_order_id: str) -> list[dict[str, Any]]:
        """Every send of an order, oldest first: who sent it (DAG, run, task, try), when, and what came back."""
        with self._transaction(write=False) as cur:
            cur.execute(
                "SELECT dag_id, run_id, task_id, map_index, try_number, run_generation, started_at, finished_at, "
                "outcome, error_code, error_msg, log_id FROM feishu_hire_withdrawal_attempt "
                "WHERE external_order_id = ? ORDER BY id",
                (external_order_id,),
            )
            names = ("dag_id", "run_id", "task_id", "map_index", "try_number", "run_generation", "started_at",
                     "finished_at", "outcome", "error_code", "error_msg", "log_id")  # fmt: skip
            return [dict(zip(names, values, strict=True)) for values in cur.fetchall()]

    def _settleable(self, cur: _Cursor, external_order_id: str) -> LedgerRow:
        """The order, locked, if a person may settle it: in review, or sending with no send still able to answer."""
        cur.execute("SELECT count(*) FROM feishu_hire_withdrawal WHERE external_order_id = ?", (external_order_id,))
        if not cur.fetchone()[0]:
            raise LedgerError(f"the ledger holds no order {external_order_id}")
        row = self._row(cur, external_order_id, lock=True)
        if row.status == SENDING:
            cur.execute(
                "SELECT max(started_at) FROM feishu_hire_withdrawal_attempt WHERE external_order_id = ?",
                (external_order_id,),
            )
            (latest,) = cur.fetchone()
            recent = (datetime.now(timezone.utc) - timedelta(seconds=self.in_flight_seconds)).isoformat(
                timespec="milliseconds"
            )
            if latest is not None and latest >= recent:
                raise LedgerError(
                    f"order {external_order_id} was sent at {latest}: its answer may still come; settle it after "
                    f"{self.in_flight_seconds:g} seconds, or let a retry send it again"
                )
        elif row.status != REVIEW:
            raise LedgerError(
                f"order {external_order_id} is {row.status}: only review or stuck sending orders are settled"
            )
        return row

    def _settlements(self, cur: _Cursor, where: str, params: Sequence[Any]) -> list[Settlement]:
        cur.execute(
            "SELECT id, external_order_id, paid, trans_time, point_bonus, cash_bonus, evidence, proposed_by, "
            f"proposed_at, confirmed_by, confirmed_at FROM feishu_hire_settlement WHERE {where} ORDER BY id",
            params,
        )
        return [
            Settlement(int(sid), order, bool(paid), None if when is None else int(when),
                       None if points is None else int(points),
                       {c: Decimal(a) for c, a in json.loads(cash or "{}").items()}, evidence, by, at, conf_by, conf_at)
            for sid, order, paid, when, points, cash, evidence, by, at, conf_by, conf_at in cur.fetchall()
        ]  # fmt: skip

    # -- which try of a task is the live one ---------------------------------------------------

    def take_lease(self, task: TaskTry) -> Lease:
        """Make ``task`` the live try of its task instance if it is the newest; return who holds the lease.

        A try whose worker was presumed dead can live on as a zombie beside its retry, and a
        deleted run can be re-created under the same ``run_id`` while the old one's tries
        live on. The newest try of the newest run generation holds the lease; every claim
        checks it in its own transaction, so any other try sends nothing.
        """
        with self._transaction() as cur:
            return self._take_lease(cur, task, first=True)

    def _take_lease(self, cur: _Cursor, task: TaskTry, *, first: bool) -> Lease:
        """Take the lease for a newer try; ``first`` also takes a lease nobody holds yet.

        The row is inserted first (two tries starting at once both may; one insert wins),
        then locked and compared, so concurrent takers never race on the primary key.
        """
        key = (task.dag_id, task.run_id, task.task_id, task.map_index)
        if first:
            cur.execute(
                "INSERT INTO feishu_hire_task_lease (dag_id, run_id, task_id, map_index, try_number, taken_at, ti_id, "
                "run_generation) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (dag_id, run_id, task_id, map_index) DO NOTHING",
                (*key, task.try_number, _now(), task.ti_id, task.run_generation),
            )
        holder = self._lease(cur, task, lock=True)
        if holder is None:
            return Lease(task.try_number, task.run_generation, held=True)  # a caller that takes no lease
        if _same_try(task, holder):
            return Lease(task.try_number, task.run_generation, held=True)
        if _newer(task, holder):
            cur.execute(
                "UPDATE feishu_hire_task_lease SET try_number = ?, taken_at = ?, ti_id = ?, run_generation = ? "
                "WHERE dag_id = ? AND run_id = ? AND task_id = ? AND map_index = ?",
                (task.try_number, _now(), task.ti_id, task.run_generation, *key),
            )
            return Lease(task.try_number, task.run_generation, held=True)
        return Lease(holder.try_number, holder.run_generation, held=False)

    def lease(self, task: TaskTry) -> Lease:
        """Who holds ``task``'s lease now (``held`` when ``task`` does, or nobody took one)."""
        with self._transaction(write=False) as cur:
            holder = self._lease(cur, task)
        if holder is None:
            return Lease(task.try_number, task.run_generation, held=True)
        return Lease(holder.try_number, holder.run_generation, held=_same_try(task, holder))

    def _lease(self, cur: _Cursor, task: TaskTry, *, lock: bool = False) -> TaskTry | None:
        cur.execute(
            "SELECT try_number, ti_id, run_generation FROM feishu_hire_task_lease WHERE dag_id = ? AND run_id = ? "
            "AND task_id = ? AND map_index = ?" + (" FOR UPDATE" if lock and self.dialect == "postgresql" else ""),
            (task.dag_id, task.run_id, task.task_id, task.map_index),
        )
        found = cur.fetchone()
        if found is None:
            return None
        try_number, ti_id, generation = found
        return TaskTry(task.dag_id, task.run_id, task.task_id, task.map_index, int(try_number), ti_id, int(generation))

    def _check_lease(self, cur: _Cursor, task: TaskTry) -> None:
        """Refuse a try that no longer holds its task's lease (a newer one takes it over, as Airflow started it)."""
        lease = self._take_lease(cur, task, first=False)
        if not lease.held:
            raise Superseded(lease.describe(task))

    # -- one pace for every worker -----------------------------------------------------------

    def reserve_wait(self, pace_key: str, interval: float) -> float:
        """Reserve the next free send slot of ``pace_key``, ``interval`` after the last; return the seconds to wait.

        One short transaction on a locked row: however many threads, processes and
        machines ask at once, each gets its own slot, and consecutive slots are at least
        ``interval`` apart. Slots are kept, and the wait measured, by the database's clock
        (PostgreSQL's ``clock_timestamp()``; SQLite lives on one machine, whose clock is the
        only one): a worker whose clock is an hour ahead cannot make the others wait an hour.
        A stored slot further ahead than any queue of waiting senders could make (written by
        a skewed clock before this rule) is dropped.
        """
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO feishu_hire_pace (pace_key, next_slot) VALUES (?, ?) ON CONFLICT (pace_key) DO NOTHING",
                (pace_key, 0.0),
            )
            if self.dialect == "postgresql":
                cur.execute("SELECT extract(epoch FROM clock_timestamp())")
                now = float(cur.fetchone()[0])
                cur.execute("SELECT next_slot FROM feishu_hire_pace WHERE pace_key = ? FOR UPDATE", (pace_key,))
            else:
                now = time.time()
                cur.execute("SELECT next_slot FROM feishu_hire_pace WHERE pace_key = ?", (pace_key,))
            next_slot = float(cur.fetchone()[0])
            if next_slot > now + _MAX_QUEUED_SLOTS * interval:
                next_slot = now
            slot = max(now, next_slot)
            cur.execute("UPDATE feishu_hire_pace SET next_slot = ? WHERE pace_key = ?", (slot + interval, pace_key))
        return slot - now

    # -- payroll batches ------------------------------------------------------------------------

    def make_payroll_batch(self, scope: PayrollScope, maker: TaskTry) -> PayrollBatch | None:
        """Claim, in one transaction, every paid withdrawal in ``scope`` that is in no batch yet.

        Returns the new batch, or None when there is nothing to claim. The batch's lines go
        into the payroll table in the same transaction, so the table holds exactly the
        batches. Batches are made one at a time (a lock), and membership is a primary key:
        a withdrawal is in one batch at most, whichever exports race for it.
        """
        where, params = scope.where()
        with self._transaction() as cur:
            if self.dialect == "postgresql":
                cur.execute("SELECT pg_advisory_xact_lock(?)", (_PAYROLL_BATCH_LOCK,))
            members = self._select_in(
                cur,
                f"status = ? AND {where} AND external_order_id NOT IN "
                "(SELECT external_order_id FROM feishu_hire_payroll_batch_member)",
                [PAID, *params],
            )
            if not members:
                return None
            batch_id = self._insert_batch(cur, scope.kind, scope.key, maker, members)
            for row in members:
                paid = row.withdrawal
                assert paid is not None
                for bonus_type, currency, amount in paid.payroll_items():
                    cur.execute(
                        "INSERT INTO feishu_hire_payroll (external_order_id, bonus_type, currency, "
                        "referral_account_id, trans_time, amount, dag_id, run_id, payroll_batch_id) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            row.external_order_id,
                            bonus_type,
                            currency,
                            row.referral_account_id,
                            trans_time_iso(paid.trans_time),
                            self._money(Decimal(amount)),
                            row.dag_id,
                            row.run_id,
                            batch_id,
                        ),
                    )
            return self._batches(cur, "id = ?", [batch_id])[0]

    def payroll_batches(
        self, *, made_by: TaskTry | None = None, payroll_batch_id: int | None = None
    ) -> list[PayrollBatch]:
        """Batches with their members, oldest first: those one task instance of one run generation made
        (any try), one by id, or all."""
        where, params = "1 = 1", []
        if made_by is not None:
            where = "dag_id = ? AND run_id = ? AND run_generation = ? AND task_id = ? AND map_index = ?"
            params = [made_by.dag_id, made_by.run_id, made_by.run_generation, made_by.task_id, made_by.map_index]
        if payroll_batch_id is not None:
            where, params = f"{where} AND id = ?", [*params, payroll_batch_id]
        with self._transaction(write=False) as cur:
            return self._batches(cur, where, params)

    def payroll_batch_ids(self, scope: PayrollScope) -> list[int]:
        """The ids of the batches made for ``scope``, oldest first (cheap: no members)."""
        with self._transaction(write=False) as cur:
            cur.execute(
                "SELECT id FROM feishu_hire_payroll_batch WHERE scope = ? AND scope_key = ? ORDER BY id",
                (scope.kind, scope.key),
            )
            return [int(batch_id) for (batch_id,) in cur.fetchall()]

    def delivered(self, payroll_batch_id: int, consumer: str) -> bool:
        """Whether ``consumer`` recorded taking this batch: an import asks before it imports."""
        with self._transaction(write=False) as cur:
            cur.execute(
                "SELECT count(*) FROM feishu_hire_payroll_delivery WHERE payroll_batch_id = ? AND consumer = ?",
                (payroll_batch_id, consumer),
            )
            return bool(cur.fetchone()[0])

    def record_delivery(self, payroll_batch_id: int, consumer: str) -> bool:
        """Note that ``consumer`` has taken a batch, after it did; False when it had already."""
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO feishu_hire_payroll_delivery VALUES (?, ?, ?) "
                "ON CONFLICT (payroll_batch_id, consumer) DO NOTHING",
                (payroll_batch_id, consumer, _now()),
            )
            return cur.rowcount == 1

    def _insert_batch(self, cur: _Cursor, scope: str, key: str, maker: TaskTry, members: Sequence[LedgerRow]) -> int:
        cash: dict[str, Decimal] = {}
        for row in members:
            for currency, amount in row.cash.items():
                cash[currency] = cash.get(currency, Decimal(0)) + amount
        cur.execute(
            "INSERT INTO feishu_hire_payroll_batch (scope, scope_key, dag_id, run_id, run_generation, task_id, "
            "map_index, try_number, created_at, accounts, point_bonus, cash_bonus) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                scope,
                key,
                maker.dag_id,
                maker.run_id,
                maker.run_generation,
                maker.task_id,
                maker.map_index,
                maker.try_number,
                _now(),
                len({row.referral_account_id for row in members}),
                sum(row.withdrawal.point_bonus for row in members if row.withdrawal is not None),
                _cash_json(cash),
            ),
        )
        (batch_id,) = cur.fetchone()
        for row in members:
            cur.execute(
                "INSERT INTO feishu_hire_payroll_batch_member (external_order_id, payroll_batch_id) VALUES (?, ?)",
                (row.external_order_id, batch_id),
            )
        return int(batch_id)

    def _batches(self, cur: _Cursor, where: str, params: Sequence[Any]) -> list[PayrollBatch]:
        cur.execute(
            "SELECT id, scope, scope_key, dag_id, run_id, run_generation, task_id, map_index, try_number, "
            f"created_at, accounts, point_bonus, cash_bonus FROM feishu_hire_payroll_batch WHERE {where} ORDER BY id",
            params,
        )
        found = cur.fetchall()
        batches = []
        for values in found:
            batch_id, scope, key, dag, run, generation, task, map_index, try_number, created, accounts, points, cash = (
                values
            )
            members = self._select_in(
                cur,
                "external_order_id IN (SELECT external_order_id FROM feishu_hire_payroll_batch_member "
                "WHERE payroll_batch_id = ?)",
                [batch_id],
            )
            batches.append(
                PayrollBatch(
                    int(batch_id),
                    scope,
                    key,
                    TaskTry(dag, run, task, int(map_index), int(try_number), None, int(generation)),
                    created,
                    int(accounts),
                    int(points),
                    {currency: Decimal(amount) for currency, amount in json.loads(cash).items()},
                    tuple(members),
                )
            )
        return batches

    # -- reading ------------------------------------------------------------------------------

    def get(self, external_order_id: str) -> LedgerRow | None:
        found = self._select("external_order_id = ?", [external_order_id])
        return found[0] if found else None

    def rows(
        self,
        *,
        dag_id: str | None = None,
        run_id: str | None = None,
        start_trans_time: int | None = None,
        end_trans_time: int | None = None,
        statuses: Sequence[str] = (),
        requested_before: str | None = None,
        run_generation: int | None = None,
        app_id: str | None = None,
        payroll_batch_id: int | None = None,
    ) -> list[LedgerRow]:
        """Withdrawals by DAG run (and its generation), app, payroll batch, ``trans_time`` in ``[start, end)``
        (ms; paid ones only have one), status, or first requested before an ISO 8601 UTC time."""
        where: list[str] = []
        params: list[Any] = []
        if isinstance(statuses, str):
            statuses = (statuses,)
        if statuses:
            where.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params.extend(statuses)
        for clause, value in (
            ("dag_id = ?", dag_id),
            ("run_id = ?", run_id),
            ("trans_time >= ?", start_trans_time),
            ("trans_time < ?", end_trans_time),
            ("requested_at < ?", requested_before),
            ("run_generation = ?", run_generation),
            ("app_id = ?", app_id),
            (
                "external_order_id IN (SELECT external_order_id FROM feishu_hire_payroll_batch_member "
                "WHERE payroll_batch_id = ?)",
                payroll_batch_id,
            ),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        return self._select(" AND ".join(where) or "1 = 1", params)

    def point_totals(self, app_id: str, start_trans_time: int, end_trans_time: int) -> dict[str, int]:
        """Points paid per account by ``app_id`` with ``trans_time`` in ``[start, end]`` (ms, both inclusive)."""
        with self._transaction(write=False) as cur:
            cur.execute(
                "SELECT referral_account_id, sum(point_bonus) FROM feishu_hire_withdrawal WHERE status = ? AND "
                "app_id = ? AND trans_time >= ? AND trans_time <= ? GROUP BY referral_account_id ORDER BY 1",
                (PAID, app_id, start_trans_time, end_trans_time),
            )
            return {account: int(points or 0) for account, points in cur.fetchall()}

    def paid_at(self, app_id: str, trans_time: int) -> bool:
        """Whether any withdrawal of ``app_id`` was paid at exactly this millisecond."""
        with self._transaction(write=False) as cur:
            cur.execute(
                "SELECT count(*) FROM feishu_hire_withdrawal WHERE status = ? AND app_id = ? AND trans_time = ?",
                (PAID, app_id, trans_time),
            )
            return bool(cur.fetchone()[0])

    def trans_time_range(self, dag_id: str, run_id: str) -> tuple[int, int] | None:
        """The first and last ``trans_time`` paid in a DAG run, or None when it paid nothing."""
        with self._transaction(write=False) as cur:
            cur.execute(
                "SELECT min(trans_time), max(trans_time) FROM feishu_hire_withdrawal "
                "WHERE status = ? AND dag_id = ? AND run_id = ?",
                (PAID, dag_id, run_id),
            )
            low, high = cur.fetchone()
        return None if low is None else (int(low), int(high))

    def record_reconciliation(self, record: Reconciliation, *, dag_id: str, run_id: str, task_id: str) -> int:
        """Keep a reconciliation's window, our totals and every disagreement; returns its id."""
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO feishu_hire_reconciliation (app_id, start_trans_time, end_trans_time, accounts, "
                "point_bonus, mismatches, dag_id, run_id, task_id, reconciled_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    record.app_id,
                    record.start_trans_time,
                    record.end_trans_time,
                    len(record.ledger_points),
                    sum(record.ledger_points.values()),
                    len(record.mismatches),
                    dag_id,
                    run_id,
                    task_id,
                    _now(),
                ),
            )
            (record_id,) = cur.fetchone()
            for mismatch in record.mismatches:
                cur.execute(
                    "INSERT INTO feishu_hire_reconciliation_mismatch VALUES (?, ?, ?, ?)",
                    (record_id, mismatch.referral_account_id, mismatch.ledger_point_bonus, mismatch.feishu_point_bonus),
                )
        return int(record_id)

    def reconciliations(self, app_id: str) -> list[Reconciliation]:
        """Every recorded reconciliation of ``app_id``, oldest first, with its disagreements."""
        with self._transaction(write=False) as cur:
            cur.execute(
                "SELECT id, start_trans_time, end_trans_time FROM feishu_hire_reconciliation "
                "WHERE app_id = ? ORDER BY id",
                (app_id,),
            )
            found = cur.fetchall()
            cur.execute(
                "SELECT m.reconciliation_id, m.referral_account_id, m.ledger_point_bonus, m.feishu_point_bonus "
                "FROM feishu_hire_reconciliation_mismatch m JOIN feishu_hire_reconciliation r "
                "ON r.id = m.reconciliation_id WHERE r.app_id = ? ORDER BY 1, 2",
                (app_id,),
            )
            mismatches: dict[int, list[Mismatch]] = {}
            for record_id, account, ours, theirs in cur.fetchall():
                mismatches.setdefault(record_id, []).append(Mismatch(account, int(ours), int(theirs)))
        return [
            Reconciliation(app_id, int(start), int(end), {}, tuple(mismatches.get(record_id, ())))
            for record_id, start, end in found
        ]

    def registered_account(self, app_id: str, referrer: str) -> str | None:
        """The account id Feishu answered when ``referrer`` was registered through this ledger, if it was."""
        with self._transaction(write=False) as cur:
            cur.execute(
                "SELECT referral_account_id FROM feishu_hire_registration WHERE app_id = ? AND referrer = ?",
                (app_id, referrer),
            )
            found = cur.fetchone()
        return None if found is None else str(found[0])

    def known_accounts(self, app_id: str) -> list[str]:
        """Every referral account this ledger knows for one app and tenant: registered, or ever withdrawn.

        An account named by a balance event gets a withdrawal row (paid, skipped or held)
        when its run looks at it, so this is what a sweep re-reads when events were lost.
        """
        with self._transaction(write=False) as cur:
            cur.execute(
                "SELECT referral_account_id FROM feishu_hire_withdrawal WHERE app_id = ? UNION "
                "SELECT referral_account_id FROM feishu_hire_registration WHERE app_id = ? ORDER BY 1",
                (app_id, app_id),
            )
            return [str(account) for (account,) in cur.fetchall()]

    def record_registration(self, app_id: str, referrer: str, referral_account_id: str) -> None:
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO feishu_hire_registration VALUES (?, ?, ?, ?) "
                "ON CONFLICT (app_id, referrer) DO UPDATE SET referral_account_id = excluded.referral_account_id",
                (app_id, referrer, referral_account_id, _now()),
            )

    def record_preview(self, task: TaskTry, balances: Mapping[str, tuple[int, Mapping[str, Decimal]]]) -> int:
        """Keep what an approver will be shown: each account's points and cash per currency; returns its id."""
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO feishu_hire_payout_preview (dag_id, run_id, run_generation, task_id, previewed_at) "
                "VALUES (?, ?, ?, ?, ?) RETURNING id",
                (task.dag_id, task.run_id, task.run_generation, task.task_id, _now()),
            )
            (preview_id,) = cur.fetchone()
            for account, (points, cash) in balances.items():
                cur.execute(
                    "INSERT INTO feishu_hire_payout_preview_account VALUES (?, ?, ?, ?)",
                    (preview_id, account, points, _cash_json(cash)),
                )
        return int(preview_id)

    def previewed(self, payout_preview_id: int, referral_account_id: str) -> tuple[int, dict[str, Decimal]] | None:
        """The points and cash an approver was shown for one account, or None when it was not shown."""
        with self._transaction(write=False) as cur:
            cur.execute(
                "SELECT point_bonus, cash_bonus FROM feishu_hire_payout_preview_account "
                "WHERE payout_preview_id = ? AND referral_account_id = ?",
                (payout_preview_id, referral_account_id),
            )
            found = cur.fetchone()
        if found is None:
            return None
        return int(found[0]), {currency: Decimal(amount) for currency, amount in json.loads(found[1]).items()}

    def record_approval(self, approval: Approval) -> None:
        """Keep a payout decision; every decision is kept, a cleared run's too."""
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO feishu_hire_approval (dag_id, run_id, task_id, decision, decided_by, decided_at, "
                "accounts, point_bonus, cash_bonus, run_generation, triggered_by, payout_preview_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    approval.dag_id,
                    approval.run_id,
                    approval.task_id,
                    approval.decision,
                    approval.decided_by,
                    approval.decided_at,
                    approval.accounts,
                    approval.point_bonus,
                    json.dumps(approval.cash_bonus, sort_keys=True),
                    approval.run_generation,
                    approval.triggered_by,
                    approval.payout_preview_id,
                ),
            )

    def approvals(self, dag_id: str, run_id: str, run_generation: int | None = None) -> list[Approval]:
        """A DAG run's payout decisions (of one generation, if given), oldest first."""
        where, params = "dag_id = ? AND run_id = ?", [dag_id, run_id]
        if run_generation is not None:
            where += f" AND run_generation = {int(run_generation)}"
        with self._transaction(write=False) as cur:
            cur.execute(
                "SELECT dag_id, run_id, task_id, decision, decided_by, decided_at, accounts, point_bonus, cash_bonus, "
                f"run_generation, triggered_by, payout_preview_id FROM feishu_hire_approval WHERE {where} ORDER BY id",
                params,
            )
            found = cur.fetchall()
        return [
            Approval(dag, run, task, decision, who, when, int(accounts), int(points), json.loads(cash),
                     int(generation), triggered, None if preview is None else int(preview))
            for dag, run, task, decision, who, when, accounts, points, cash, generation, triggered, preview in found
        ]  # fmt: skip

    # -- internals ----------------------------------------------------------------------------

    def _insert(self, cur: _Cursor, intent: Intent, status: str, now: str) -> None:
        cur.execute(
            "INSERT INTO feishu_hire_withdrawal (external_order_id, referral_account_id, withdraw_bonus_type, "
            "app_id, dag_id, run_id, task_id, map_index, requested_at, status, sends, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?) ON CONFLICT (external_order_id) DO NOTHING",
            (
                intent.external_order_id,
                intent.referral_account_id,
                ",".join(map(str, intent.withdraw_bonus_type)),
                intent.app_id,
                intent.dag_id,
                intent.run_id,
                intent.task_id,
                intent.map_index,
                now,
                status,
                now,
            ),
        )

    _COLUMNS = (
        "external_order_id, referral_account_id, status, dag_id, run_id, task_id, sends, trans_time, point_bonus, "
        "error_code, error_msg, log_id, raw_answer, run_generation, (SELECT m.payroll_batch_id FROM "
        "feishu_hire_payroll_batch_member m WHERE m.external_order_id = feishu_hire_withdrawal.external_order_id)"
    )

    def _select(self, where: str, params: Sequence[Any]) -> list[LedgerRow]:
        with self._transaction(write=False) as cur:
            return self._select_in(cur, where, params)

    def _select_in(self, cur: _Cursor, where: str, params: Sequence[Any]) -> list[LedgerRow]:
        """Rows matching ``where``, with their cash, in two queries whatever their number."""
        selected = f"SELECT external_order_id FROM feishu_hire_withdrawal WHERE {where}"
        cur.execute(f"SELECT {self._COLUMNS} FROM feishu_hire_withdrawal WHERE {where} ORDER BY 1", params)
        found = cur.fetchall()
        cur.execute(
            "SELECT external_order_id, currency_type, amount FROM feishu_hire_withdrawal_cash "
            f"WHERE external_order_id IN ({selected})",
            params,
        )
        cash: dict[str, dict[str, Decimal]] = {}
        for order_id, currency, amount in cur.fetchall():
            cash.setdefault(order_id, {})[currency] = Decimal(str(amount))
        return [_ledger_row(values, cash.get(values[0], {})) for values in found]

    def _paid_rows(self, cur: _Cursor, order_ids: Sequence[str]) -> list[LedgerRow]:
        if not order_ids:
            return []
        marks = ", ".join("?" for _ in order_ids)
        return self._select_in(cur, f"status = ? AND external_order_id IN ({marks})", [PAID, *order_ids])

    def _row(self, cur: _Cursor, order_id: str, *, lock: bool = False) -> LedgerRow:
        """The row; ``lock`` holds it until the transaction ends (SQLite's BEGIN IMMEDIATE holds the file)."""
        cur.execute(
            f"SELECT {self._COLUMNS} FROM feishu_hire_withdrawal WHERE external_order_id = ?"
            + (" FOR UPDATE" if lock and self.dialect == "postgresql" else ""),
            (order_id,),
        )
        values = cur.fetchone()
        cur.execute(
            "SELECT currency_type, amount FROM feishu_hire_withdrawal_cash WHERE external_order_id = ?",
            (order_id,),
        )
        return _ledger_row(values, {currency: Decimal(str(amount)) for currency, amount in cur.fetchall()})

    def _check_same_withdrawal(self, cur: _Cursor, intent: Intent, row: LedgerRow) -> None:
        """An order id stands for one withdrawal: the same account, app and bonus types, or it is refused."""
        cur.execute(
            "SELECT app_id, withdraw_bonus_type FROM feishu_hire_withdrawal WHERE external_order_id = ?",
            (intent.external_order_id,),
        )
        app_id, kinds = cur.fetchone()
        wanted = ",".join(map(str, intent.withdraw_bonus_type))
        if row.referral_account_id != intent.referral_account_id:
            raise OrderIdConflict(
                f"external_order_id {intent.external_order_id} already belongs to referral account "
                f"{row.referral_account_id} in the ledger, so it cannot be used for {intent.referral_account_id}: "
                "Feishu would answer with the other account's withdrawal"
            )
        if (app_id, kinds) != (intent.app_id, wanted):
            raise OrderIdConflict(
                f"external_order_id {intent.external_order_id} was used by app {app_id} for bonus types {kinds}, "
                f"not app {intent.app_id} for {wanted}: Feishu would replay the first withdrawal. Withdraw "
                "the rest in a new DAG run (a new order id)"
            )

    def _finish_attempt(
        self,
        cur: _Cursor,
        claim: Claim,
        outcome: str,
        now: str,
        *,
        code: int | None = None,
        msg: str | None = None,
        log_id: str | None = None,
    ) -> None:
        if claim.attempt_id is not None:
            cur.execute(
                "UPDATE feishu_hire_withdrawal_attempt SET finished_at = ?, outcome = ?, error_code = ?, "
                "error_msg = ?, log_id = ? WHERE id = ?",
                (now, outcome, code, msg, log_id, claim.attempt_id),
            )

    def _money(self, amount: Decimal) -> Any:
        return amount if self.dialect == "postgresql" else format(amount, "f")


@dataclass(frozen=True)
class Lease:
    """The try holding a task instance's lease; ``held`` says whether it is the one that asked."""

    try_number: int
    run_generation: int
    held: bool

    def describe(self, task: TaskTry) -> str:
        """Why ``task`` may not send, for a person."""
        holder = TaskTry(
            task.dag_id, task.run_id, task.task_id, task.map_index, self.try_number, None, self.run_generation
        )
        return _superseded_message(task, holder)


def _same_try(task: TaskTry, holder: TaskTry) -> bool:
    return (task.run_generation, task.try_number, task.ti_id) == (
        holder.run_generation,
        holder.try_number,
        holder.ti_id,
    )


def _newer(task: TaskTry, holder: TaskTry) -> bool:
    """A later run generation, or a later try of the same one: Airflow never runs an older try again."""
    if task.run_generation != holder.run_generation:
        return task.run_generation > holder.run_generation
    return task.try_number > holder.try_number


def _superseded_message(task: TaskTry, holder: TaskTry) -> str:
    if holder.run_generation > task.run_generation:
        return f"DAG run {task.run_id} was deleted and created again: this try of the deleted run sends nothing"
    if holder.run_generation == task.run_generation and holder.try_number > task.try_number:
        return f"try {holder.try_number} of this task has started, so try {task.try_number} sends nothing"
    return (
        f"the ledger holds try {holder.try_number} of task {task.task_id} in DAG run {task.run_id} from another "
        "task instance: the run was deleted and created again under the same run_id with the same start date, "
        "so it cannot be told from the deleted run and sends nothing. Trigger it under a new run_id"
    )


class _Cursor:
    """A DB-API cursor that takes ``?`` placeholders on every database."""

    def __init__(self, cursor: Any, translate: Callable[[str], str]) -> None:
        self._cursor = cursor
        self._translate = translate

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._cursor.execute(self._translate(sql), tuple(params))

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cursor.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    def columns(self) -> set[str]:
        """The column names of the last query's result."""
        return {described[0] for described in self._cursor.description}


def raw_json(data: object) -> str:
    """An answer's ``data`` as JSON text for the ledger, Decimals as they arrived."""
    return json.dumps(data, default=str, ensure_ascii=False, sort_keys=True)
