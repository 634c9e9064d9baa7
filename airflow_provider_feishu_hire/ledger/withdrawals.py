"""The withdrawal state machine: record an intent before sending, then what came back.

Every method is one short transaction that locks the order's row (SQLite: the file),
classifies what happened into an :class:`~.state_machine.Outcome`, and writes the status
:data:`~.state_machine.TRANSITIONS` gives. Every send also appends an attempt row (order
id, DAG, run, task, map index, try number, times, outcome), so the ledger shows who sent
what when. Rows are never deleted. Reads (one order, rows by run, totals) come last.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, func, insert, select, update
from sqlalchemy.engine import Connection

from airflow_provider_feishu_hire.exceptions import Reach
from airflow_provider_feishu_hire.ledger.database import insert_new, inserted_id
from airflow_provider_feishu_hire.ledger.leases import Leases
from airflow_provider_feishu_hire.ledger.model import (
    Claim,
    Intent,
    LedgerRow,
    NeedsReview,
    OrderIdConflict,
    now_iso,
)
from airflow_provider_feishu_hire.ledger.schema import (
    payroll_batch_member,
    withdrawal,
    withdrawal_attempt,
    withdrawal_cash,
)
from airflow_provider_feishu_hire.ledger.state_machine import (
    NEEDS_APPROVAL,
    PAID,
    REJECTED,
    REVIEW,
    SENDING,
    SKIPPED,
    UNSENT,
    Outcome,
    failure_outcome,
    next_status,
)
from airflow_provider_feishu_hire.withdrawal import Withdrawal

# An attempt started this recently and not finished may still be waiting for Feishu's answer;
# an older one died with its worker. (A call's retries end within the connection's budget.)
IN_FLIGHT_SECONDS = 600

w = withdrawal.c
_BATCH_OF_ROW = (
    select(payroll_batch_member.c.payroll_batch_id)
    .where(payroll_batch_member.c.external_order_id == w.external_order_id)
    .scalar_subquery()
)
_ROW_COLUMNS = (
    w.external_order_id, w.referral_account_id, w.status, w.dag_id, w.run_id, w.task_id, w.sends, w.trans_time,
    w.point_bonus, w.error_code, w.error_msg, w.log_id, w.raw_answer, w.run_generation, _BATCH_OF_ROW,
)  # fmt: skip


class Withdrawals(Leases):
    """Claims, outcomes and reads of withdrawals (the state machine's side of the ledger)."""

    in_flight_seconds: float = IN_FLIGHT_SECONDS

    # -- before a withdrawal -------------------------------------------------------------------

    def claim(self, intent: Intent) -> Claim:
        """Record the intent to send, or return what the ledger already knows of this order id.

        Raises :class:`OrderIdConflict` when the order id belongs to another account and
        :class:`NeedsReview` when a person has to settle it first. Otherwise the row is
        ``sending`` when this returns, committed, before anything goes to Feishu.
        """
        now = now_iso()
        with self._begin() as conn:
            row = self._open(conn, intent, SENDING, now)
            after = next_status(row.status, Outcome.SEND)
            if after is None:
                raise NeedsReview(
                    f"Review order {intent.external_order_id} of referral account {intent.referral_account_id} "
                    f"before paying it again: {row.error_msg}. It is not re-sent automatically."
                )
            if after == PAID:
                return Claim(intent, paid=row.withdrawal)
            # The row was just inserted (sends 0), or skipped/rejected/sending before. Whichever try
            # sends it owns it from now on: its run's payroll is where the payment belongs.
            uncertain = row.status == SENDING and row.sends > 0
            conn.execute(
                update(withdrawal)
                .where(w.external_order_id == intent.external_order_id)
                .values(status=after, sends=w.sends + 1, updated_at=now, **_owner(intent))
            )
            attempt_id = inserted_id(
                conn.execute(
                    insert(withdrawal_attempt).values(
                        external_order_id=intent.external_order_id,
                        try_number=intent.try_number,
                        started_at=now,
                        **_owner(intent),
                    )
                )
            )
        return Claim(intent, attempt_id=attempt_id, uncertain=uncertain)

    def skip(self, intent: Intent, reason: str) -> bool:
        """Record that a balance check found nothing to withdraw, unless this order id was ever sent.

        Returns False when the ledger holds any send under this order id, whatever its
        status: a zero balance may be that send's payment, so the caller must claim and
        send again (Feishu replays the original; it costs a call, never money).
        """
        return self._settle_unsent(intent, Outcome.EMPTY_BALANCE, SKIPPED, None, reason)

    def refuse(self, intent: Intent, code: int | None, reason: str) -> bool:
        """Record that Feishu refused this account before any withdrawal was sent (its balance read).

        The run's payroll export then names the account: every account a run was asked to
        pay ends in the ledger with an outcome. Like :meth:`skip`, never recorded over an
        order id that was ever sent (returns False).
        """
        return self._settle_unsent(intent, Outcome.BALANCE_REFUSED, REJECTED, code, reason)

    def hold(self, intent: Intent, reason: str) -> bool:
        """Record that the account holds more than the run's approval covers: nothing sent, a new approval pays it."""
        return self._settle_unsent(intent, Outcome.OVER_APPROVAL, NEEDS_APPROVAL, None, reason)

    def _settle_unsent(self, intent: Intent, outcome: Outcome, status: str, code: int | None, reason: str) -> bool:
        """Record ``status`` without a send, unless the state machine keeps the row (a send may have moved money).

        A row whose every send Feishu refused (``rejected``) holds no payment, so a later balance
        read that shows nothing settles it as skipped (Feishu may answer an empty withdrawal
        with an error, and that must not be re-sent for ever). A row just inserted counts as
        unsent (``sends`` 0).
        """
        now = now_iso()
        with self._begin() as conn:
            row = self._open(conn, intent, status, now)
            if next_status(row.status, outcome) != status:
                return False  # a send of it may have moved money: only sending it again settles it
            conn.execute(
                update(withdrawal)
                .where(w.external_order_id == intent.external_order_id)
                .values(status=status, error_code=code, error_msg=reason, updated_at=now, **_owner(intent))
            )
            return True

    # -- after a withdrawal --------------------------------------------------------------------

    def record_paid(self, claim: Claim, paid: Withdrawal) -> LedgerRow:
        """Feishu's answer, with every cash currency; returns the row as it is left.

        A row already paid is left alone (a zombie's replay), and so is one in review: an
        answer that did not parse is never replaced by a later one.
        """
        order_id = claim.intent.external_order_id
        now = now_iso()
        with self._begin() as conn:
            row = self._row(conn, order_id, lock=True)
            if row.status != PAID and next_status(row.status, Outcome.PAID) == PAID:
                conn.execute(
                    update(withdrawal)
                    .where(w.external_order_id == order_id)
                    .values(
                        status=PAID,
                        trans_time=paid.trans_time,
                        point_bonus=paid.point_bonus,
                        error_code=None,
                        error_msg=None,
                        log_id=None,
                        updated_at=now,
                    )
                )
                self._insert_cash(conn, order_id, paid.cash_bonus)
            self._finish_attempt(conn, claim, PAID, now)
            return self._row(conn, order_id)

    def record_failure(
        self,
        claim: Claim,
        *,
        code: int | None,
        msg: str,
        log_id: str | None,
        retryable: bool,
        reach: Reach,
    ) -> LedgerRow:
        """What went wrong; returns the row as it is left, never moved back from paid or review.

        A transient failure keeps the row ``sending`` (Feishu may have committed). A
        permanent one is ``rejected`` only when no send of this order id can have reached
        Feishu. When another send of it is still waiting for its answer, the row stays
        ``sending`` for that send to settle; when an earlier send (this call's or another
        try's) ended without a known outcome, only a person can say whether money moved
        (``review``). ``reach`` is how far the call got, as the client decided it: one that never
        got to the withdraw endpoint (its login failed, Feishu's gateway refused it) counts as
        no send, and moves nothing to ``review`` — a row with an earlier unknown send stays
        ``sending`` for the next try to send again.
        """
        order_id = claim.intent.external_order_id
        now = now_iso()
        with self._begin() as conn:
            row = self._row(conn, order_id, lock=True)
            in_flight = unknown = False
            if row.status == SENDING and not retryable:
                in_flight, unknown = self._other_attempts(conn, claim)
            outcome = failure_outcome(
                retryable=retryable, reach=reach, in_flight=in_flight, unknown=unknown or claim.uncertain
            )
            after = next_status(row.status, outcome)
            if row.status == SENDING:
                conn.execute(
                    update(withdrawal)
                    .where(w.external_order_id == order_id)
                    .values(status=after, error_code=code, error_msg=msg, log_id=log_id, updated_at=now)
                )
            # The attempt's own outcome: what this send left (unknown when another send settled the row).
            attempt = after if row.status == SENDING and after is not None else SENDING
            unsent = not reach.reached_endpoint and attempt == SENDING
            self._finish_attempt(conn, claim, UNSENT if unsent else attempt, now, code=code, msg=msg, log_id=log_id)
            return self._row(conn, order_id)

    def record_unreadable(self, claim: Claim, raw_answer: str, problem: str) -> None:
        """A success answer that does not parse: kept raw, never replaced, settled by a person."""
        order_id = claim.intent.external_order_id
        now = now_iso()
        msg = f"Feishu's answer does not parse: {problem}"
        with self._begin() as conn:
            row = self._row(conn, order_id, lock=True)
            if row.status != REVIEW and next_status(row.status, Outcome.UNREADABLE) == REVIEW:
                conn.execute(
                    update(withdrawal)
                    .where(w.external_order_id == order_id)
                    .values(status=REVIEW, raw_answer=raw_answer, error_msg=msg, updated_at=now)
                )
            self._finish_attempt(conn, claim, REVIEW, now, msg=msg)

    def _other_attempts(self, conn: Connection, claim: Claim) -> tuple[bool, bool]:
        """(a send of this order id may still be waiting for its answer, a send ended with no known outcome)."""
        recent = self._in_flight_since()
        a = withdrawal_attempt.c
        others = conn.execute(
            select(a.started_at, a.outcome).where(
                a.external_order_id == claim.intent.external_order_id, a.id != (claim.attempt_id or -1)
            )
        ).all()
        in_flight = any(outcome is None and started >= recent for started, outcome in others)
        unknown = any(outcome == SENDING or (outcome is None and started < recent) for started, outcome in others)
        return in_flight, unknown

    def _in_flight_since(self) -> str:
        """Sends started after this time (ISO 8601) may still be waiting for Feishu's answer."""
        since = datetime.now(timezone.utc) - timedelta(seconds=self.in_flight_seconds)
        return since.isoformat(timespec="milliseconds")

    def attempts(self, external_order_id: str) -> list[dict[str, Any]]:
        """Every send of an order, oldest first: who sent it (DAG, run, task, try), when, and what came back."""
        a = withdrawal_attempt.c
        columns = (a.dag_id, a.run_id, a.task_id, a.map_index, a.try_number, a.run_generation, a.started_at,
                   a.finished_at, a.outcome, a.error_code, a.error_msg, a.log_id)  # fmt: skip
        with self._begin(write=False) as conn:
            found = conn.execute(select(*columns).where(a.external_order_id == external_order_id).order_by(a.id))
            return [dict(row._mapping) for row in found]

    # -- reading -------------------------------------------------------------------------------

    def get(self, external_order_id: str) -> LedgerRow | None:
        with self._begin(write=False) as conn:
            found = self._select_in(conn, w.external_order_id == external_order_id)
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
        run_generation: int | None = None,
        app_id: str | None = None,
        payroll_batch_id: int | None = None,
    ) -> list[LedgerRow]:
        """Withdrawals by DAG run (and its generation), app, payroll batch, ``trans_time`` in ``[start, end)``
        (ms; paid ones only have one), status, or first requested before an ISO 8601 UTC time."""
        if isinstance(statuses, str):
            statuses = (statuses,)
        where: list[ColumnElement[bool]] = [w.status.in_(statuses)] if statuses else []
        m = payroll_batch_member.c
        for make, value in (
            (lambda v: w.dag_id == v, dag_id),
            (lambda v: w.run_id == v, run_id),
            (lambda v: w.trans_time >= v, start_trans_time),
            (lambda v: w.trans_time < v, end_trans_time),
            (lambda v: w.requested_at < v, requested_before),
            (lambda v: w.run_generation == v, run_generation),
            (lambda v: w.app_id == v, app_id),
            (lambda v: w.external_order_id.in_(select(m.external_order_id).where(m.payroll_batch_id == v)),
             payroll_batch_id),
        ):  # fmt: skip
            if value is not None:
                where.append(make(value))
        with self._begin(write=False) as conn:
            return self._select_in(conn, *where)

    def point_totals(self, app_id: str, start_trans_time: int, end_trans_time: int) -> dict[str, int]:
        """Points paid per account by ``app_id`` with ``trans_time`` in ``[start, end]`` (ms, both inclusive)."""
        query = (
            select(w.referral_account_id, func.sum(w.point_bonus))
            .where(w.status == PAID, w.app_id == app_id, w.trans_time.between(start_trans_time, end_trans_time))
            .group_by(w.referral_account_id)
            .order_by(w.referral_account_id)
        )
        with self._begin(write=False) as conn:
            return {account: int(points or 0) for account, points in conn.execute(query)}

    def paid_at(self, app_id: str, trans_time: int) -> bool:
        """Whether any withdrawal of ``app_id`` was paid at exactly this millisecond."""
        query = select(func.count()).where(w.status == PAID, w.app_id == app_id, w.trans_time == trans_time)
        with self._begin(write=False) as conn:
            return bool(conn.execute(query).scalar_one())

    def trans_time_range(self, dag_id: str, run_id: str) -> tuple[int, int] | None:
        """The first and last ``trans_time`` paid in a DAG run, or None when it paid nothing."""
        query = select(func.min(w.trans_time), func.max(w.trans_time)).where(
            w.status == PAID, w.dag_id == dag_id, w.run_id == run_id
        )
        with self._begin(write=False) as conn:
            low, high = conn.execute(query).one()
        return None if low is None else (int(low), int(high))

    # -- internals -----------------------------------------------------------------------------

    def _open(self, conn: Connection, intent: Intent, status: str, now: str) -> LedgerRow:
        """How every claim and settlement without a send starts: the try must hold its lease; the order's row
        is inserted (with ``status``, no sends) unless the ledger holds it, then locked, and must be the same
        withdrawal."""
        self._check_lease(conn, intent.task_try)
        self._insert(conn, intent, status, now)
        row = self._row(conn, intent.external_order_id, lock=True)
        self._check_same_withdrawal(conn, intent, row)
        return row

    def _insert(self, conn: Connection, intent: Intent, status: str, now: str) -> None:
        """The order's row, unless the ledger holds it already (then nothing changes)."""
        insert_new(
            conn,
            withdrawal,
            {"external_order_id": intent.external_order_id, "referral_account_id": intent.referral_account_id,
             "withdraw_bonus_type": intent.bonus_types, "app_id": intent.app_id, "dag_id": intent.dag_id,
             "run_id": intent.run_id, "task_id": intent.task_id, "map_index": intent.map_index,
             "requested_at": now, "status": status, "sends": 0, "updated_at": now},
        )  # fmt: skip

    def _row(self, conn: Connection, order_id: str, *, lock: bool = False) -> LedgerRow:
        """The row; ``lock`` holds it until the transaction ends (SQLite's BEGIN IMMEDIATE holds the file)."""
        query = select(*_ROW_COLUMNS).where(w.external_order_id == order_id)
        values = conn.execute(query.with_for_update() if lock else query).one()
        cash = conn.execute(
            select(withdrawal_cash.c.currency_type, withdrawal_cash.c.amount).where(
                withdrawal_cash.c.external_order_id == order_id
            )
        )
        return _ledger_row(values, {currency: amount for currency, amount in cash})

    def _select_in(self, conn: Connection, *where: ColumnElement[bool]) -> list[LedgerRow]:
        """Rows matching ``where``, with their cash, in two queries whatever their number."""
        found = conn.execute(select(*_ROW_COLUMNS).where(*where).order_by(w.external_order_id)).all()
        c = withdrawal_cash.c
        cash: dict[str, dict[str, Decimal]] = {}
        if found:
            selected = select(w.external_order_id).where(*where)
            for order_id, currency, amount in conn.execute(
                select(c.external_order_id, c.currency_type, c.amount).where(c.external_order_id.in_(selected))
            ):
                cash.setdefault(order_id, {})[currency] = amount
        return [_ledger_row(values, cash.get(values[0], {})) for values in found]

    def _insert_cash(self, conn: Connection, order_id: str, cash: dict[str, Decimal] | Any) -> None:
        if cash:
            conn.execute(
                insert(withdrawal_cash),
                [{"external_order_id": order_id, "currency_type": currency, "amount": amount}
                 for currency, amount in cash.items()],
            )  # fmt: skip

    def _check_same_withdrawal(self, conn: Connection, intent: Intent, row: LedgerRow) -> None:
        """An order id stands for one withdrawal: the same account, app and bonus types, or it is refused."""
        app_id, kinds = conn.execute(
            select(w.app_id, w.withdraw_bonus_type).where(w.external_order_id == intent.external_order_id)
        ).one()
        if row.referral_account_id != intent.referral_account_id:
            raise OrderIdConflict(
                f"external_order_id {intent.external_order_id} already belongs to referral account "
                f"{row.referral_account_id} in the ledger, so it cannot be used for {intent.referral_account_id}: "
                "Feishu would answer with the other account's withdrawal"
            )
        if (app_id, kinds) != (intent.app_id, intent.bonus_types):
            raise OrderIdConflict(
                f"external_order_id {intent.external_order_id} was used by app {app_id} for bonus types {kinds}, "
                f"not app {intent.app_id} for {intent.bonus_types}: Feishu would replay the first withdrawal. "
                "Withdraw the rest in a new DAG run (a new order id)"
            )

    def _finish_attempt(
        self,
        conn: Connection,
        claim: Claim,
        outcome: str,
        now: str,
        *,
        code: int | None = None,
        msg: str | None = None,
        log_id: str | None = None,
    ) -> None:
        if claim.attempt_id is not None:
            conn.execute(
                update(withdrawal_attempt)
                .where(withdrawal_attempt.c.id == claim.attempt_id)
                .values(finished_at=now, outcome=outcome, error_code=code, error_msg=msg, log_id=log_id)
            )


def _owner(intent: Intent) -> dict[str, Any]:
    """The task that sends (or settles) an order: its run's payroll is where the payment belongs."""
    return {"dag_id": intent.dag_id, "run_id": intent.run_id, "task_id": intent.task_id,
            "map_index": intent.map_index, "run_generation": intent.run_generation}  # fmt: skip


def _ledger_row(values: Sequence[Any], cash: dict[str, Decimal]) -> LedgerRow:
    (order_id, account, status, dag_id, run_id, task_id, sends, trans_time, points, code, msg, log_id, raw,
     generation, batch_id) = values  # fmt: skip
    paid = Withdrawal(account, order_id, int(trans_time), int(points or 0), cash) if status == PAID else None
    return LedgerRow(
        order_id, account, status, dag_id, run_id, task_id, int(sends), None if code is None else int(code), msg,
        log_id, paid, raw, cash, int(generation), None if batch_id is None else int(batch_id),
    )  # fmt: skip
