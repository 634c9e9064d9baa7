"""Creating and upgrading the ledger's tables with Alembic, as Airflow does for its own database.

The revisions live in ``revisions/versions`` and their version in the ledger's own table,
``feishu_hire_alembic_version``. Releases before Alembic recorded a schema version (1, 2 or 3)
in ``feishu_hire_ledger_schema``: such a ledger is stamped with the matching revision, then
upgraded in place. A ledger at a revision this release does not know was written by a newer
release and is refused ("upgrade"), as is one whose old version table says it is newer.

Workers that start together migrate one at a time: each takes the ``migrate`` named lock
(a locked row) first. SQLite and PostgreSQL run the whole upgrade in that transaction;
MySQL/MariaDB commit every DDL statement, which would release the lock, so there the upgrade
runs on a second connection while the first holds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import column, func, inspect, select, table
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from airflow_provider_feishu_hire.ledger.database import Database, dialect_of, take_lock
from airflow_provider_feishu_hire.ledger.model import LedgerError
from airflow_provider_feishu_hire.ledger.schema import ledger_schema, lock

VERSION_TABLE = "feishu_hire_alembic_version"
SCRIPTS = Path(__file__).with_name("revisions")
# The revision each schema version of the releases before Alembic corresponds to.
PRE_ALEMBIC_REVISIONS = {1: "0001", 2: "0002", 3: "0003"}
# What revision 0004 writes there, so that those releases refuse an upgraded ledger ("upgrade").
PRE_ALEMBIC_REFUSAL = 4
_MIGRATION_LOCK = "migrate"
_VERSION = table(VERSION_TABLE, column("version_num"))


def scripts() -> ScriptDirectory:
    return ScriptDirectory(str(SCRIPTS))


def head() -> str:
    found = scripts().get_current_head()
    assert found is not None
    return found


def current_revision(conn: Connection) -> str | None:
    """The ledger's Alembic revision, or None before Alembic (or on an empty database). Read quietly: every
    task that opens the ledger asks."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(select(_VERSION.c.version_num)).scalar_one_or_none()


def migrate(db: Database, target: str | None = None) -> None:
    """Create the tables, or upgrade them to this release's head (or ``target``, for tests of upgrades);
    refuse a ledger a newer release wrote."""
    engine = db.engine
    target = target or head()
    with engine.connect() as conn:
        if current_revision(conn) == target and not _newer_pre_alembic(conn):
            return  # the common case: nothing to do, nothing locked
    _create_lock_table(db)
    with db._begin() as conn:
        take_lock(conn, _MIGRATION_LOCK)
        if dialect_of(conn) == "mysql":  # no transactional DDL: see the module's doc
            with engine.begin() as ddl:
                _upgrade(ddl, target)
        else:
            _upgrade(conn, target)


def _upgrade(conn: Connection, target: str) -> None:
    script = scripts()

    def upgrade(revision: Any, _context: Any) -> Any:
        return script._upgrade_revs(target, revision)  # what `alembic upgrade head` runs

    context = MigrationContext.configure(
        conn, opts={"version_table": VERSION_TABLE, "script": script, "fn": upgrade, "target_metadata": None}
    )
    current = context.get_current_revision()
    newer = _newer_pre_alembic(conn)
    if newer is not None:
        raise _refuse(f"schema version {newer}")
    if current is None:
        version = _pre_alembic_version(conn)
        if version is not None:
            if version not in PRE_ALEMBIC_REVISIONS:
                raise _refuse(f"schema version {version}")
            context.stamp(script, PRE_ALEMBIC_REVISIONS[version])
    else:
        try:
            script.get_revision(current)
        except CommandError:
            raise _refuse(f"revision {current}") from None
    with Operations.context(context):
        context.run_migrations()


def _pre_alembic_version(conn: Connection) -> int | None:
    if not inspect(conn).has_table(ledger_schema.name):
        return None
    found = conn.execute(select(func.max(ledger_schema.c.version))).scalar_one()
    return None if found is None else int(found)


def _newer_pre_alembic(conn: Connection) -> int | None:
    """A version in the old version table above any this release writes (a newer release's mark), or None."""
    version = _pre_alembic_version(conn)
    return version if version is not None and version > PRE_ALEMBIC_REFUSAL else None


def _refuse(what: str) -> LedgerError:
    return LedgerError(
        f"the ledger is at {what}, newer than this provider's ({head()}): "
        "upgrade airflow-provider-feishu-hire on every worker"
    )


def _create_lock_table(db: Database) -> None:
    """The named locks' table, before anything can be locked; workers racing to create it all succeed."""
    for attempt in range(3):
        try:
            with db._begin() as conn:
                lock.create(conn, checkfirst=True)
            return
        except DBAPIError:  # another worker created it between our check and our CREATE
            if attempt == 2:
                raise
