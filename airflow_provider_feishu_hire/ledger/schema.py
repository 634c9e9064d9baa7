"""The ledger's tables, defined once: every query (and every migration's head) uses these.

Keys and indexed columns are bounded ``String``s, so MySQL/MariaDB can index them (InnoDB
keys are at most 3,072 bytes, 4 bytes a character in utf8mb4): Airflow's own ids are at
most 250 characters, Feishu's and order ids at most 64. Free text is ``Text``. Money is
:class:`Money`: an exact decimal on PostgreSQL and MySQL/MariaDB, decimal text on SQLite
(whose NUMERIC affinity would turn "0.10" into a REAL); never a float.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import Numeric, TypeDecorator, TypeEngine

from airflow_provider_feishu_hire.defaults import CENT
from airflow_provider_feishu_hire.withdrawal import MAX_ID_LENGTH

AIRFLOW_ID = 250  # Airflow's dag_id, run_id and task_id (ID_LEN)
FEISHU_ID = MAX_ID_LENGTH  # order ids, account ids, app ids
SHORT = 32  # statuses, outcomes, bonus types, currencies, scopes
TIME = 40  # ISO 8601 text
MONEY_PRECISION, MONEY_SCALE = 38, 12
_WHOLE_DIGITS = MONEY_PRECISION - MONEY_SCALE
_TEXT_MONEY = "sqlite"  # the one database without an exact decimal type
_ANY_SCALE_MONEY = "postgresql"  # NUMERIC without a scale: exact, whatever the amount's scale


class Money(TypeDecorator[Decimal]):
    """An exact amount: decimal text on SQLite, PostgreSQL's ``NUMERIC`` (exact, each amount keeping its own
    scale, as released ledgers have it), ``DECIMAL(38, 12)`` on MySQL/MariaDB (which need a fixed scale).

    Every database holds any amount with at most 12 decimal places and 26 whole digits; an amount
    that does not fit is refused, never rounded. Amounts read back keep at least two places and
    drop the zeros a fixed scale adds ("1.500000000000" -> 1.50), the same on every database.
    """

    impl = Numeric(MONEY_PRECISION, MONEY_SCALE, asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == _TEXT_MONEY:
            return dialect.type_descriptor(Text())
        if dialect.name == _ANY_SCALE_MONEY:
            return dialect.type_descriptor(Numeric(asdecimal=True))
        return dialect.type_descriptor(Numeric(MONEY_PRECISION, MONEY_SCALE, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        amount = Decimal(value)
        _, digits, exponent = amount.as_tuple()
        if not isinstance(exponent, int) or -exponent > MONEY_SCALE or len(digits) + exponent > _WHOLE_DIGITS:
            raise ValueError(f"amount {amount} does not fit the ledger's NUMERIC({MONEY_PRECISION}, {MONEY_SCALE})")
        return format(amount, "f") if dialect.name == _TEXT_MONEY else amount

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else tidy_money(Decimal(str(value)))


def tidy_money(amount: Decimal) -> Decimal:
    """Without the zeros a fixed scale adds, with at least two places: 1.500000000000 -> 1.50, 0.105 stays."""
    normal = amount.normalize()
    exponent = normal.as_tuple().exponent
    return normal.quantize(CENT) if isinstance(exponent, int) and exponent > -2 else normal


def serial() -> BigInteger:
    """An autoincrementing id: BIGINT, or SQLite's INTEGER PRIMARY KEY (its row id)."""
    return BigInteger().with_variant(Integer(), "sqlite")


metadata = MetaData()

# Before Alembic, the version the ledger's own migrate() recorded (1, 2 or 3); kept so that a
# worker still running such a release refuses a ledger this one has upgraded.
ledger_schema = Table(
    "feishu_hire_ledger_schema",
    metadata,
    Column("version", Integer, nullable=False),
    Column("migrated_at", String(TIME), nullable=False),
)

withdrawal = Table(
    "feishu_hire_withdrawal",
    metadata,
    Column("external_order_id", String(FEISHU_ID), primary_key=True),
    Column("referral_account_id", String(FEISHU_ID), nullable=False),
    Column("withdraw_bonus_type", String(SHORT), nullable=False),
    Column("app_id", String(FEISHU_ID), nullable=False),
    Column("dag_id", String(AIRFLOW_ID), nullable=False),
    Column("run_id", String(AIRFLOW_ID), nullable=False),
    Column("task_id", String(AIRFLOW_ID), nullable=False),
    Column("map_index", Integer, nullable=False),
    Column("run_generation", Integer, nullable=False, server_default="1"),
    Column("requested_at", String(TIME), nullable=False),
    Column("status", String(SHORT), nullable=False),
    Column("sends", Integer, nullable=False, server_default="0"),
    Column("trans_time", BigInteger),
    Column("point_bonus", BigInteger),
    Column("error_code", BigInteger),
    Column("error_msg", Text),
    Column("log_id", String(FEISHU_ID * 2)),
    Column("raw_answer", Text),
    Column("updated_at", String(TIME), nullable=False),
    Index("feishu_hire_withdrawal_run", "dag_id", "run_id"),
    Index("feishu_hire_withdrawal_trans_time", "trans_time"),
)

withdrawal_cash = Table(
    "feishu_hire_withdrawal_cash",
    metadata,
    Column(
        "external_order_id",
        String(FEISHU_ID),
        ForeignKey("feishu_hire_withdrawal.external_order_id"),
        primary_key=True,
    ),
    Column("currency_type", String(SHORT), primary_key=True),
    Column("amount", Money, nullable=False),
)

withdrawal_attempt = Table(
    "feishu_hire_withdrawal_attempt",
    metadata,
    Column("id", serial(), primary_key=True, autoincrement=True),
    Column(
        "external_order_id", String(FEISHU_ID), ForeignKey("feishu_hire_withdrawal.external_order_id"), nullable=False
    ),
    Column("dag_id", String(AIRFLOW_ID), nullable=False),
    Column("run_id", String(AIRFLOW_ID), nullable=False),
    Column("task_id", String(AIRFLOW_ID), nullable=False),
    Column("map_index", Integer, nullable=False),
    Column("try_number", Integer, nullable=False),
    Column("run_generation", Integer, nullable=False, server_default="1"),
    Column("started_at", String(TIME), nullable=False),
    Column("finished_at", String(TIME)),
    Column("outcome", String(SHORT)),
    Column("error_code", BigInteger),
    Column("error_msg", Text),
    Column("log_id", String(FEISHU_ID * 2)),
    Index("feishu_hire_attempt_order", "external_order_id"),
    sqlite_autoincrement=True,
)

PAYROLL_TABLE = "feishu_hire_payroll"
payroll = Table(
    PAYROLL_TABLE,
    metadata,
    Column("external_order_id", String(FEISHU_ID), primary_key=True),
    Column("bonus_type", String(SHORT), primary_key=True),
    Column("currency", String(SHORT), primary_key=True),
    Column("referral_account_id", String(FEISHU_ID), nullable=False),
    Column("trans_time", String(TIME), nullable=False),
    Column("amount", Money, nullable=False),
    Column("dag_id", String(AIRFLOW_ID), nullable=False),
    Column("run_id", String(AIRFLOW_ID), nullable=False),
    Column("payroll_batch_id", BigInteger),
)

task_lease = Table(
    "feishu_hire_task_lease",
    metadata,
    Column("dag_id", String(AIRFLOW_ID), primary_key=True),
    Column("run_id", String(AIRFLOW_ID), primary_key=True),
    Column("task_id", String(AIRFLOW_ID), primary_key=True),
    Column("map_index", Integer, primary_key=True, autoincrement=False),
    Column("try_number", Integer, nullable=False),
    Column("taken_at", String(TIME), nullable=False),
    Column("ti_id", String(64)),
    Column("run_generation", Integer, nullable=False, server_default="1"),
)

pace = Table(
    "feishu_hire_pace",
    metadata,
    Column("pace_key", String(2 * FEISHU_ID + SHORT), primary_key=True),
    Column("next_slot", Double, nullable=False),  # epoch seconds: a clock, not money
)

# Each reconciliation with Feishu: the window sent (both ends inclusive), our totals, the verdict.
reconciliation = Table(
    "feishu_hire_reconciliation",
    metadata,
    Column("id", serial(), primary_key=True, autoincrement=True),
    Column("app_id", String(FEISHU_ID), nullable=False),
    Column("start_trans_time", BigInteger, nullable=False),
    Column("end_trans_time", BigInteger, nullable=False),
    Column("accounts", Integer, nullable=False),
    Column("point_bonus", BigInteger, nullable=False),
    Column("mismatches", Integer, nullable=False),
    Column("dag_id", String(AIRFLOW_ID), nullable=False),
    Column("run_id", String(AIRFLOW_ID), nullable=False),
    Column("task_id", String(AIRFLOW_ID), nullable=False),
    Column("reconciled_at", String(TIME), nullable=False),
    sqlite_autoincrement=True,
)

reconciliation_mismatch = Table(
    "feishu_hire_reconciliation_mismatch",
    metadata,
    Column(
        "reconciliation_id",
        BigInteger,
        ForeignKey("feishu_hire_reconciliation.id"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("referral_account_id", String(FEISHU_ID), primary_key=True),
    Column("ledger_point_bonus", BigInteger, nullable=False),
    Column("feishu_point_bonus", BigInteger, nullable=False),
)

# Registration is not idempotent at Feishu: the account id it answered, kept so a retry or a
# re-run returns it instead of registering the referrer again.
registration = Table(
    "feishu_hire_registration",
    metadata,
    Column("app_id", String(FEISHU_ID), primary_key=True),
    Column("referrer", String(320), primary_key=True),  # an e-mail address (64@255) or a mobile number
    Column("referral_account_id", String(FEISHU_ID), nullable=False),
    Column("registered_at", String(TIME), nullable=False),
)

# Who decided a DAG run's payout, when, and on which preview totals (cash as JSON of decimal strings).
approval = Table(
    "feishu_hire_approval",
    metadata,
    Column("id", serial(), primary_key=True, autoincrement=True),
    Column("dag_id", String(AIRFLOW_ID), nullable=False),
    Column("run_id", String(AIRFLOW_ID), nullable=False),
    Column("task_id", String(AIRFLOW_ID), nullable=False),
    Column("decision", String(SHORT), nullable=False),
    Column("decided_by", Text, nullable=False),
    Column("decided_at", String(TIME), nullable=False),
    Column("accounts", Integer, nullable=False),
    Column("point_bonus", BigInteger, nullable=False),
    Column("cash_bonus", Text, nullable=False),
    Column("run_generation", Integer, nullable=False, server_default="1"),
    Column("triggered_by", Text),
    Column("payout_preview_id", BigInteger),
    sqlite_autoincrement=True,
)

# How a person settled an order the automation could not (review, or sending long after any send could
# still answer): proposed with evidence by one person, confirmed by another, then applied. Kept for ever.
settlement = Table(
    "feishu_hire_settlement",
    metadata,
    Column("id", serial(), primary_key=True, autoincrement=True),
    Column(
        "external_order_id", String(FEISHU_ID), ForeignKey("feishu_hire_withdrawal.external_order_id"), nullable=False
    ),
    Column("paid", Integer, nullable=False),
    Column("trans_time", BigInteger),
    Column("point_bonus", BigInteger),
    Column("cash_bonus", Text),
    Column("evidence", Text, nullable=False),
    Column("proposed_by", Text, nullable=False),
    Column("proposed_at", String(TIME), nullable=False),
    Column("confirmed_by", Text),
    Column("confirmed_at", String(TIME)),
    sqlite_autoincrement=True,
)

# What a payout's approver is shown: every account's balance at preview time, which an approval binds.
payout_preview = Table(
    "feishu_hire_payout_preview",
    metadata,
    Column("id", serial(), primary_key=True, autoincrement=True),
    Column("dag_id", String(AIRFLOW_ID), nullable=False),
    Column("run_id", String(AIRFLOW_ID), nullable=False),
    Column("run_generation", Integer, nullable=False),
    Column("task_id", String(AIRFLOW_ID), nullable=False),
    Column("previewed_at", String(TIME), nullable=False),
    sqlite_autoincrement=True,
)

payout_preview_account = Table(
    "feishu_hire_payout_preview_account",
    metadata,
    Column(
        "payout_preview_id",
        BigInteger,
        ForeignKey("feishu_hire_payout_preview.id"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("referral_account_id", String(FEISHU_ID), primary_key=True),
    Column("point_bonus", BigInteger, nullable=False),
    Column("cash_bonus", Text, nullable=False),
)

# Which incarnation of a DAG run a task belongs to: Airflow re-creates a deleted run under the
# same run_id, and its clear_number starts again at 0 with a new start_date (Ledger.run_generation).
run_generation = Table(
    "feishu_hire_run_generation",
    metadata,
    Column("dag_id", String(AIRFLOW_ID), primary_key=True),
    Column("run_id", String(AIRFLOW_ID), primary_key=True),
    Column("clear_number", Integer, primary_key=True, autoincrement=False),
    Column("run_start", String(TIME), primary_key=True),
    Column("run_generation", Integer, nullable=False),
    Column("seen_at", String(TIME), nullable=False),
)

# A payroll batch: what one export claimed, in one transaction, and its totals when it was made.
payroll_batch = Table(
    "feishu_hire_payroll_batch",
    metadata,
    Column("id", serial(), primary_key=True, autoincrement=True),
    Column("scope", String(SHORT), nullable=False),
    Column("scope_key", Text, nullable=False),
    Column("dag_id", String(AIRFLOW_ID), nullable=False),
    Column("run_id", String(AIRFLOW_ID), nullable=False),
    Column("run_generation", Integer, nullable=False),
    Column("task_id", String(AIRFLOW_ID), nullable=False),
    Column("map_index", Integer, nullable=False),
    Column("try_number", Integer, nullable=False),
    Column("created_at", String(TIME), nullable=False),
    Column("accounts", Integer, nullable=False),
    Column("point_bonus", BigInteger, nullable=False),
    Column("cash_bonus", Text, nullable=False),
    Index("feishu_hire_payroll_batch_maker", "dag_id", "run_id"),
    sqlite_autoincrement=True,
)

# Membership: the primary key puts every paid withdrawal in one batch at most, for ever.
payroll_batch_member = Table(
    "feishu_hire_payroll_batch_member",
    metadata,
    Column(
        "external_order_id",
        String(FEISHU_ID),
        ForeignKey("feishu_hire_withdrawal.external_order_id"),
        primary_key=True,
    ),
    Column("payroll_batch_id", BigInteger, ForeignKey("feishu_hire_payroll_batch.id"), nullable=False),
    Index("feishu_hire_payroll_member_batch", "payroll_batch_id"),
)

# Which consumer has taken which batch: how an import de-duplicates repeated asset events.
payroll_delivery = Table(
    "feishu_hire_payroll_delivery",
    metadata,
    Column(
        "payroll_batch_id",
        BigInteger,
        ForeignKey("feishu_hire_payroll_batch.id"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("consumer", String(AIRFLOW_ID), primary_key=True),
    Column("delivered_at", String(TIME), nullable=False),
)

# Named locks every database can take the same way: a row, locked with SELECT ... FOR UPDATE (SQLite's
# writers hold the whole file). Making payroll batches takes one, so they are made one at a time.
lock = Table(
    "feishu_hire_lock",
    metadata,
    Column("name", String(SHORT), primary_key=True),
)
PAYROLL_BATCH_LOCK = "payroll batches"

# The payouts console's pages (airflow_provider_feishu_hire/console; benchmarks/bench_console.py): newest
# requests first and the date filter; the status filter and "needs attention"; one account; paid per day
# summed from the indexes alone; an order's settlements; one DAG's reconciliations.
CONSOLE_INDEXES = (
    Index("feishu_hire_withdrawal_requested", withdrawal.c.requested_at, withdrawal.c.external_order_id),
    Index("feishu_hire_withdrawal_status", withdrawal.c.status, withdrawal.c.requested_at),
    Index("feishu_hire_withdrawal_account", withdrawal.c.referral_account_id, withdrawal.c.requested_at),
    Index(
        "feishu_hire_withdrawal_paid_day",
        withdrawal.c.status,
        withdrawal.c.trans_time,
        withdrawal.c.dag_id,
        withdrawal.c.app_id,
        withdrawal.c.point_bonus,
        withdrawal.c.external_order_id,
    ),
    Index(
        "feishu_hire_withdrawal_cash_amount",
        withdrawal_cash.c.external_order_id,
        withdrawal_cash.c.currency_type,
        withdrawal_cash.c.amount,
    ),
    Index("feishu_hire_settlement_order", settlement.c.external_order_id),
    Index("feishu_hire_reconciliation_dag", reconciliation.c.dag_id, reconciliation.c.id),
)
