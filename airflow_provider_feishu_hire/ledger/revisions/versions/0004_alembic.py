"""Alembic keeps the ledger's version from here on: named locks, the payouts console's indexes, and a
mark that makes releases before Alembic refuse this ledger.

A ledger stamped 3 by a release before Alembic may lack tables or indexes that release created on a
later start (every start created whatever was missing): they are created here when missing.

Revision ID: 0004
"""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

from airflow_provider_feishu_hire.ledger.migrations import PRE_ALEMBIC_REFUSAL
from airflow_provider_feishu_hire.ledger.schema import CONSOLE_INDEXES, ledger_schema, metadata

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    metadata.create_all(conn, checkfirst=True)  # the named locks' table, and any table a release left out
    inspector = sa.inspect(conn)
    for index in CONSOLE_INDEXES:
        assert index.table is not None
        if index.name not in {found["name"] for found in inspector.get_indexes(index.table.name)}:
            index.create(conn)
    # Releases before Alembic refuse a ledger whose feishu_hire_ledger_schema holds a version above theirs (3).
    conn.execute(
        sa.insert(ledger_schema).values(
            version=PRE_ALEMBIC_REFUSAL, migrated_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        )
    )
