"""A person settles what automation cannot: an order in ``review``, or ``sending`` long after any send
could still answer. One person proposes, with evidence; a second confirms; the order becomes ``paid``
or ``rejected`` in the confirming transaction. Every proposal is kept for ever.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from sqlalchemy import ColumnElement, func, insert, select, true, update
from sqlalchemy.engine import Connection

from airflow_provider_feishu_hire.ledger.database import inserted_id
from airflow_provider_feishu_hire.ledger.model import (
    LedgerError,
    LedgerRow,
    Settlement,
    cash_from_json,
    cash_json,
    now_iso,
)
from airflow_provider_feishu_hire.ledger.schema import settlement, withdrawal, withdrawal_attempt
from airflow_provider_feishu_hire.ledger.state_machine import SENDING, Outcome, next_status
from airflow_provider_feishu_hire.ledger.withdrawals import Withdrawals

s = settlement.c


class Settlements(Withdrawals):
    """Two people's account of an order the automation could not settle."""

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
        with self._begin() as conn:
            row = self._settleable(conn, external_order_id)
            settlement_id = inserted_id(
                conn.execute(
                    insert(settlement).values(
                        external_order_id=row.external_order_id,
                        paid=int(paid),
                        trans_time=trans_time if paid else None,
                        point_bonus=point_bonus if paid else None,
                        cash_bonus=cash_json(cash_bonus or {}) if paid else None,
                        evidence=evidence.strip(),
                        proposed_by=proposed_by.strip(),
                        proposed_at=now_iso(),
                    )
                )
            )
            return self._settlements(conn, s.id == settlement_id)[0]

    def confirm_settlement(self, settlement_id: int, confirmed_by: str) -> LedgerRow:
        """A second person confirms a proposal: the order becomes ``paid`` (then the next payroll batch of its
        scope claims it) or ``rejected``, in the same transaction. Returns the row as it is left."""
        now = now_iso()
        with self._begin() as conn:
            found = self._settlements(conn, s.id == settlement_id)
            if not found:
                raise LedgerError(f"no settlement {settlement_id}")
            proposal = found[0]
            if proposal.confirmed_by is not None:
                raise LedgerError(f"settlement {settlement_id} was confirmed by {proposal.confirmed_by} already")
            if confirmed_by.strip() == proposal.proposed_by:
                raise LedgerError(
                    f"settlement {settlement_id} was proposed by {proposal.proposed_by}: another person must confirm it"
                )
            row = self._settleable(conn, proposal.external_order_id)
            conn.execute(
                update(settlement).where(s.id == settlement_id).values(confirmed_by=confirmed_by.strip(),
                                                                        confirmed_at=now)
            )  # fmt: skip
            by = f"settled by {proposal.proposed_by} and {confirmed_by.strip()} (settlement {settlement_id})"
            order = withdrawal.c.external_order_id == row.external_order_id
            outcome = Outcome.SETTLED_PAID if proposal.paid else Outcome.SETTLED_NOT_PAID
            after = next_status(row.status, outcome)
            if proposal.paid:
                conn.execute(
                    update(withdrawal).where(order).values(
                        status=after, trans_time=proposal.trans_time, point_bonus=proposal.point_bonus,
                        error_msg=by, updated_at=now,
                    )
                )  # fmt: skip
                self._insert_cash(conn, row.external_order_id, proposal.cash_bonus)
            else:
                conn.execute(update(withdrawal).where(order).values(status=after, error_msg=f"not paid: {by}",
                                                                     updated_at=now))  # fmt: skip
            return self._row(conn, row.external_order_id)

    def settlements(self, external_order_id: str | None = None) -> list[Settlement]:
        """Every settlement (of one order, if given), oldest first, confirmed or not."""
        where = s.external_order_id == external_order_id if external_order_id else true()
        with self._begin(write=False) as conn:
            return self._settlements(conn, where)

    def _settleable(self, conn: Connection, external_order_id: str) -> LedgerRow:
        """The order, locked, if a person may settle it: in review, or sending with no send still able to answer."""
        order = withdrawal.c.external_order_id == external_order_id
        if not conn.execute(select(func.count()).select_from(withdrawal).where(order)).scalar_one():
            raise LedgerError(f"the ledger holds no order {external_order_id}")
        row = self._row(conn, external_order_id, lock=True)
        if next_status(row.status, Outcome.SETTLED_PAID) is None:
            raise LedgerError(
                f"order {external_order_id} is {row.status}: only review or stuck sending orders are settled"
            )
        if row.status == SENDING:
            latest = conn.execute(
                select(func.max(withdrawal_attempt.c.started_at)).where(
                    withdrawal_attempt.c.external_order_id == external_order_id
                )
            ).scalar_one()
            if latest is not None and latest >= self._in_flight_since():
                raise LedgerError(
                    f"order {external_order_id} was sent at {latest}: its answer may still come; settle it after "
                    f"{self.in_flight_seconds:g} seconds, or let a retry send it again"
                )
        return row

    def _settlements(self, conn: Connection, where: ColumnElement[bool]) -> list[Settlement]:
        found = conn.execute(
            select(s.id, s.external_order_id, s.paid, s.trans_time, s.point_bonus, s.cash_bonus, s.evidence,
                   s.proposed_by, s.proposed_at, s.confirmed_by, s.confirmed_at).where(where).order_by(s.id)
        )  # fmt: skip
        return [
            Settlement(int(sid), order, bool(paid), None if when is None else int(when),
                       None if points is None else int(points), cash_from_json(cash), evidence, by, at, conf_by,
                       conf_at)
            for sid, order, paid, when, points, cash, evidence, by, at, conf_by, conf_at in found
        ]  # fmt: skip
