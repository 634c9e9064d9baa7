"""Read queries of the payouts console, in SQLAlchemy Core against the ledger's tables (``ledger/schema.py``).

No Airflow here. Every query binds its values, is restricted to the DAG ids the caller may
read, is paginated or aggregated in SQL, and money stays exact: ``Decimal`` in Python,
decimal strings out. What each database spells its own way (day numbers, exact sums of
SQLite's decimal text) is written once in ``ledger/database.py``.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, and_, false, func, select, type_coerce
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement
from sqlalchemy.types import NullType

from airflow_provider_feishu_hire.ledger import (
    IN_FLIGHT_SECONDS,
    NEEDS_APPROVAL,
    PAID,
    REJECTED,
    REVIEW,
    SENDING,
    SKIPPED,
    Ledger,
    schema,
)
from airflow_provider_feishu_hire.ledger.database import DAY_MS, day_number, money_sum
from airflow_provider_feishu_hire.ledger.schema import MONEY_SCALE, tidy_money
from airflow_provider_feishu_hire.withdrawal import format_money, trans_time_iso

STATUSES = (SKIPPED, SENDING, PAID, REJECTED, REVIEW, NEEDS_APPROVAL)
MAX_DAYS = 92  # the chart's longest period: a quarter (see benchmarks/bench_console.py)

w, c, a, m = schema.withdrawal.c, schema.withdrawal_cash.c, schema.withdrawal_attempt.c, schema.payroll_batch_member.c
b, r, s = schema.payroll_batch.c, schema.reconciliation.c, schema.settlement.c

_ROW = (
    w.external_order_id, w.referral_account_id, w.status, w.app_id, w.dag_id, w.run_id, w.task_id, w.map_index,
    w.run_generation, w.requested_at, w.updated_at, w.sends, w.trans_time, w.point_bonus, w.error_code,
    w.error_msg, w.log_id,
    select(m.payroll_batch_id).where(m.external_order_id == w.external_order_id).scalar_subquery()
    .label("payroll_batch_id"),
    select(func.count()).select_from(schema.withdrawal_attempt).where(a.external_order_id == w.external_order_id)
    .scalar_subquery().label("attempts"),
)  # fmt: skip
_ROW_NAMES = tuple(str(column.name) for column in _ROW)


@dataclass(frozen=True)
class WithdrawalFilter:
    """What a person asked for; ``None`` means any. Dates are UTC days of ``requested_at``, both inclusive."""

    dag_id: str | None = None
    run_id: str | None = None
    referral_account_id: str | None = None
    status: str | None = None
    app_id: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    payroll_batch_id: int | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is unknown: use one of {', '.join(STATUSES)}")
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValueError("date_from is after date_to")


def _money(value: Any) -> Decimal:
    """An amount as the driver gave it (decimal text on SQLite), without the zeros a DECIMAL(38, 12) adds."""
    amount = value if isinstance(value, Decimal) else Decimal(str(value))
    return tidy_money(amount) if amount.as_tuple().exponent == -MONEY_SCALE else amount


def _in(column: ColumnElement[Any], values: Collection[str]) -> ColumnElement[bool]:
    """``column IN (...)``; an empty set matches nothing."""
    return column.in_(sorted(values)) if values else false()


def _day_start(day: date) -> str:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc).isoformat(timespec="milliseconds")


def _where(flt: WithdrawalFilter, readable: Collection[str]) -> list[ColumnElement[bool]]:
    where = [_in(w.dag_id, readable)]
    for column, value in (
        (w.dag_id, flt.dag_id),
        (w.run_id, flt.run_id),
        (w.referral_account_id, flt.referral_account_id),
        (w.status, flt.status),
        (w.app_id, flt.app_id),
    ):
        if value is not None:
            where.append(column == value)
    if flt.date_from:
        where.append(w.requested_at >= _day_start(flt.date_from))
    if flt.date_to:
        where.append(w.requested_at < _day_start(flt.date_to + timedelta(days=1)))
    if flt.payroll_batch_id is not None:
        batch = select(m.external_order_id).where(m.payroll_batch_id == flt.payroll_batch_id)
        where.append(w.external_order_id.in_(batch))
    return where


def _raw(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """A money column as the driver reads it (see :func:`_money`)."""
    return type_coerce(column, NullType())


def _cash_of(conn: Connection, order_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    if not order_ids:
        return {}
    query = (
        select(c.external_order_id, c.currency_type, _raw(c.amount))
        .where(c.external_order_id.in_(list(order_ids)))
        .order_by(c.external_order_id, c.currency_type)
    )
    cash: dict[str, dict[str, str]] = {}
    for order_id, currency, amount in conn.execute(query):
        cash.setdefault(order_id, {})[currency] = format_money(_money(amount))
    return cash


def _rows(conn: Connection, found: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    out = [dict(zip(_ROW_NAMES, values, strict=True)) for values in found]
    cash = _cash_of(conn, [row["external_order_id"] for row in out])
    for row in out:
        row["cash_bonus"] = cash.get(row["external_order_id"], {})
        paid = row["status"] == PAID
        row["point_bonus"] = int(row["point_bonus"] or 0) if paid else None
        row["trans_time_iso"] = trans_time_iso(row["trans_time"]) if row["trans_time"] is not None else None
        row["trans_time"] = None if row["trans_time"] is None else int(row["trans_time"])
        row["attempts"] = int(row["attempts"])
        row["payroll_batch_id"] = None if row["payroll_batch_id"] is None else int(row["payroll_batch_id"])
    return out


def _newest_first(where: Sequence[ColumnElement[bool]]) -> Select[Any]:
    return select(*_ROW).where(*where).order_by(w.requested_at.desc(), w.external_order_id.desc())


def withdrawals(
    ledger: Ledger, flt: WithdrawalFilter, readable: Collection[str], *, limit: int, offset: int
) -> tuple[list[dict[str, Any]], bool]:
    """One page of withdrawals, newest request first, and whether there are more."""
    with ledger._begin(write=False) as conn:
        found = conn.execute(_newest_first(_where(flt, readable)).limit(limit + 1).offset(offset)).all()
        return _rows(conn, found[:limit]), len(found) > limit


def withdrawal(ledger: Ledger, external_order_id: str) -> dict[str, Any] | None:
    """One withdrawal with its cash, batch and number of attempts (no permission check: the caller does it)."""
    with ledger._begin(write=False) as conn:
        found = conn.execute(select(*_ROW).where(w.external_order_id == external_order_id)).all()
        return _rows(conn, found)[0] if found else None


def needs_attention(ledger: Ledger, readable: Collection[str], *, limit: int) -> dict[str, Any]:
    """What a person must look at: rows in review, sending with no send still able to answer, needing a new
    approval, refused; and settlements waiting for a second person. At most ``limit`` rows of each."""
    recent = (datetime.now(timezone.utc) - timedelta(seconds=IN_FLIGHT_SECONDS)).isoformat(timespec="milliseconds")
    dags = _in(w.dag_id, readable)
    last_send = select(func.max(a.started_at)).where(a.external_order_id == w.external_order_id).scalar_subquery()
    out: dict[str, Any] = {}
    with ledger._begin(write=False) as conn:
        for name, extra in (
            ("review", w.status == REVIEW),
            ("stuck_sending", and_(w.status == SENDING, func.coalesce(last_send, w.updated_at) < recent)),
            ("needs_approval", w.status == NEEDS_APPROVAL),
            ("rejected", w.status == REJECTED),
        ):
            found = conn.execute(_newest_first([extra, dags]).limit(limit + 1)).all()
            out[name] = {"rows": _rows(conn, found[:limit]), "more": len(found) > limit}
        found = conn.execute(
            select(
                s.id, s.external_order_id, s.paid, s.trans_time, s.point_bonus, s.cash_bonus, s.evidence,
                s.proposed_by, s.proposed_at, w.dag_id, w.referral_account_id,
            )
            .select_from(schema.settlement.join(schema.withdrawal, w.external_order_id == s.external_order_id))
            .where(s.confirmed_by.is_(None), dags)
            .order_by(s.id)
            .limit(limit + 1)
        ).all()  # fmt: skip
    pending = [
        {
            "id": int(sid), "external_order_id": order, "paid": bool(paid),
            "trans_time": None if when is None else int(when), "point_bonus": None if points is None else int(points),
            "cash_bonus": json.loads(cash or "{}"), "evidence": evidence, "proposed_by": by, "proposed_at": at,
            "dag_id": dag_id, "referral_account_id": account,
        }
        for sid, order, paid, when, points, cash, evidence, by, at, dag_id, account in found[:limit]
    ]  # fmt: skip
    out["pending_settlements"] = {"rows": pending, "more": len(found) > limit}
    return out


def _batch(values: Sequence[Any]) -> dict[str, Any]:
    (batch_id, scope, key, dag_id, run_id, generation, task_id, map_index, try_number, created, accounts, points,
     cash, members) = values  # fmt: skip
    return {
        "id": int(batch_id), "scope": scope, "scope_key": key, "dag_id": dag_id, "run_id": run_id,
        "run_generation": int(generation), "task_id": task_id, "map_index": int(map_index),
        "try_number": int(try_number), "created_at": created, "accounts": int(accounts), "withdrawals": int(members),
        "point_bonus": int(points),
        "cash_bonus": {c: format_money(Decimal(a)) for c, a in sorted(json.loads(cash).items())},
    }  # fmt: skip


_BATCH = (
    b.id, b.scope, b.scope_key, b.dag_id, b.run_id, b.run_generation, b.task_id, b.map_index, b.try_number,
    b.created_at, b.accounts, b.point_bonus, b.cash_bonus,
    select(func.count()).select_from(schema.payroll_batch_member).where(m.payroll_batch_id == b.id).scalar_subquery(),
)  # fmt: skip


def payroll_batches(
    ledger: Ledger, readable: Collection[str], *, dag_id: str | None, limit: int, offset: int
) -> tuple[list[dict[str, Any]], bool]:
    """Batches made by exports of readable DAGs, newest first, with their totals as made."""
    query = select(*_BATCH).where(_in(b.dag_id, readable))
    if dag_id is not None:
        query = query.where(b.dag_id == dag_id)
    with ledger._begin(write=False) as conn:
        found = conn.execute(query.order_by(b.id.desc()).limit(limit + 1).offset(offset)).all()
    return [_batch(values) for values in found[:limit]], len(found) > limit


def payroll_batch(ledger: Ledger, batch_id: int) -> tuple[dict[str, Any], set[str]] | None:
    """One batch and the DAG ids of its members (who may see it depends on them too)."""
    with ledger._begin(write=False) as conn:
        found = conn.execute(select(*_BATCH).where(b.id == batch_id)).first()
        if found is None:
            return None
        dags = set(
            conn.execute(
                select(w.dag_id)
                .distinct()
                .select_from(
                    schema.payroll_batch_member.join(schema.withdrawal, w.external_order_id == m.external_order_id)
                )
                .where(m.payroll_batch_id == batch_id)
            ).scalars()
        )
    return _batch(found), dags | {str(found[3])}


def reconciliations(
    ledger: Ledger, readable: Collection[str], *, dag_id: str | None, only_mismatched: bool, limit: int, offset: int
) -> tuple[list[dict[str, Any]], bool]:
    """Reconciliations run by readable DAGs, newest first, each with its window and disagreements per account."""
    query = select(
        r.id, r.app_id, r.start_trans_time, r.end_trans_time, r.accounts, r.point_bonus, r.mismatches, r.dag_id,
        r.run_id, r.task_id, r.reconciled_at,
    ).where(_in(r.dag_id, readable))  # fmt: skip
    if dag_id is not None:
        query = query.where(r.dag_id == dag_id)
    if only_mismatched:
        query = query.where(r.mismatches > 0)
    with ledger._begin(write=False) as conn:
        found = conn.execute(query.order_by(r.id.desc()).limit(limit + 1).offset(offset)).all()[: limit + 1]
        more, found = len(found) > limit, found[:limit]
        ids = [int(values[0]) for values in found]
        mismatches: dict[int, list[dict[str, Any]]] = {}
        if ids:
            x = schema.reconciliation_mismatch.c
            for rid, account, ours, theirs in conn.execute(
                select(x.reconciliation_id, x.referral_account_id, x.ledger_point_bonus, x.feishu_point_bonus)
                .where(x.reconciliation_id.in_(ids))
                .order_by(x.reconciliation_id, x.referral_account_id)
            ):
                mismatches.setdefault(int(rid), []).append(
                    {"referral_account_id": account, "ledger_point_bonus": int(ours), "feishu_point_bonus": int(theirs)}
                )
    out = []
    for rid, app_id, start, end, accounts, points, count, dag, run, task, when in found:
        out.append({
            "id": int(rid), "app_id": app_id, "start_trans_time": int(start), "end_trans_time": int(end),
            "start": trans_time_iso(start), "end": trans_time_iso(end), "accounts": int(accounts),
            "point_bonus": int(points), "mismatch_count": int(count), "agrees": int(count) == 0, "dag_id": dag,
            "run_id": run, "task_id": task, "reconciled_at": when, "mismatches": mismatches.get(int(rid), []),
        })  # fmt: skip
    return out, more


class _CashByDay:
    """Each day's cash totals, as last summed, with the number of paid withdrawals they were summed over.

    A paid withdrawal is final: it is never deleted, its ``trans_time`` and amounts never
    change, and no row leaves ``paid``. So the set of paid withdrawals of a day (under fixed
    filters) only grows, and a day whose count is what it was when its cash was summed has
    the same cash. ``paid_per_day`` counts every day in the query it needs for the points
    anyway, and sums cash (the join with the cash table, most of the chart's time on a big
    ledger) only for days whose count changed: on a payday, today. Kept per ledger object and
    per filter (the DAGs a user may read, the DAG and app asked for), for at most
    :data:`_CACHE_KEYS` filters; a process's cache only ever misses, never answers stale.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_ledger: weakref.WeakKeyDictionary[Ledger, OrderedDict[Any, dict[int, tuple[int, dict[str, Decimal]]]]]
        self._by_ledger = weakref.WeakKeyDictionary()

    def get(self, ledger: Ledger, key: Any) -> dict[int, tuple[int, dict[str, Decimal]]]:
        with self._lock:
            filters = self._by_ledger.setdefault(ledger, OrderedDict())
            days = filters.pop(key, {})
            filters[key] = days  # the most recently used last
            while len(filters) > _CACHE_KEYS:
                filters.popitem(last=False)
            return dict(days)

    def put(self, ledger: Ledger, key: Any, days: dict[int, tuple[int, dict[str, Decimal]]]) -> None:
        with self._lock:
            filters = self._by_ledger.setdefault(ledger, OrderedDict())
            filters[key] = days
            while len(filters) > _CACHE_KEYS:
                filters.popitem(last=False)


_CACHE_KEYS = 256
_cash_by_day = _CashByDay()


def _cash_sums(
    ledger: Ledger, conn: Connection, where: Sequence[ColumnElement[bool]], group: ColumnElement[Any] | None
) -> dict[int, dict[str, Decimal]]:
    """Cash per currency of the withdrawals matching ``where``, per value of the integer SQL expression ``group``
    (all under 0 without one), summed exactly in SQL (:func:`~ledger.database.money_sum`)."""
    total, *places = money_sum(ledger.dialect, c.amount)
    keys = [] if group is None else [group]
    query = (
        select(*keys, c.currency_type, total, *places)
        .select_from(schema.withdrawal_cash.join(schema.withdrawal, w.external_order_id == c.external_order_id))
        .where(*where)
        .group_by(*keys, c.currency_type, *places)
    )
    sums: dict[int, dict[str, Decimal]] = {}
    for found in conn.execute(query):
        number = int(found[0]) if group is not None else 0
        currency, digits, *scale = found[len(keys) :]
        amount = _money(digits)
        if scale and scale[0]:
            amount = amount.scaleb(-int(scale[0]))
        cash = sums.setdefault(number, {})
        cash[currency] = cash.get(currency, Decimal(0)) + amount
    return sums


def totals(ledger: Ledger, flt: WithdrawalFilter, readable: Collection[str]) -> dict[str, Any]:
    """What the withdrawals a filter selects add up to: how many in each status, and the points and cash paid.

    Only for a narrow filter (the console asks with a run): it reads every row selected."""
    where = _where(flt, readable)
    with ledger._begin(write=False) as conn:
        found = conn.execute(
            select(w.status, func.count(), func.sum(w.point_bonus)).where(*where).group_by(w.status)
        ).all()
        cash = _cash_sums(ledger, conn, [*where, w.status == PAID], None).get(0, {})
    statuses = {status: int(count) for status, count, _ in found}
    points = sum(int(p or 0) for status, _, p in found if status == PAID)
    return {
        "withdrawals": sum(statuses.values()),
        "statuses": dict(sorted(statuses.items())),
        "paid_point_bonus": points,
        "paid_cash_bonus": {c: format_money(a) for c, a in sorted(cash.items())},
    }


def paid_per_day(
    ledger: Ledger,
    readable: Collection[str],
    *,
    day_from: date,
    day_to: date,
    dag_id: str | None = None,
    app_id: str | None = None,
) -> dict[str, Any]:
    """Points and cash per currency paid per UTC day of Feishu's ``trans_time`` (both days inclusive), summed in
    SQL; and the period's totals. Days without payments are left out.

    One query counts the withdrawals and sums the points per day (an index-only scan of
    ``feishu_hire_withdrawal_paid_day``); cash is summed again only for the days whose count
    differs from when their cash was last summed (see :class:`_CashByDay`).
    """
    start = int(datetime(day_from.year, day_from.month, day_from.day, tzinfo=timezone.utc).timestamp() * 1000)
    end = int(datetime(day_to.year, day_to.month, day_to.day, tzinfo=timezone.utc).timestamp() * 1000) + DAY_MS
    where = [w.status == PAID, _in(w.dag_id, readable)]
    for column, value in ((w.dag_id, dag_id), (w.app_id, app_id)):
        if value is not None:
            where.append(column == value)
    day = day_number(w.trans_time)
    key = (frozenset(readable), dag_id, app_id)
    cached = _cash_by_day.get(ledger, key)
    counted: dict[int, tuple[int, int]] = {}
    with ledger._begin(write=False) as conn:
        query = select(day, func.count(), func.sum(w.point_bonus)).where(
            *where, w.trans_time >= start, w.trans_time < end
        )
        for number, count, points in conn.execute(query.group_by(day)):
            counted[int(number)] = (int(count), int(points or 0))
        stale = sorted(n for n, (count, _) in counted.items() if n not in cached or cached[n][0] != count)
        if stale:  # one query over the span of the days to sum again (on a payday: today)
            span = [w.trans_time >= stale[0] * DAY_MS, w.trans_time < (stale[-1] + 1) * DAY_MS]
            fresh = _cash_sums(ledger, conn, [*where, *span], day)
            for number in stale:
                cached[number] = (counted[number][0], fresh.get(number, {}))
    _cash_by_day.put(ledger, key, cached)
    totals: dict[str, Any] = {"withdrawals": 0, "point_bonus": 0, "cash": {}}
    out = []
    for number in sorted(counted):
        count, points = counted[number]
        cash = cached[number][1]
        totals["withdrawals"] += count
        totals["point_bonus"] += points
        for currency, amount in cash.items():
            totals["cash"][currency] = totals["cash"].get(currency, Decimal(0)) + amount
        out.append({
            "day": (date(1970, 1, 1) + timedelta(days=number)).isoformat(), "withdrawals": count,
            "point_bonus": points, "cash_bonus": {c: format_money(a) for c, a in sorted(cash.items())},
        })  # fmt: skip
    return {
        "from": day_from.isoformat(),
        "to": day_to.isoformat(),
        "days": out,
        "totals": {
            "withdrawals": totals["withdrawals"],
            "point_bonus": totals["point_bonus"],
            "cash_bonus": {c: format_money(a) for c, a in sorted(totals["cash"].items())},
        },
    }


def settlement_owner(ledger: Ledger, settlement_id: int) -> tuple[str, str, str, bool] | None:
    """(order id, proposer, DAG id of the order, already confirmed) of a settlement, or None."""
    with ledger._begin(write=False) as conn:
        found = conn.execute(
            select(s.external_order_id, s.proposed_by, w.dag_id, s.confirmed_by)
            .select_from(schema.settlement.join(schema.withdrawal, w.external_order_id == s.external_order_id))
            .where(s.id == settlement_id)
        ).first()
    return None if found is None else (found[0], found[1], found[2], found[3] is not None)
