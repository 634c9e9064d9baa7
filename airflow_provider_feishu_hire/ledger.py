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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from airflow_provider_feishu_hire.withdrawal import Withdrawal

SKIPPED, SENDING, PAID, REJECTED, REVIEW = "skipped", "sending", "paid", "rejected", "review"
UNSENT = "unsent"  # an attempt's outcome only: refused before it reached Feishu (429, token)
OPEN_STATUSES = (SENDING, REVIEW)  # money may have moved and payroll cannot show it yet

DEFAULT_LEDGER_CONN_ID = "feishu_hire_ledger"
SCHEMA_VERSION = 2  # 2: reconciliations, registrations, approvals
_MIGRATION_LOCK = 7_463_021_905  # any constant: PostgreSQL's advisory lock for migrate()
# An attempt started this recently and not finished may still be waiting for Feishu's answer;
# an older one died with its worker. (A call's retries end within the connection's budget.)
IN_FLIGHT_SECONDS = 600
DIALECTS = ("sqlite", "postgresql")

# (SQLite, PostgreSQL) spellings; everything else in the DDL is common to both.
_TYPES = {
    "money": ("TEXT", "NUMERIC"),  # SQLite's NUMERIC affinity would turn "0.10" into a REAL
    "serial": ("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY"),
    "seconds": ("REAL", "DOUBLE PRECISION"),  # wall-clock times, not money
}

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
        PRIMARY KEY (external_order_id, bonus_type, currency))""",
    """CREATE TABLE IF NOT EXISTS feishu_hire_task_lease (
        dag_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        map_index INTEGER NOT NULL,
        try_number INTEGER NOT NULL,
        taken_at TEXT NOT NULL,
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


class LedgerError(ValueError):
    """The ledger cannot do what was asked, and waiting will not change it; the message says what to do."""


class OrderIdConflict(ValueError):
    """An ``external_order_id`` the ledger already holds for another account: refused before sending."""


class NeedsReview(LedgerError):
    """A withdrawal whose money may have moved in an amount the ledger cannot state."""


@dataclass(frozen=True)
class Intent:
    """What is about to be sent, and by whom: recorded before the call."""

    external_order_id: str
    referral_account_id: str
    withdraw_bonus_type: Sequence[int]
    app_id: str
    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    try_number: int = 1


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
        return f"account {self.referral_account_id} order {self.external_order_id} {self.status}"


def _ledger_row(values: Sequence[Any], cash: dict[str, Decimal]) -> LedgerRow:
    order_id, account, status, dag_id, run_id, task_id, sends, trans_time, points, code, msg, log_id, raw = values
    withdrawal = Withdrawal(account, order_id, int(trans_time), int(points or 0), cash) if status == PAID else None
    return LedgerRow(
        order_id, account, status, dag_id, run_id, task_id, sends, code, msg, log_id, withdrawal, raw, cash
    )


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
            if version is None or version < SCHEMA_VERSION:  # the DDL above added what was missing
                cur.execute("INSERT INTO feishu_hire_ledger_schema VALUES (?, ?)", (SCHEMA_VERSION, _now()))
            elif version > SCHEMA_VERSION:
                raise LedgerError(
                    f"the ledger's schema is version {version}, newer than this provider's {SCHEMA_VERSION}: "
                    "upgrade airflow-provider-feishu-hire on every worker"
                )

    # -- before and after a withdrawal --------------------------------------------------------

    def claim(self, intent: Intent) -> Claim:
        """Record the intent to send, or return what the ledger already knows of this order id.

        Raises :class:`OrderIdConflict` when the order id belongs to another account and
        :class:`NeedsReview` when a person has to settle it first. Otherwise the row is
        ``sending`` when this returns, committed, before anything goes to Feishu.
        """
        now = _now()
        with self._transaction() as cur:
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
            # The row was just inserted (sends 0), or skipped/rejected/sending before.
            uncertain = row.status == SENDING and row.sends > 0
            cur.execute(
                "UPDATE feishu_hire_withdrawal SET status = ?, sends = sends + 1, updated_at = ? "
                "WHERE external_order_id = ? AND status NOT IN (?, ?)",
                (SENDING, now, intent.external_order_id, PAID, REVIEW),
            )
            cur.execute(
                "INSERT INTO feishu_hire_withdrawal_attempt (external_order_id, dag_id, run_id, task_id, "
                "map_index, try_number, started_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    intent.external_order_id,
                    intent.dag_id,
                    intent.run_id,
                    intent.task_id,
                    intent.map_index,
                    intent.try_number,
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
        with self._transaction() as cur:
            self._insert(cur, intent, SKIPPED, _now())
            row = self._row(cur, intent.external_order_id, lock=True)
            self._check_same_withdrawal(cur, intent, row)
            if row.status != SKIPPED or row.sends:
                return False  # sent before: its zero balance may be that send's payment
            cur.execute(
                "UPDATE feishu_hire_withdrawal SET error_msg = ?, updated_at = ? WHERE external_order_id = ?",
                (reason, _now(), intent.external_order_id),
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
        (``review``). ``reached`` false says this attempt never got past Feishu's gateway or
        auth layer (a 429, a rejected token): it counts as no send for later judgements.
        """
        order_id = claim.intent.external_order_id
        now = _now()
        with self._transaction() as cur:
            row = self._row(cur, order_id, lock=True)
            if row.status == SENDING and not retryable:
                in_flight, unknown = self._other_attempts(cur, claim)
                if in_flight:
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

    # -- which try of a task is the live one ---------------------------------------------------

    def take_lease(self, intent: Intent) -> int:
        """Record that ``intent.try_number`` of its task instance is running; return the newest try on record.

        A try whose worker was killed can live on as an orphan beside its retry. Both are
        safe (same order ids, one ledger) but the orphan spends the same rate limit; a
        batch that sees a newer try in the lease stops sending.
        """
        key = (intent.dag_id, intent.run_id, intent.task_id, intent.map_index)
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO feishu_hire_task_lease (dag_id, run_id, task_id, map_index, try_number, taken_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (dag_id, run_id, task_id, map_index) DO UPDATE SET "
                "try_number = excluded.try_number, taken_at = excluded.taken_at "
                "WHERE feishu_hire_task_lease.try_number < excluded.try_number",
                (*key, intent.try_number, _now()),
            )
            return self._lease_holder(cur, key)

    def lease_holder(self, intent: Intent) -> int:
        """The newest try of ``intent``'s task instance that has taken the lease."""
        with self._transaction(write=False) as cur:
            return self._lease_holder(cur, (intent.dag_id, intent.run_id, intent.task_id, intent.map_index))

    def _lease_holder(self, cur: _Cursor, key: tuple[str, str, str, int]) -> int:
        cur.execute(
            "SELECT try_number FROM feishu_hire_task_lease WHERE dag_id = ? AND run_id = ? AND task_id = ? "
            "AND map_index = ?",
            key,
        )
        row = cur.fetchone()
        return int(row[0]) if row else 0

    # -- one pace for every worker -----------------------------------------------------------

    def reserve_slot(self, pace_key: str, interval: float) -> float:
        """Reserve the next free send time (epoch seconds) of ``pace_key``, ``interval`` after the last one.

        One short transaction on a locked row: however many threads, processes and
        machines ask at once, each gets its own slot, and consecutive slots are at least
        ``interval`` apart. Callers sleep until their slot (clocks agree through NTP).
        """
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO feishu_hire_pace (pace_key, next_slot) VALUES (?, ?) ON CONFLICT (pace_key) DO NOTHING",
                (pace_key, 0.0),
            )
            lock = " FOR UPDATE" if self.dialect == "postgresql" else ""
            cur.execute(f"SELECT next_slot FROM feishu_hire_pace WHERE pace_key = ?{lock}", (pace_key,))
            (next_slot,) = cur.fetchone()
            slot = max(time.time(), float(next_slot))
            cur.execute("UPDATE feishu_hire_pace SET next_slot = ? WHERE pace_key = ?", (slot + interval, pace_key))
        return slot

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
    ) -> list[LedgerRow]:
        """Withdrawals by DAG run, by ``trans_time`` in ``[start, end)`` (ms; paid ones only have one), by
        status, or first requested before an ISO 8601 UTC time."""
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

    def record_registration(self, app_id: str, referrer: str, referral_account_id: str) -> None:
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO feishu_hire_registration VALUES (?, ?, ?, ?) "
                "ON CONFLICT (app_id, referrer) DO UPDATE SET referral_account_id = excluded.referral_account_id",
                (app_id, referrer, referral_account_id, _now()),
            )

    def record_approval(self, approval: Approval) -> None:
        """Keep a payout decision; every decision is kept, a cleared run's too."""
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO feishu_hire_approval (dag_id, run_id, task_id, decision, decided_by, decided_at, "
                "accounts, point_bonus, cash_bonus) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                ),
            )

    def approvals(self, dag_id: str, run_id: str) -> list[Approval]:
        """A DAG run's payout decisions, oldest first."""
        with self._transaction(write=False) as cur:
            cur.execute(
                "SELECT dag_id, run_id, task_id, decision, decided_by, decided_at, accounts, point_bonus, cash_bonus "
                "FROM feishu_hire_approval WHERE dag_id = ? AND run_id = ? ORDER BY id",
                (dag_id, run_id),
            )
            found = cur.fetchall()
        return [
            Approval(dag, run, task, decision, who, when, int(accounts), int(points), json.loads(cash))
            for dag, run, task, decision, who, when, accounts, points, cash in found
        ]

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
        "error_code, error_msg, log_id, raw_answer"
    )

    def _select(self, where: str, params: Sequence[Any]) -> list[LedgerRow]:
        """Rows matching ``where``, with their cash, in two queries whatever their number."""
        with self._transaction(write=False) as cur:
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


def raw_json(data: object) -> str:
    """An answer's ``data`` as JSON text for the ledger, Decimals as they arrived."""
    return json.dumps(data, default=str, ensure_ascii=False, sort_keys=True)
