"""Schema 1: withdrawals, their cash and attempts, the payroll table, task leases, the shared pace.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from airflow_provider_feishu_hire.ledger.schema import AIRFLOW_ID, FEISHU_ID, SHORT, TIME, Money, serial

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feishu_hire_ledger_schema",
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("migrated_at", sa.String(TIME), nullable=False),
    )
    op.create_table(
        "feishu_hire_withdrawal",
        sa.Column("external_order_id", sa.String(FEISHU_ID), primary_key=True),
        sa.Column("referral_account_id", sa.String(FEISHU_ID), nullable=False),
        sa.Column("withdraw_bonus_type", sa.String(SHORT), nullable=False),
        sa.Column("app_id", sa.String(FEISHU_ID), nullable=False),
        sa.Column("dag_id", sa.String(AIRFLOW_ID), nullable=False),
        sa.Column("run_id", sa.String(AIRFLOW_ID), nullable=False),
        sa.Column("task_id", sa.String(AIRFLOW_ID), nullable=False),
        sa.Column("map_index", sa.Integer, nullable=False),
        sa.Column("requested_at", sa.String(TIME), nullable=False),
        sa.Column("status", sa.String(SHORT), nullable=False),
        sa.Column("sends", sa.Integer, nullable=False, server_default="0"),
        sa.Column("trans_time", sa.BigInteger),
        sa.Column("point_bonus", sa.BigInteger),
        sa.Column("error_code", sa.BigInteger),
        sa.Column("error_msg", sa.Text),
        sa.Column("log_id", sa.String(FEISHU_ID * 2)),
        sa.Column("raw_answer", sa.Text),
        sa.Column("updated_at", sa.String(TIME), nullable=False),
    )
    op.create_index("feishu_hire_withdrawal_run", "feishu_hire_withdrawal", ["dag_id", "run_id"])
    op.create_index("feishu_hire_withdrawal_trans_time", "feishu_hire_withdrawal", ["trans_time"])
    op.create_table(
        "feishu_hire_withdrawal_cash",
        sa.Column(
            "external_order_id",
            sa.String(FEISHU_ID),
            sa.ForeignKey("feishu_hire_withdrawal.external_order_id"),
            primary_key=True,
        ),
        sa.Column("currency_type", sa.String(SHORT), primary_key=True),
        sa.Column("amount", Money, nullable=False),
    )
    op.create_table(
        "feishu_hire_withdrawal_attempt",
        sa.Column("id", serial(), primary_key=True, autoincrement=True),
        sa.Column(
            "external_order_id",
            sa.String(FEISHU_ID),
            sa.ForeignKey("feishu_hire_withdrawal.external_order_id"),
            nullable=False,
        ),
        sa.Column("dag_id", sa.String(AIRFLOW_ID), nullable=False),
        sa.Column("run_id", sa.String(AIRFLOW_ID), nullable=False),
        sa.Column("task_id", sa.String(AIRFLOW_ID), nullable=False),
        sa.Column("map_index", sa.Integer, nullable=False),
        sa.Column("try_number", sa.Integer, nullable=False),
        sa.Column("started_at", sa.String(TIME), nullable=False),
        sa.Column("finished_at", sa.String(TIME)),
        sa.Column("outcome", sa.String(SHORT)),
        sa.Column("error_code", sa.BigInteger),
        sa.Column("error_msg", sa.Text),
        sa.Column("log_id", sa.String(FEISHU_ID * 2)),
        sqlite_autoincrement=True,
    )
    op.create_index("feishu_hire_attempt_order", "feishu_hire_withdrawal_attempt", ["external_order_id"])
    op.create_table(
        "feishu_hire_payroll",
        sa.Column("external_order_id", sa.String(FEISHU_ID), primary_key=True),
        sa.Column("bonus_type", sa.String(SHORT), primary_key=True),
        sa.Column("currency", sa.String(SHORT), primary_key=True),
        sa.Column("referral_account_id", sa.String(FEISHU_ID), nullable=False),
        sa.Column("trans_time", sa.String(TIME), nullable=False),
        sa.Column("amount", Money, nullable=False),
        sa.Column("dag_id", sa.String(AIRFLOW_ID), nullable=False),
        sa.Column("run_id", sa.String(AIRFLOW_ID), nullable=False),
    )
    op.create_table(
        "feishu_hire_task_lease",
        sa.Column("dag_id", sa.String(AIRFLOW_ID), primary_key=True),
        sa.Column("run_id", sa.String(AIRFLOW_ID), primary_key=True),
        sa.Column("task_id", sa.String(AIRFLOW_ID), primary_key=True),
        sa.Column("map_index", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("try_number", sa.Integer, nullable=False),
        sa.Column("taken_at", sa.String(TIME), nullable=False),
    )
    op.create_table(
        "feishu_hire_pace",
        sa.Column("pace_key", sa.String(2 * FEISHU_ID + SHORT), primary_key=True),
        sa.Column("next_slot", sa.Double, nullable=False),
    )
