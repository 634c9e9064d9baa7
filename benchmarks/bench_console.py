"""How fast the payouts console's pages are on a big ledger: every console query, without and with the indexes
it needs, on an SQLite ledger of 1,000,000 withdrawals.

    .venv/bin/python benchmarks/bench_console.py                       # builds /tmp/feishu_console_bench.db once
    .venv/bin/python benchmarks/bench_console.py --withdrawals 100000 --db /tmp/small.db

The ledger is filled with plain INSERTs (the ledger's own methods would take hours for a
million rows) in the ledger's schema (``Ledger.migrate``): 20 DAGs, 2,000 runs, 100,000
accounts, a year of requests; 97% paid (points, CNY, every fifth also USD), the rest
review, sending, rejected, needs_approval and skipped; one attempt per send; every paid
withdrawal in one of 2,000 payroll batches; 2,000 reconciliations, every tenth with
mismatches. Each query runs ``--rounds`` times as the admin (every DAG readable) after one
warm-up; the median and the worst are printed, first without the console's indexes
(:data:`INDEXES`), then with them. The chart sums cash only for days whose paid count
changed since it last did (``queries._CashByDay``): it is measured both ways, warm and as
the first view after a start.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from airflow_provider_feishu_hire.console import queries
from airflow_provider_feishu_hire.ledger import CONSOLE_INDEXES, Ledger, schema
from airflow_provider_feishu_hire.payroll import payroll_rows

# The console's indexes, as the ledger creates them: dropped for the first measurement, then made again.
INDEXES = CONSOLE_INDEXES
DAGS = [f"payroll_dag_{i:02d}" for i in range(20)]
START = datetime(2025, 12, 1, tzinfo=timezone.utc)


def build(path: Path, withdrawals: int) -> None:
    ledger = Ledger(lambda: sqlite3.connect(path, isolation_level=None), "sqlite")
    ledger.migrate()
    ledger.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = OFF")
    rng = random.Random(20)
    runs = max(1, withdrawals // 500)
    batches = runs
    db.execute("BEGIN")
    for batch in range(1, batches + 1):
        dag = DAGS[batch % len(DAGS)]
        created = (START + timedelta(days=365 * batch / batches)).isoformat(timespec="milliseconds")
        db.execute(
            "INSERT INTO feishu_hire_payroll_batch (id, scope, scope_key, dag_id, run_id, run_generation, task_id, "
            "map_index, try_number, created_at, accounts, point_bonus, cash_bonus) "
            "VALUES (?, 'run', ?, ?, ?, 1, 'export_payroll', -1, 1, ?, 500, 0, ?)",
            (batch, f"{dag}/run_{batch}#1", dag, f"run_{batch}", created, json.dumps({"CNY": "0.00"})),
        )
    statuses = ["paid"] * 970 + ["review"] * 5 + ["sending"] * 5 + ["rejected"] * 10 + ["needs_approval"] * 5
    statuses += ["skipped"] * 5

    def rows(start: int, stop: int) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        out, cash, attempts, members = [], [], [], []
        for i in range(start, stop):
            run = i // 500 + 1
            dag = DAGS[run % len(DAGS)]
            when = START + timedelta(seconds=31_536_000 * i / withdrawals)
            requested = when.isoformat(timespec="milliseconds")
            status = statuses[rng.randrange(len(statuses))]
            order = f"{6_900_000_000_000_000_000 + i}"
            account = f"{7_000_000_000_000_000_000 + rng.randrange(100_000)}"
            paid = status == "paid"
            trans = int(when.timestamp() * 1000) + 1500 if paid else None
            out.append((order, account, "1,2", "cli_bench_app", dag, f"run_{run}", "withdraw", i % 500, requested,
                        status, 0 if status == "skipped" else 1, trans, rng.randrange(1, 500) if paid else None,
                        None if paid else "something to see", "" if paid else '{"raw": 1}', requested))  # fmt: skip
            if paid:
                cash.append((order, "CNY", f"{rng.randrange(1, 100_000)}.{rng.randrange(100):02d}"))
                if i % 5 == 0:
                    cash.append((order, "USD", f"{rng.randrange(1, 500)}.{rng.randrange(100):02d}"))
                members.append((order, run))
            if status != "skipped":
                attempts.append((order, dag, f"run_{run}", "withdraw", i % 500, 1, requested, requested,
                                 "sending" if status == "sending" else status))  # fmt: skip
        return out, cash, attempts, members

    step = 50_000
    for start in range(0, withdrawals, step):
        out, cash, attempts, members = rows(start, min(withdrawals, start + step))
        db.executemany(
            "INSERT INTO feishu_hire_withdrawal (external_order_id, referral_account_id, withdraw_bonus_type, app_id, "
            "dag_id, run_id, task_id, map_index, requested_at, status, sends, trans_time, point_bonus, error_msg, "
            "raw_answer, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            out,
        )
        db.executemany("INSERT INTO feishu_hire_withdrawal_cash VALUES (?, ?, ?)", cash)
        db.executemany(
            "INSERT INTO feishu_hire_withdrawal_attempt (external_order_id, dag_id, run_id, task_id, map_index, "
            "try_number, started_at, finished_at, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            attempts,
        )
        db.executemany("INSERT INTO feishu_hire_payroll_batch_member VALUES (?, ?)", members)
        print(f"  {min(withdrawals, start + step):,} withdrawals", file=sys.stderr, flush=True)
    for rec in range(1, runs + 1):
        dag = DAGS[rec % len(DAGS)]
        db.execute(
            "INSERT INTO feishu_hire_reconciliation (id, app_id, start_trans_time, end_trans_time, accounts, "
            "point_bonus, mismatches, dag_id, run_id, task_id, reconciled_at) "
            "VALUES (?, 'cli_bench_app', 0, 1, 500, 0, ?, ?, ?, 'reconcile', ?)",
            (rec, 3 if rec % 10 == 0 else 0, dag, f"run_{rec}", START.isoformat()),
        )
        if rec % 10 == 0:
            for k in range(3):
                db.execute("INSERT INTO feishu_hire_reconciliation_mismatch VALUES (?, ?, 10, 12)", (rec, f"70{k}"))
    db.execute("COMMIT")
    db.execute("ANALYZE")
    db.close()


def measure(name: str, run: Callable[[], Any], rounds: int) -> tuple[str, float, float]:
    run()  # warm-up: the page cache, SQLite's statement cache
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return name, statistics.median(times) * 1000, max(times) * 1000


def pages(ledger: Ledger) -> list[tuple[str, Callable[[], Any]]]:
    readable = set(DAGS)
    flt = queries.WithdrawalFilter
    last = date(2026, 11, 30)
    with ledger.engine.connect() as conn:
        account = conn.execute(select(schema.withdrawal.c.referral_account_id).limit(1).offset(12345)).scalar_one()
        batch = conn.execute(select(func.max(schema.payroll_batch.c.id))).scalar_one()

    def w(**kw: Any) -> Callable[[], Any]:
        offset = kw.pop("offset", 0)
        return lambda: queries.withdrawals(ledger, flt(**kw), readable, limit=50, offset=offset)

    def cold(run: Callable[[], Any]) -> Any:
        queries._cash_by_day = queries._CashByDay()  # as the api-server's first request after a start
        return run()

    def csv_rows() -> Any:
        (made,) = ledger.payroll_batches(payroll_batch_id=batch)
        return payroll_rows(made.members)

    return [
        ("withdrawals, first page (50)", w()),
        ("withdrawals, page 101 (offset 5,000)", w(offset=5000)),
        ("withdrawals of one DAG run", w(dag_id=DAGS[3], run_id="run_123")),
        ("withdrawals of one account", w(referral_account_id=account)),
        ("withdrawals in review", w(status="review")),
        ("withdrawals of one DAG in one week", w(dag_id=DAGS[5], date_from=date(2026, 3, 1), date_to=date(2026, 3, 7))),
        ("withdrawals of one app, needs_approval", w(app_id="cli_bench_app", status="needs_approval")),
        ("needs attention (100 of each)", lambda: queries.needs_attention(ledger, readable, limit=100)),
        (
            "payroll batches, first page",
            lambda: queries.payroll_batches(ledger, readable, dag_id=None, limit=50, offset=0),
        ),
        (
            "payroll batch detail (500 members)",
            lambda: (
                queries.payroll_batch(ledger, batch),
                queries.withdrawals(ledger, flt(payroll_batch_id=batch), readable, limit=500, offset=0),
            ),
        ),
        ("payroll batch CSV", csv_rows),
        (
            "reconciliations with mismatches",
            lambda: queries.reconciliations(ledger, readable, dag_id=None, only_mismatched=True, limit=50, offset=0),
        ),
        (
            "paid per day, 30 days",
            lambda: queries.paid_per_day(ledger, readable, day_from=last - timedelta(days=29), day_to=last),
        ),
        (
            "paid per day, 92 days (the longest the console draws), cash already summed",
            lambda: queries.paid_per_day(ledger, readable, day_from=last - timedelta(days=91), day_to=last),
        ),
        (
            "paid per day, 92 days, first view (cash summed for every day)",
            lambda: cold(
                lambda: queries.paid_per_day(ledger, readable, day_from=last - timedelta(days=91), day_to=last)
            ),
        ),
        (
            "paid per day, one DAG, 92 days",
            lambda: queries.paid_per_day(
                ledger, readable, day_from=last - timedelta(days=91), day_to=last, dag_id=DAGS[7]
            ),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--withdrawals", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, default=Path("/tmp/feishu_console_bench.db"))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not args.db.exists():
        began = time.perf_counter()
        print(f"Building {args.db} with {args.withdrawals:,} withdrawals...", file=sys.stderr, flush=True)
        build(args.db, args.withdrawals)
        print(f"  built in {time.perf_counter() - began:.0f} s", file=sys.stderr)
    ledger = Ledger(lambda: sqlite3.connect(args.db, check_same_thread=False, isolation_level=None), "sqlite")
    with ledger.engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(schema.withdrawal)).scalar_one()
    results: dict[str, list[tuple[str, float, float]]] = {}
    for label in ("without", "with"):
        for index in INDEXES:
            if label == "with":
                index.create(ledger.engine, checkfirst=True)
            else:  # a file kept from an earlier run has them
                index.drop(ledger.engine, checkfirst=True)
        with ledger.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
        results[label] = [measure(name, run, args.rounds) for name, run in pages(ledger)]
    ledger.close()
    print(f"\n{count:,} withdrawals, SQLite, median (worst) of {args.rounds} rounds, ms\n")
    print("| page | without the console's indexes | with them |")
    print("|---|---|---|")
    for (name, median, worst), (_, median2, worst2) in zip(results["without"], results["with"], strict=True):
        print(f"| {name} | {median:,.1f} ({worst:,.1f}) | {median2:,.1f} ({worst2:,.1f}) |")
    slowest = max(results["with"], key=lambda r: r[1])
    print(f"\nSlowest page with the indexes: {slowest[0]}, {slowest[1]:,.1f} ms median, {slowest[2]:,.1f} ms worst")


if __name__ == "__main__":
    main()
