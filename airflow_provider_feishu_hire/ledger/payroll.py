"""Payroll batches: each paid withdrawal claimed by exactly one batch, for ever.

An export claims, in one transaction, every paid withdrawal of its scope that no batch
holds, and writes the batch's lines into the payroll table in the same transaction, so
the table holds exactly the batches. Batches are made one at a time (a named lock), and
membership is a primary key: a withdrawal is in one batch at most, whichever exports race.
A consumer records which batches it took (:meth:`PayrollBatches.record_delivery`).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from sqlalchemy import ColumnElement, and_, insert, select, true
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from airflow_provider_feishu_hire.ledger.database import inserted_id, take_lock
from airflow_provider_feishu_hire.ledger.model import (
    DAG_SCOPE,
    RUN_SCOPE,
    LedgerRow,
    PayrollBatch,
    PayrollScope,
    TaskTry,
    cash_from_json,
    cash_json,
    now_iso,
)
from airflow_provider_feishu_hire.ledger.schema import (
    PAYROLL_BATCH_LOCK,
    payroll,
    payroll_batch,
    payroll_batch_member,
    payroll_delivery,
    withdrawal,
)
from airflow_provider_feishu_hire.ledger.state_machine import PAID
from airflow_provider_feishu_hire.ledger.withdrawals import Withdrawals
from airflow_provider_feishu_hire.withdrawal import trans_time_iso

b = payroll_batch.c
member = payroll_batch_member.c


class PayrollBatches(Withdrawals):
    """Making, reading and delivering payroll batches."""

    def make_payroll_batch(self, scope: PayrollScope, maker: TaskTry) -> PayrollBatch | None:
        """Claim, in one transaction, every paid withdrawal in ``scope`` that is in no batch yet.

        Returns the new batch, or None when there is nothing to claim.
        """
        with self._begin() as conn:
            take_lock(conn, PAYROLL_BATCH_LOCK)
            members = self._select_in(
                conn,
                withdrawal.c.status == PAID,
                scope_filter(scope),
                withdrawal.c.external_order_id.not_in(select(member.external_order_id)),
            )
            if not members:
                return None
            batch_id = insert_batch(conn, scope.kind, scope.key, maker, members)
            lines = []
            for row in members:
                paid = row.withdrawal
                assert paid is not None
                for bonus_type, currency, amount in paid.payroll_items():
                    lines.append({
                        "external_order_id": row.external_order_id, "bonus_type": bonus_type, "currency": currency,
                        "referral_account_id": row.referral_account_id, "trans_time": trans_time_iso(paid.trans_time),
                        "amount": Decimal(amount), "dag_id": row.dag_id, "run_id": row.run_id,
                        "payroll_batch_id": batch_id,
                    })  # fmt: skip
            if lines:
                conn.execute(insert(payroll), lines)
            return self._batches(conn, b.id == batch_id)[0]

    def payroll_batches(
        self, *, made_by: TaskTry | None = None, payroll_batch_id: int | None = None
    ) -> list[PayrollBatch]:
        """Batches with their members, oldest first: those one task instance of one run generation made
        (any try), one by id, or all."""
        where: list[ColumnElement[bool]] = []
        if made_by is not None:
            where += [b.dag_id == made_by.dag_id, b.run_id == made_by.run_id,
                      b.run_generation == made_by.run_generation, b.task_id == made_by.task_id,
                      b.map_index == made_by.map_index]  # fmt: skip
        if payroll_batch_id is not None:
            where.append(b.id == payroll_batch_id)
        with self._begin(write=False) as conn:
            return self._batches(conn, and_(true(), *where))

    def payroll_batch_ids(self, scope: PayrollScope) -> list[int]:
        """The ids of the batches made for ``scope``, oldest first (cheap: no members)."""
        query = select(b.id).where(b.scope == scope.kind, b.scope_key == scope.key).order_by(b.id)
        with self._begin(write=False) as conn:
            return [int(batch_id) for batch_id in conn.execute(query).scalars()]

    def payroll_batch_lines(self, payroll_batch_id: int) -> list[tuple[str, str, str, str, str, Decimal]]:
        """The payroll table's lines of one batch, as stored (account, order, trans_time, bonus type, currency,
        amount): how an import reads them."""
        p = payroll.c
        query = (
            select(p.referral_account_id, p.external_order_id, p.trans_time, p.bonus_type, p.currency, p.amount)
            .where(p.payroll_batch_id == payroll_batch_id)
            .order_by(p.external_order_id, p.bonus_type, p.currency)
        )
        with self._begin(write=False) as conn:
            return [tuple(line) for line in conn.execute(query)]

    def delivered(self, payroll_batch_id: int, consumer: str) -> bool:
        """Whether ``consumer`` recorded taking this batch: an import asks before it imports."""
        d = payroll_delivery.c
        query = select(d.consumer).where(d.payroll_batch_id == payroll_batch_id, d.consumer == consumer)
        with self._begin(write=False) as conn:
            return conn.execute(query).first() is not None

    def record_delivery(self, payroll_batch_id: int, consumer: str) -> bool:
        """Note that ``consumer`` has taken a batch, after it did; False when it had already."""
        with self._begin() as conn:
            try:
                with conn.begin_nested():  # the primary key decides, on every database alike
                    conn.execute(
                        insert(payroll_delivery).values(
                            payroll_batch_id=payroll_batch_id, consumer=consumer, delivered_at=now_iso()
                        )
                    )
            except IntegrityError:
                return False
            return True

    def _batches(self, conn: Connection, where: ColumnElement[bool]) -> list[PayrollBatch]:
        found = conn.execute(
            select(b.id, b.scope, b.scope_key, b.dag_id, b.run_id, b.run_generation, b.task_id, b.map_index,
                   b.try_number, b.created_at, b.accounts, b.point_bonus, b.cash_bonus).where(where).order_by(b.id)
        ).all()  # fmt: skip
        batches = []
        for (
            batch_id,
            scope,
            key,
            dag,
            run,
            generation,
            task,
            map_index,
            try_number,
            created,
            accounts,
            points,
            cash,
        ) in found:
            members = self._select_in(
                conn,
                withdrawal.c.external_order_id.in_(
                    select(member.external_order_id).where(member.payroll_batch_id == batch_id)
                ),
            )
            batches.append(
                PayrollBatch(
                    int(batch_id), scope, key, TaskTry(dag, run, task, int(map_index), int(try_number), None,
                    int(generation)), created, int(accounts), int(points), cash_from_json(cash), tuple(members),
                )
            )  # fmt: skip
        return batches


def scope_filter(scope: PayrollScope) -> ColumnElement[bool]:
    """The withdrawals a scope may claim."""
    w = withdrawal.c
    if scope.kind == RUN_SCOPE:
        # A deleted generation of this run_id has no export of its own any more: what it paid and
        # no batch holds (a zombie of it, say) goes with the run that took its place.
        return and_(w.dag_id == scope.dag_id, w.run_id == scope.run_id, w.run_generation <= scope.run_generation)
    if scope.kind == DAG_SCOPE:
        return w.dag_id == scope.dag_id
    return w.app_id == scope.app_id


def insert_batch(conn: Connection, scope: str, key: str, maker: TaskTry, members: Sequence[LedgerRow]) -> int:
    """A batch row with its totals, and its members; returns its id."""
    cash: dict[str, Decimal] = {}
    for row in members:
        for currency, amount in row.cash.items():
            cash[currency] = cash.get(currency, Decimal(0)) + amount
    batch_id = inserted_id(
        conn.execute(
            insert(payroll_batch).values(
                scope=scope,
                scope_key=key,
                dag_id=maker.dag_id,
                run_id=maker.run_id,
                run_generation=maker.run_generation,
                task_id=maker.task_id,
                map_index=maker.map_index,
                try_number=maker.try_number,
                created_at=now_iso(),
                accounts=len({row.referral_account_id for row in members}),
                point_bonus=sum(row.withdrawal.point_bonus for row in members if row.withdrawal is not None),
                cash_bonus=cash_json(cash),
            )
        )
    )
    if members:
        conn.execute(
            insert(payroll_batch_member),
            [{"external_order_id": row.external_order_id, "payroll_batch_id": batch_id} for row in members],
        )
    return batch_id
