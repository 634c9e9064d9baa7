"""The ledger's database: an SQLAlchemy engine, one short transaction per call, and the few things
every database spells its own way, written once here with SQLAlchemy's constructs.

- SQLite: each connection waits for another writer's lock (``busy_timeout``), runs in WAL
  with ``synchronous=FULL`` (every commit survives a power cut), and writers take the file
  lock up front (``BEGIN IMMEDIATE``): two that both start by reading would otherwise
  deadlock on the upgrade instead of waiting their turn. Readers do not block them.
- PostgreSQL and MySQL/MariaDB: every transaction runs READ COMMITTED; what a decision
  depends on is locked with ``SELECT ... FOR UPDATE``. InnoDB's default, REPEATABLE READ,
  would read the snapshot a transaction began with after waiting for a lock, and takes gap
  locks that deadlock concurrent inserts of new order ids.
- An insert that leaves an existing row alone: ``ON CONFLICT DO NOTHING`` (PostgreSQL,
  SQLite), ``ON DUPLICATE KEY UPDATE`` of the key to itself (MySQL/MariaDB).
- Whole days of epoch milliseconds: integer division, ``/`` of two integers except on
  MySQL/MariaDB, whose ``/`` gives a decimal rounded to four places (:class:`day_number`).
- Exact sums of money, which SQLite holds as decimal text (:func:`money_sum`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from sqlalchemy import BigInteger, Integer, Table, case, cast, create_engine, event, func, select, type_coerce
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection, CursorResult, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.pool import NullPool
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import NullType

from airflow_provider_feishu_hire.ledger import schema
from airflow_provider_feishu_hire.ledger.model import LedgerError

# What a DB-API connect function is for, given with it: Ledger(connect, "sqlite").
DIALECT_URLS = {"sqlite": "sqlite://", "postgresql": "postgresql+psycopg2://", "mysql": "mysql+pymysql://"}
DIALECTS = tuple(DIALECT_URLS)
_WRITE = "feishu_hire_write"  # execution option: this transaction writes (SQLite: BEGIN IMMEDIATE)
_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert, "mysql": mysql.insert, "mariadb": mysql.insert}


def dialect_of(engine: Engine | Connection) -> str:
    """``sqlite``, ``postgresql`` or ``mysql`` (MariaDB included)."""
    name = engine.dialect.name
    return "mysql" if name == "mariadb" else name


def engine_for(connect: Callable[[], Any], dialect: str) -> Engine:
    """An engine whose connections ``connect`` opens (a DB-API connect function for ``dialect``)."""
    if dialect not in DIALECT_URLS:
        raise LedgerError(f"the ledger supports {', '.join(DIALECTS)}, not {dialect!r}")
    pooling: dict[str, Any] = {"poolclass": NullPool} if dialect == "sqlite" else {"max_overflow": -1}
    return create_engine(DIALECT_URLS[dialect], creator=connect, **pooling)


def prepare(engine: Engine) -> Engine:
    """The engine as the ledger uses it: SQLite's pragmas and BEGIN, READ COMMITTED elsewhere (module doc)."""
    if dialect_of(engine) == "sqlite":
        if not event.contains(engine, "connect", _sqlite_connect):
            event.listen(engine, "connect", _sqlite_connect)
            event.listen(engine, "begin", _sqlite_begin)
        return engine
    return engine.execution_options(isolation_level="READ COMMITTED")


def _sqlite_connect(dbapi_connection: Any, _record: object) -> None:
    # SQLAlchemy's begin event (below) starts every transaction; the driver must not start its own.
    with suppress(AttributeError):
        dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout = 60000")
        cursor.execute("PRAGMA synchronous = FULL")
        with suppress(Exception):  # switching needs a moment alone; another connection will do it
            cursor.execute("PRAGMA journal_mode")
            if cursor.fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
    finally:
        cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.get_execution_options().get(_WRITE) else "BEGIN")


class Database:
    """An engine and the ledger's transactions on it. Safe to share between threads: each transaction
    takes a connection of its own from the engine's pool."""

    def __init__(self, engine: Engine, connect: Callable[[], Any] | None = None) -> None:
        self.engine = prepare(engine)
        self.dialect = dialect_of(engine)
        # A DB-API connection outside the ledger's transactions, for tests and tools.
        self._connect: Callable[[], Any] = connect or engine.raw_connection

    @contextmanager
    def _begin(self, *, write: bool = True) -> Iterator[Connection]:
        """One transaction, committed when the block ends, rolled back if it raises."""
        with self.engine.connect() as conn:
            if write:
                conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    def close(self) -> None:
        """Close the pooled connections; a later call opens new ones."""
        self.engine.dispose()

    def _connection(self) -> Any:
        """A new DB-API connection to the ledger's database (the caller closes it)."""
        return self._connect()


def insert_new(conn: Connection, table: Table, values: Mapping[str, Any]) -> int:
    """Insert a row unless one with its primary key exists (then change nothing); the rows inserted.

    On MySQL/MariaDB the count is 1 either way (the driver reports found rows): use it only
    on PostgreSQL and SQLite, or not at all.
    """
    statement: Any = _INSERTS[conn.dialect.name](table).values(dict(values))
    if isinstance(statement, mysql.Insert):
        key = table.primary_key.columns[0]
        done = statement.on_duplicate_key_update({key.name: key})
    else:
        done = statement.on_conflict_do_nothing(index_elements=list(table.primary_key.columns))
    return int(conn.execute(done).rowcount)


def upsert(conn: Connection, table: Table, values: Mapping[str, Any], update: Sequence[str]) -> None:
    """Insert a row, or set ``update`` to these values on the row with its primary key."""
    statement: Any = _INSERTS[conn.dialect.name](table).values(dict(values))
    if isinstance(statement, mysql.Insert):
        conn.execute(statement.on_duplicate_key_update({name: statement.inserted[name] for name in update}))
    else:
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=list(table.primary_key.columns),
                set_={name: statement.excluded[name] for name in update},
            )
        )


def inserted_id(result: CursorResult[Any]) -> int:
    """The id the database gave the row an insert made."""
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def take_lock(conn: Connection, name: str) -> None:
    """Hold the named lock until this transaction ends (a row of ``feishu_hire_lock``, locked)."""
    insert_new(conn, schema.lock, {"name": name})
    conn.execute(select(schema.lock.c.name).where(schema.lock.c.name == name).with_for_update()).one()


DAY_MS = 86_400_000


class day_number(FunctionElement[int]):
    """The UTC day number (days since 1970-01-01) of an epoch-milliseconds column, by integer division
    (``trans_time // 86400000``; SQLAlchemy's own ``//`` floors a decimal on MySQL, rounded first)."""

    type = BigInteger()
    inherit_cache = True
    name = "day_number"


@compiles(day_number)
def _day_number(element: day_number, compiler: SQLCompiler, **kw: Any) -> str:
    return f"({compiler.process(element.clauses, **kw)} / {DAY_MS})"


@compiles(day_number, "mysql")
@compiles(day_number, "mariadb")
def _day_number_div(element: day_number, compiler: SQLCompiler, **kw: Any) -> str:
    return f"({compiler.process(element.clauses, **kw)} DIV {DAY_MS})"


def money_sum(dialect: str, amount: ColumnElement[Any]) -> tuple[ColumnElement[Any], ...]:
    """Columns that sum a :class:`~schema.Money` column exactly: select them all, group by all but the first.

    PostgreSQL and MySQL/MariaDB: ``(sum,)``, their exact decimal sum as the driver gives it. SQLite, whose
    money is decimal text: ``(digits, places)``, the amounts of each number of decimal places added as
    integers ("12.50" is 1250 at 2 places), so the sum is ``digits`` scaled by 10**-places; exact, and an
    overflow is an error, never a rounding.
    """
    if dialect != "sqlite":
        return (type_coerce(func.sum(amount), NullType()),)
    point = func.instr(amount, ".")
    places = case((point == 0, 0), else_=func.length(amount) - point)
    return func.sum(cast(func.replace(amount, ".", ""), Integer)), places
