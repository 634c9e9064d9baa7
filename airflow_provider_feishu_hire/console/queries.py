"""Read queries of the payouts console, written against the ledger's tables (see ``ledger.py``'s DDL).

No Airflow here. Every query is parameterized (``?`` placeholders, translated for
PostgreSQL by the ledger's cursor), restricted to the DAG ids the caller may read, paginated
or aggregated in SQL, and money stays exact: ``Decimal`` in Python, decimal strings out.
SQLite keeps cash as decimal text, so its per-day sums add the amounts as integers of their
own scale (``"12.50"`` is 1250 at scale 2) and Python joins the scales exactly.
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

from airflow_provider_feishu_hire.ledger import (
    IN_FLIGHT_SECONDS,
    NEEDS_APPROVAL,
    PAID,
    REJECTED,
    REVIEW,
    SENDING,
    SKIPPED,
    Ledger,
)
from airflow_provider_feishu_hire.withdrawal import format_money, trans_time_iso

STATUSES = (SKIPPED, SENDING, PAID, REJECTED, REVIEW, NEEDS_APPROVAL)
DAY_MS = 86_400_000
MAX_DAYS = 92  # the chart's longest period: a quarter (see benchmarks/bench_console.py)

_ROW_COLUMNS = (
    "w.external_order_id, w.referral_account_id, w.status, w.app_id, w.dag_id, w.run_id, w.task_id, w.map_index, "
    "w.run_generation, w.requested_at, w.updated_at, w.sends, w.trans_time, w.point_bonus, w.error_code, "
    "w.error_msg, w.log_id, "
    "(SELECT m.payroll_batch_id FROM feishu_hire_payroll_batch_member m "
    "WHERE m.external_order_id = w.external_order_id), "
    "(SELECT count(*) FROM feishu_hire_withdrawal_attempt a WHERE a.external_order_id = w.external_order_id)"
)
_ROW_NAMES = (
    "external_order_id", "referral_account_id", "status", "app_id", "dag_id", "run_id", "task_id", "map_index",
    "run_generation", "requested_at", "updated_at", "sends", "trans_time", "point_bonus", "error_code", "error_msg",
    "log_id", "payroll_batch_id", "attempts",
)  # fmt: skip


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
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _in(column: str, values: Collection[str]) -> tuple[str, list[Any]]:
    """``column IN (?, ...)``; an empty set matches nothing."""
    if not values:
        return "1 = 0", []
    return f"{column} IN ({', '.join('?' for _ in values)})", sorted(values)


def _day_start(day: date) -> str:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc).isoformat(timespec="milliseconds")


def _where(flt: WithdrawalFilter, readable: Collection[str]) -> tuple[str, list[Any]]:
    clause, params = _in("w.dag_id", readable)
    where = [clause]
    for sql, value in (
        ("w.dag_id = ?", flt.dag_id),
        ("w.run_id = ?", flt.run_id),
        ("w.referral_account_id = ?", flt.referral_account_id),
        ("w.status = ?", flt.status),
        ("w.app_id = ?", flt.app_id),
        ("w.requested_at >= ?", _day_start(flt.date_from) if flt.date_from else None),
        ("w.requested_at < ?", _day_start(flt.date_to + timedelta(days=1)) if flt.date_to else None),
        (
            "w.external_order_id IN (SELECT external_order_id FROM feishu_hire_payroll_batch_member "
            "WHERE payroll_batch_id = ?)",
            flt.payroll_batch_id,
        ),
    ):
        if value is not None:
            where.append(sql)
            params.append(value)
    return " AND ".join(where), params


def _cash_of(cur: Any, order_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    if not order_ids:
        return {}
    cur.execute(
        "SELECT external_order_id, currency_type, amount FROM feishu_hire_withdrawal_cash "
        f"WHERE external_order_id IN ({', '.join('?' for _ in order_ids)}) ORDER BY 1, 2",
        list(order_ids),
    )
    cash: dict[str, dict[str, str]] = {}
    for order_id, currency, amount in cur.fetchall():
        cash.setdefault(order_id, {})[currency] = format_money(_money(amount))
    return cash


def _rows(cur: Any, found: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    out = [dict(zip(_ROW_NAMES, values, strict=True)) for values in found]
    cash = _cash_of(cur, [row["external_order_id"] for row in out])
    for row in out:
        row["cash_bonus"] = cash.get(row["external_order_id"], {})
        paid = row["status"] == PAID
        row["point_bonus"] = int(row["point_bonus"] or 0) if paid else None
        row["trans_time_iso"] = trans_time_iso(row["trans_time"]) if row["trans_time"] is not None else None
        row["trans_time"] = None if row["trans_time"] is None else int(row["trans_time"])
        row["attempts"] = int(row["attempts"])
        row["payroll_batch_id"] = None if row["payroll_batch_id"] is None else int(row["payroll_batch_id"])
    return out


def withdrawals(
    ledger: Ledger, flt: WithdrawalFilter, readable: Collection[str], *, limit: int, offset: int
) -> tuple[list[dict[str, Any]], bool]:
    """One page of withdrawals, newest request first, and whether there are more."""
    where, params = _where(flt, readable)
    with ledger._transaction(write=False) as cur:
        cur.execute(
            f"SELECT {_ROW_COLUMNS} FROM feishu_hire_withdrawal w WHERE {where} "
            "ORDER BY w.requested_at DESC, w.external_order_id DESC LIMIT ? OFFSET ?",
            [*params, limit + 1, offset],
        )
        found = cur.fetchall()
        return _rows(cur, found[:limit]), len(found) > limit


def withdrawal(ledger: Ledger, external_order_id: str) -> dict[str, Any] | None:
    """One withdrawal with its cash, batch and number of attempts (no permission check: the caller does it)."""
    with ledger._transaction(write=False) as cur:
        cur.execute(f"SELECT {_ROW_COLUMNS} FROM feishu_hire_withdrawal w WHERE w.external_order_id = ?",
                    [external_order_id])  # fmt: skip
        found = cur.fetchall()
        return _rows(cur, found)[0] if found else None


def needs_attention(ledger: Ledger, readable: Collection[str], *, limit: int) -> dict[str, Any]:
    """What a person must look at: rows in review, sending with no send still able to answer, needing a new
    approval, refused; and settlements waiting for a second person. At most ``limit`` rows of each."""
    recent = (datetime.now(timezone.utc) - timedelta(seconds=IN_FLIGHT_SECONDS)).isoformat(timespec="milliseconds")
    dags, dag_params = _in("w.dag_id", readable)
    out: dict[str, Any] = {}
    with ledger._transaction(write=False) as cur:
        for name, extra, extra_params in (
            ("review", "w.status = ?", [REVIEW]),
            (
                "stuck_sending",
                "w.status = ? AND coalesce((SELECT max(a.started_at) FROM feishu_hire_withdrawal_attempt a "
                "WHERE a.external_order_id = w.external_order_id), w.updated_at) < ?",
                [SENDING, recent],
            ),
            ("needs_approval", "w.status = ?", [NEEDS_APPROVAL]),
            ("rejected", "w.status = ?", [REJECTED]),
        ):
            cur.execute(
                f"SELECT {_ROW_COLUMNS} FROM feishu_hire_withdrawal w WHERE {extra} AND {dags} "
                "ORDER BY w.requested_at DESC, w.external_order_id DESC LIMIT ?",
                [*extra_params, *dag_params, limit + 1],
            )
            found = cur.fetchall()
            out[name] = {"rows": _rows(cur, found[:limit]), "more": len(found) > limit}
        cur.execute(
            "SELECT s.id, s.external_order_id, s.paid, s.trans_time, s.point_bonus, s.cash_bonus, s.evidence, "
            "s.proposed_by, s.proposed_at, w.dag_id, w.referral_account_id FROM feishu_hire_settlement s "
            f"JOIN feishu_hire_withdrawal w ON w.external_order_id = s.external_order_id "
            f"WHERE s.confirmed_by IS NULL AND {dags} ORDER BY s.id LIMIT ?",
            [*dag_params, limit + 1],
        )
        found = cur.fetchall()
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


_BATCH_COLUMNS = (
    "b.id, b.scope, b.scope_key, b.dag_id, b.run_id, b.run_generation, b.task_id, b.map_index, b.try_number, "
    "b.created_at, b.accounts, b.point_bonus, b.cash_bonus, "
    "(SELECT count(*) FROM feishu_hire_payroll_batch_member m WHERE m.payroll_batch_id = b.id)"
)


def payroll_batches(
    ledger: Ledger, readable: Collection[str], *, dag_id: str | None, limit: int, offset: int
) -> tuple[list[dict[str, Any]], bool]:
    """Batches made by exports of readable DAGs, newest first, with their totals as made."""
    where, params = _in("b.dag_id", readable)
    if dag_id is not None:
        where, params = f"{where} AND b.dag_id = ?", [*params, dag_id]
    with ledger._transaction(write=False) as cur:
        cur.execute(
            f"SELECT {_BATCH_COLUMNS} FROM feishu_hire_payroll_batch b WHERE {where} "
            "ORDER BY b.id DESC LIMIT ? OFFSET ?",
            [*params, limit + 1, offset],
        )
        found = cur.fetchall()
    return [_batch(values) for values in found[:limit]], len(found) > limit


def payroll_batch(ledger: Ledger, batch_id: int) -> tuple[dict[str, Any], set[str]] | None:
    """One batch and the DAG ids of its members (who may see it depends on them too)."""
    with ledger._transaction(write=False) as cur:
        cur.execute(f"SELECT {_BATCH_COLUMNS} FROM feishu_hire_payroll_batch b WHERE b.id = ?", [batch_id])
        found = cur.fetchone()
        if found is None:
            return None
        cur.execute(
            "SELECT DISTINCT w.dag_id FROM feishu_hire_payroll_batch_member m JOIN feishu_hire_withdrawal w "
            "ON w.external_order_id = m.external_order_id WHERE m.payroll_batch_id = ?",
            [batch_id],
        )
        dags = {dag for (dag,) in cur.fetchall()}
    return _batch(found), dags | {str(found[3])}


def reconciliations(
    ledger: Ledger, readable: Collection[str], *, dag_id: str | None, only_mismatched: bool, limit: int, offset: int
) -> tuple[list[dict[str, Any]], bool]:
    """Reconciliations run by readable DAGs, newest first, each with its window and disagreements per account."""
    where, params = _in("r.dag_id", readable)
    if dag_id is not None:
        where, params = f"{where} AND r.dag_id = ?", [*params, dag_id]
    if only_mismatched:
        where += " AND r.mismatches > 0"
    with ledger._transaction(write=False) as cur:
        cur.execute(
            "SELECT r.id, r.app_id, r.start_trans_time, r.end_trans_time, r.accounts, r.point_bonus, r.mismatches, "
            f"r.dag_id, r.run_id, r.task_id, r.reconciled_at FROM feishu_hire_reconciliation r WHERE {where} "
            "ORDER BY r.id DESC LIMIT ? OFFSET ?",
            [*params, limit + 1, offset],
        )
        found = cur.fetchall()[: limit + 1]
        more, found = len(found) > limit, found[:limit]
        ids = [int(values[0]) for values in found]
        mismatches: dict[int, list[dict[str, Any]]] = {}
        if ids:
            cur.execute(
                "SELECT reconciliation_id, referral_account_id, ledger_point_bonus, feishu_point_bonus "
                f"FROM feishu_hire_reconciliation_mismatch WHERE reconciliation_id IN ({', '.join('?' for _ in ids)}) "
                "ORDER BY 1, 2",
                ids,
            )
            for rid, account, ours, theirs in cur.fetchall():
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


def _day(ledger: Ledger) -> str:
    """The UTC day number (days since 1970-01-01) of ``w.trans_time``: integer division (MySQL's ``/`` is not)."""
    return f"w.trans_time DIV {DAY_MS}" if ledger.dialect == "mysql" else f"w.trans_time / {DAY_MS}"


def _cash_sums(
    ledger: Ledger, cur: Any, where: str, params: list[Any], group: str | None
) -> dict[int, dict[str, Decimal]]:
    """Cash per currency of the withdrawals ``w`` matching ``where``, per value of the integer SQL expression
    ``group`` (all under 0 without one), summed exactly in SQL."""
    key, by = (group, f"{group}, ") if group else ("0", "")
    join = f"FROM feishu_hire_withdrawal_cash c JOIN feishu_hire_withdrawal w ON w.external_order_id = " \
           f"c.external_order_id WHERE {where}"  # fmt: skip
    if ledger.dialect != "sqlite":  # NUMERIC / DECIMAL: exact sums
        cur.execute(f"SELECT {key}, c.currency_type, 0, sum(c.amount) {join} GROUP BY {by}c.currency_type", params)
    else:  # decimal text: add digits as integers per scale, exactly (an overflow is an error, not a rounding)
        scale = "CASE WHEN instr(c.amount, '.') = 0 THEN 0 ELSE length(c.amount) - instr(c.amount, '.') END"
        cur.execute(
            f"SELECT {key}, c.currency_type, {scale}, sum(CAST(replace(c.amount, '.', '') AS INTEGER)) {join} "
            f"GROUP BY {by}c.currency_type, {scale}",
            params,
        )
    sums: dict[int, dict[str, Decimal]] = {}
    for number, currency, places, total in cur.fetchall():
        amount = _money(total) if ledger.dialect != "sqlite" else Decimal(int(total)).scaleb(-int(places))
        cash = sums.setdefault(int(number), {})
        cash[currency] = cash.get(currency, Decimal(0)) + amount
    return sums


def _cash_per_day(
    ledger: Ledger, cur: Any, where: str, params: list[Any], start: int, end: int
) -> dict[int, dict[str, Decimal]]:
    """Cash per currency per day number of paid withdrawals with ``start <= trans_time < end``, summed in SQL."""
    where = f"{where} AND w.trans_time >= ? AND w.trans_time < ?"
    return _cash_sums(ledger, cur, where, [*params, start, end], _day(ledger))


def totals(ledger: Ledger, flt: WithdrawalFilter, readable: Collection[str]) -> dict[str, Any]:
    """What the withdrawals a filter selects add up to: how many in each status, and the points and cash paid.

    Only for a narrow filter (the console asks with a run): it reads every row selected."""
    where, params = _where(flt, readable)
    with ledger._transaction(write=False) as cur:
        cur.execute(
            f"SELECT w.status, count(*), sum(w.point_bonus) FROM feishu_hire_withdrawal w WHERE {where} "
            "GROUP BY w.status",
            params,
        )
        found = cur.fetchall()
        cash = _cash_sums(ledger, cur, f"{where} AND w.status = ?", [*params, PAID], None).get(0, {})
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
    where, params = _in("w.dag_id", readable)
    where = f"w.status = ? AND {where}"
    params = [PAID, *params]
    for column, value in (("w.dag_id", dag_id), ("w.app_id", app_id)):
        if value is not None:
            where, params = f"{where} AND {column} = ?", [*params, value]
    key = (frozenset(readable), dag_id, app_id)
    cached = _cash_by_day.get(ledger, key)
    counted: dict[int, tuple[int, int]] = {}
    with ledger._transaction(write=False) as cur:
        cur.execute(
            f"SELECT {_day(ledger)}, count(*), sum(w.point_bonus) FROM feishu_hire_withdrawal w "
            f"WHERE {where} AND w.trans_time >= ? AND w.trans_time < ? GROUP BY {_day(ledger)}",
            [*params, start, end],
        )
        for number, count, points in cur.fetchall():
            counted[int(number)] = (int(count), int(points or 0))
        stale = sorted(n for n, (count, _) in counted.items() if n not in cached or cached[n][0] != count)
        if stale:  # one query over the span of the days to sum again (on a payday: today)
            fresh = _cash_per_day(ledger, cur, where, params, stale[0] * DAY_MS, (stale[-1] + 1) * DAY_MS)
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
    with ledger._transaction(write=False) as cur:
        cur.execute(
            "SELECT s.external_order_id, s.proposed_by, w.dag_id, s.confirmed_by FROM feishu_hire_settlement s "
            "JOIN feishu_hire_withdrawal w ON w.external_order_id = s.external_order_id WHERE s.id = ?",
            [settlement_id],
        )
        found = cur.fetchone()
    return None if found is None else (found[0], found[1], found[2], found[3] is not None)
