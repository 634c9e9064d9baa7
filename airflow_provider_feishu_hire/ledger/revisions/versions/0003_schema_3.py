"""Schema 3: run generations, payroll batches (with their members and deliveries), settlements by two
people, payout previews; the run generation and task instance id on older tables.

What schema 2 already exported becomes one ``legacy`` batch per DAG run, so nothing is exported
twice; paid withdrawals that were never exported stay unbatched, for the next export to claim.

Revision ID: 0003
"""

from __future__ import annotations

import json
from decimal import Decimal

import sqlalchemy as sa
from alembic import op

from airflow_provider_feishu_hire.ledger.database import inserted_id
from airflow_provider_feishu_hire.ledger.schema import AIRFLOW_ID, FEISHU_ID, SHORT, TIME, serial
from airflow_provider_feishu_hire.withdrawal import format_money

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ADDED_COLUMNS = (
    ("feishu_hire_withdrawal", sa.Column("run_generation", sa.Integer, nullable=False, server_default="1")),
    ("feishu_hire_withdrawal_attempt", sa.Column("run_generation", sa.Integer, nullable=False, server_default="1")),
    ("feishu_hire_task_lease", sa.Column("ti_id", sa.String(64))),
    ("feishu_hire_task_lease", sa.Column("run_generation", sa.Integer, nullable=False, server_default="1")),
    ("feishu_hire_payroll", sa.Column("payroll_batch_id", sa.BigInteger)),
    ("feishu_hire_approval", sa.Column("run_generation", sa.Integer, nullable=False, server_default="1")),
    ("feishu_hire_approval", sa.Column("triggered_by", sa.Text)),
    ("feishu_hire_approval", sa.Column("payout_preview_id", sa.BigInteger)),
)


def upgrade() -> None:
    for table, column in _ADDED_COLUMNS:
        op.add_column(table, column)
    op.create_table(
        "feishu_hire_settlement",
        sa.Column("id", serial(), primary_key=True, autoincrement=True),
        sa.Column(
            "external_order_id",
            sa.String(FEISHU_ID),
            sa.ForeignKey("feishu_hire_withdrawal.external_order_id"),
            nullable=False,
        ),
        sa.Column("paid", sa.Integer, nullable=False),
        sa.Column("trans_time", sa.BigInteger),
        sa.Column("point_bonus", sa.BigInteger),
        sa.Column("cash_bonus", sa.Text),
        sa.Column("evidence", sa.Text, nullable=False),
        sa.Column("proposed_by", sa.Text, nullable=False),
        sa.Column("proposed_at", sa.String(TIME), nullable=False),
        sa.Column("confirmed_by", sa.Text),
        sa.Column("confirmed_at", sa.String(TIME)),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "feishu_hire_payout_preview",
        sa.Column("id", serial(), primary_key=True, autoincrement=True),
        sa.Column("dag_id", sa.String(AIRFLOW_ID), nullable=False),
        sa.Column("run_id", sa.String(AIRFLOW_ID), nullable=False),
        sa.Column("run_generation", sa.Integer, nullable=False),
        sa.Column("task_id", sa.String(AIRFLOW_ID), nullable=False),
        sa.Column("previewed_at", sa.String(TIME), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "feishu_hire_payout_preview_account",
        sa.Column(
            "payout_preview_id",
            sa.BigInteger,
            sa.ForeignKey("feishu_hire_payout_preview.id"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("referral_account_id", sa.String(FEISHU_ID), primary_key=True),
        sa.Column("point_bonus", sa.BigInteger, nullable=False),
        sa.Column("cash_bonus", sa.Text, nullable=False),
    )
    op.create_table(
        "feishu_hire_run_generation",
        sa.Column("dag_id", sa.String(AIRFLOW_ID), primary_key=True),
        sa.Column("run_id", sa.String(AIRFLOW_ID), primary_key=True),
        sa.Column("clear_number", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("run_start", sa.String(TIME), primary_key=True),
        sa.Column("run_generation", sa.Integer, nullable=False),
        sa.Column("seen_at", sa.String(TIME), nullable=False),
    )
    op.create_table(
        "feishu_hire_payroll_batch",
        sa.Column("id", serial(), primary_key=True, autoincrement=True),
        sa.Column("scope", sa.String(SHORT), nullable=False),
        sa.Column("scope_key", sa.Text, nullable=False),
        sa.Column("dag_id", sa.String(AIRFLOW_ID), nullable=False),
        sa.Column("run_id", sa.String(AIRFLOW_ID), nullable=False),
        sa.Column("run_generation", sa.Integer, nullable=False),
        sa.Column("task_id", sa.String(AIRFLOW_ID), nullable=False),
        sa.Column("map_index", sa.Integer, nullable=False),
        sa.Column("try_number", sa.Integer, nullable=False),
        sa.Column("created_at", sa.String(TIME), nullable=False),
        sa.Column("accounts", sa.Integer, nullable=False),
        sa.Column("point_bonus", sa.BigInteger, nullable=False),
        sa.Column("cash_bonus", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("feishu_hire_payroll_batch_maker", "feishu_hire_payroll_batch", ["dag_id", "run_id"])
    op.create_table(
        "feishu_hire_payroll_batch_member",
        sa.Column(
            "external_order_id",
            sa.String(FEISHU_ID),
            sa.ForeignKey("feishu_hire_withdrawal.external_order_id"),
            primary_key=True,
        ),
        sa.Column("payroll_batch_id", sa.BigInteger, sa.ForeignKey("feishu_hire_payroll_batch.id"), nullable=False),
    )
    op.create_index("feishu_hire_payroll_member_batch", "feishu_hire_payroll_batch_member", ["payroll_batch_id"])
    op.create_table(
        "feishu_hire_payroll_delivery",
        sa.Column(
            "payroll_batch_id",
            sa.BigInteger,
            sa.ForeignKey("feishu_hire_payroll_batch.id"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("consumer", sa.String(AIRFLOW_ID), primary_key=True),
        sa.Column("delivered_at", sa.String(TIME), nullable=False),
    )
    _batch_legacy_payroll(op.get_bind())


# Schema 3's tables as this revision reads and writes them (never the live schema: it may change later).
_withdrawal = sa.table(
    "feishu_hire_withdrawal", *map(sa.column, ("external_order_id", "referral_account_id", "status", "point_bonus"))
)
_cash = sa.table("feishu_hire_withdrawal_cash", *map(sa.column, ("external_order_id", "currency_type", "amount")))
_payroll = sa.table("feishu_hire_payroll", *map(sa.column, ("external_order_id", "dag_id", "run_id",
                                                              "payroll_batch_id")))  # fmt: skip
_batch = sa.Table(
    "feishu_hire_payroll_batch",
    sa.MetaData(),
    sa.Column("id", sa.BigInteger, primary_key=True),  # so that the insert reports the id it made
    *(sa.Column(name) for name in (
        "scope", "scope_key", "dag_id", "run_id", "run_generation", "task_id", "map_index", "try_number",
        "created_at", "accounts", "point_bonus", "cash_bonus",
    )),
)  # fmt: skip
_member = sa.table("feishu_hire_payroll_batch_member", *map(sa.column, ("external_order_id", "payroll_batch_id")))


def _batch_legacy_payroll(conn: sa.Connection) -> None:
    """Each DAG run's exported paid withdrawals become one ``legacy`` batch, its payroll lines marked with it."""
    from datetime import datetime, timezone

    p, w, c = _payroll.c, _withdrawal.c, _cash.c
    runs = conn.execute(
        sa.select(p.dag_id, p.run_id).where(p.payroll_batch_id.is_(None)).distinct().order_by(p.dag_id, p.run_id)
    ).all()
    for dag_id, run_id in runs:
        exported = (
            sa.select(p.external_order_id)
            .where(p.dag_id == dag_id, p.run_id == run_id, p.payroll_batch_id.is_(None))
            .distinct()
        )
        members = conn.execute(
            sa.select(w.external_order_id, w.referral_account_id, w.point_bonus)
            .where(w.status == "paid", w.external_order_id.in_(exported))
            .order_by(w.external_order_id)
        ).all()
        cash: dict[str, Decimal] = {}
        for currency, amount in conn.execute(
            sa.select(c.currency_type, c.amount).where(c.external_order_id.in_([m[0] for m in members]))
        ):
            cash[currency] = cash.get(currency, Decimal(0)) + Decimal(str(amount))
        batch_id = inserted_id(
            conn.execute(
                sa.insert(_batch).values(
                    scope="legacy",
                    scope_key=f"{dag_id}/{run_id}",
                    dag_id=dag_id,
                    run_id=run_id,
                    run_generation=1,
                    task_id="schema 2 export",
                    map_index=-1,
                    try_number=0,
                    created_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                    accounts=len({m[1] for m in members}),
                    point_bonus=sum(int(m[2] or 0) for m in members),
                    cash_bonus=json.dumps({k: format_money(v) for k, v in cash.items()}, sort_keys=True),
                )
            )
        )
        if members:
            conn.execute(
                sa.insert(_member), [{"external_order_id": m[0], "payroll_batch_id": batch_id} for m in members]
            )
        conn.execute(
            sa.update(_payroll)
            .where(p.dag_id == dag_id, p.run_id == run_id, p.payroll_batch_id.is_(None))
            .values(payroll_batch_id=batch_id)
        )
