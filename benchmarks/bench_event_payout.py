"""Event-driven payouts: how long from a credit to the money in the ledger, and what it saves at month end.

``latency`` runs a real Airflow (``airflow standalone``: scheduler, dag-processor,
triggerer, api-server; LocalExecutor on SQLite) on the example DAGs, with the triggerer
holding the sandbox's long connection. It credits one account at a time, waits until the
payout ledger holds the withdrawal, and lets every run finish before the next credit.

``month-end`` is a model, not a measurement: a year of credits at random times, paid
either by the month-end batch alone (every account credited that month withdrawn at
Feishu's 100 a minute) or by events as they come (each credit withdrawn within the
measured latency; the month-end run then only exports payroll from the ledger).

    .venv/bin/python benchmarks/bench_event_payout.py latency --credits 20         # Airflow 3.3: ack mode
    .venv-lowest/bin/python benchmarks/bench_event_payout.py latency --credits 20  # Airflow 3.2: none
    .venv/bin/python benchmarks/bench_event_payout.py month-end --referrers 5000 --credits-per-year 24000
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
WITHDRAW_PER_MINUTE = 100  # Feishu's limit per app and tenant
ASSETS_PER_SECOND = 10
DAG_ID = "example_feishu_referral_event_payout"


def latency(credits: int) -> None:
    from local_airflow import LocalAirflow, free_port

    from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_ID, DEFAULT_APP_SECRET, Account, FeishuSandbox

    accounts = [f"75{n:017d}" for n in range(credits)]
    home = Path(tempfile.mkdtemp(prefix="feishu-bench-events-"))
    quick = {"ReconnectInterval": 1, "ReconnectNonce": 1, "PingInterval": 30}
    with FeishuSandbox([Account(a) for a in accounts], rate_limits=False, client_config=quick) as sandbox:
        local = LocalAirflow(home / "airflow", port=free_port(), sandbox_port=free_port(), free_log_ports=True)
        ledger = home / "ledger.db"
        connection = {"conn_type": "feishu_hire", "host": sandbox.url, "login": DEFAULT_APP_ID}
        local.env.update(
            AIRFLOW_CONN_FEISHU_HIRE_DEFAULT=json.dumps({**connection, "password": DEFAULT_APP_SECRET}),
            AIRFLOW_CONN_FEISHU_HIRE_LEDGER=json.dumps({"conn_type": "sqlite", "host": str(ledger)}),
            FEISHU_HIRE_SWEEP_CRON="off",  # events alone: no sweep run beside the measured ones
        )
        seconds: list[float] = []
        try:
            local.start(log=home / "standalone.log")
            _wait(lambda: sandbox.state()["long_connection"]["connected"], 300)
            for account in accounts:
                started = time.monotonic()
                sandbox.credit(account, 100, {"CNY": "1.00"})
                _wait(lambda a=account: _paid(ledger, a), 300, poll=0.05)
                seconds.append(time.monotonic() - started)
                _wait(lambda: _idle(local.home / "airflow.db"), 300)  # the run and its follow-up finish
        finally:
            local.stop()
    p95 = statistics.quantiles(seconds, n=20, method="inclusive")[-1] if len(seconds) > 1 else seconds[0]
    from airflow import __version__ as airflow_version

    try:
        import airflow.triggers.shared_stream  # noqa: F401

        mode = "ack mode (acknowledged once stored)"
    except ImportError:
        mode = "no ack mode (acknowledged when taken)"
    print(f"Airflow {airflow_version}, {mode}")
    print("| credits | median s | p95 s | worst s | best s |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {credits} | {statistics.median(seconds):.1f} | {p95:.1f} | {max(seconds):.1f} | {min(seconds):.1f} |")


def _wait(check, timeout: float, poll: float = 0.5) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up after {timeout:.0f}s")
        time.sleep(poll)


def _paid(ledger: Path, account: str) -> bool:
    if not ledger.exists():
        return False
    try:
        with sqlite3.connect(ledger) as db:
            rows = db.execute(
                "SELECT count(*) FROM feishu_hire_withdrawal WHERE referral_account_id = ? AND status = 'paid'",
                (account,),
            ).fetchall()
    except sqlite3.OperationalError:  # the tables are not there yet
        return False
    return bool(rows[0][0])


def _idle(airflow_db: Path) -> bool:
    with sqlite3.connect(airflow_db) as db:
        (busy,) = db.execute(
            "SELECT count(*) FROM dag_run WHERE dag_id = ? AND state IN ('queued', 'running')", (DAG_ID,)
        ).fetchone()
    return busy == 0


def month_end(referrers: int, credits_per_year: int, seed: int) -> None:
    """A model of one year at Feishu's 100 withdrawals a minute; see the module docstring."""
    rng = random.Random(seed)
    credited: dict[int, set[int]] = defaultdict(set)  # month -> accounts credited in it
    per_month: dict[int, int] = defaultdict(int)
    for _ in range(credits_per_year):
        month = rng.randrange(12)
        credited[month].add(rng.randrange(referrers))
        per_month[month] += 1
    withdrawals = [len(credited[m]) for m in range(12)]  # accounts with a balance at month end
    checked = referrers / ASSETS_PER_SECOND / 60  # a month-end batch that reads every balance first
    print(
        "| payout | month-end withdrawals (median month) | month-end run, median month (min) "
        "| longest month (min) | withdraw calls per year |"
    )
    print("|---|---:|---:|---:|---:|")
    median, longest = statistics.median(withdrawals), max(withdrawals)
    print(
        f"| month-end batch only | {median:,.0f} | {median / WITHDRAW_PER_MINUTE:.1f} "
        f"| {longest / WITHDRAW_PER_MINUTE:.1f} | {sum(withdrawals):,} |"
    )
    print(f"| events; month end exports payroll from the ledger | 0 | 0.0 | 0.0 | {credits_per_year:,} |")
    print(
        f"| events; month end batch re-reads every balance ({ASSETS_PER_SECOND}/s) | 0 | {checked:.1f} "
        f"| {checked:.1f} | {credits_per_year:,} |"
    )
    print(
        f"\n{referrers:,} referrers, {credits_per_year:,} credits a year at uniform random times (seed {seed}); "
        f"busiest month {max(per_month.values()):,} credits. Month-end withdrawing is paced at Feishu's "
        f"{WITHDRAW_PER_MINUTE} a minute. Events spend one withdrawal per credit instead of one per account and "
        f"month, spread over the month; a burst of N credits at once still drains at {WITHDRAW_PER_MINUTE} a minute."
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    measured = sub.add_parser("latency", help="real Airflow: credit -> withdrawal in the ledger")
    measured.add_argument("--credits", type=int, default=10)
    model = sub.add_parser("month-end", help="model: month-end run length with and without events")
    model.add_argument("--referrers", type=int, default=5000)
    model.add_argument("--credits-per-year", type=int, default=24000)
    model.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.command == "latency":
        latency(args.credits)
    else:
        month_end(args.referrers, args.credits_per_year, args.seed)


if __name__ == "__main__":
    main()
