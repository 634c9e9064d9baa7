"""Schema 2: reconciliations with Feishu (and their disagreements), registrations, payout approvals.

Revision ID: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from airflow_provider_feishu_hire.ledger.schema import AIRFLOW_ID, FEISHU_ID, SHORT, TIME, serial

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feishu_hire_reconciliation",
        sa.Column("id", serial(), primary_key=True, autoincrement=True),
        sa.Column("app_id", sa.String(FEISHU_ID), nullable=False),
        sa.Column("start_trans_time", sa.BigInteger, nullable=False),
        sa.Column("end_trans_time", sa.BigInteger, nullable=False),
        sa.Column("accounts", sa.Integer, nullable=False),
        sa.Column("point_bonus", sa.BigInteger, nullable=False),
        sa.Column("mismatches", sa.Integer, nullable=False),
        sa.Column("dag_id", sa.String(AIRFLOW_ID), nullable=False),
        sa.Column("run_id", sa.String(AIRFLOW_ID), nullable=False),
        sa.Column("task_id", sa.String(AIRFLOW_ID), nullable=False),
        sa.Column("reconciled_at", sa.String(TIME), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "feishu_hire_reconciliation_mismatch",
        sa.Column(
            "reconciliation_id",
            sa.BigInteger,
            sa.ForeignKey("feishu_hire_reconciliation.id"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("referral_account_id", sa.String(FEISHU_ID), primary_key=True),
        sa.Column("ledger_point_bonus", sa.BigInteger, nullable=False),
        sa.Column("feishu_point_bonus", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "feishu_hire_registration",
        sa.Column("app_id", sa.String(FEISHU_ID), primary_key=True),
        sa.Column("referrer", sa.String(320), primary_key=True),
        sa.Column("referral_account_id", sa.String(FEISHU_ID), nullable=False),
        sa.Column("registered_at", sa.String(TIME), nullable=False),
    )
    op.create_table(
        "feishu_hire_approval",
        sa.Column("id", serial(), primary_key=True, autoincrement=True),
        sa.Column("dag_id", sa.String(AIRFLOW_ID), nullable=False),
        sa.Column("run_id", sa.String(AIRFLOW_ID), nullable=False),
        sa.Column("task_id", sa.String(AIRFLOW_ID), nullable=False),
        sa.Column("decision", sa.String(SHORT), nullable=False),
        sa.Column("decided_by", sa.Text, nullable=False),
        sa.Column("decided_at", sa.String(TIME), nullable=False),
        sa.Column("accounts", sa.Integer, nullable=False),
        sa.Column("point_bonus", sa.BigInteger, nullable=False),
        sa.Column("cash_bonus", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
