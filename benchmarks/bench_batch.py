"""Wall time, 429s and peak memory of one ReferralBatchWithdrawOperator-style batch against the sandbox.

The sandbox runs in its own process with the given withdraw limit, enforced as a
sliding window; the batch runs here through FeishuHireHook with the same limit
configured on the connection, so the client paces itself at the server's limit.

    .venv/bin/python benchmarks/bench_batch.py --accounts 1000 --per-minute 100      # Feishu's real limit
    .venv/bin/python benchmarks/bench_batch.py --accounts 6000 --per-minute 18000    # scaled up 180x
    .venv/bin/python benchmarks/bench_batch.py --accounts 100000 --per-minute 0      # limits lifted: memory
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import tempfile
import time

from _common import sandbox_process, sandbox_state

APP_ID = "cli_sandbox_app"
APP_SECRET = "sandbox-app-secret-not-for-production"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--per-minute", type=float, default=100, help="withdraw limit; 0 lifts it")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="feishu-bench-"))
    logging.getLogger("airflow_provider_feishu_hire").setLevel(logging.WARNING)  # one line per account otherwise

    ids = [f"74{n:017d}" for n in range(args.accounts)]
    accounts = [
        {"account_id": a, "point_bonus": 1, "cash_bonus": [{"currency_type": "CNY", "amount": "0.01"}]} for a in ids
    ]
    limits = ["--no-rate-limits"] if not args.per_minute else ["--withdraw-per-minute", str(int(args.per_minute))]
    with sandbox_process(accounts, *limits) as url:
        from airflow_provider_feishu_hire.hooks.feishu_hire import FeishuHireHook
        from airflow_provider_feishu_hire.hooks.ledger import FeishuHireLedgerHook
        from airflow_provider_feishu_hire.ledger import Intent
        from airflow_provider_feishu_hire.payout import withdraw_batch
        from airflow_provider_feishu_hire.withdrawal import derive_external_order_id

        os.environ["AIRFLOW_CONN_FEISHU_HIRE_DEFAULT"] = json.dumps(
            {
                "conn_type": "feishu_hire",
                "host": url,
                "login": APP_ID,
                "password": APP_SECRET,
                "extra": {"withdraw_rate_limit": args.per_minute},
            }
        )
        hook = FeishuHireHook(pool_size=args.workers)
        hook.get_tenant_access_token()  # not part of the batch's pace
        ledger = FeishuHireLedgerHook().ledger  # the embedded SQLite ledger in the temporary AIRFLOW_HOME
        run = {"dag_id": "bench", "run_id": "run", "task_id": "batch"}
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        summary = withdraw_batch(
            hook.client,
            ledger,
            ids,
            intent_for=lambda a: Intent(
                derive_external_order_id(**run, referral_account_id=a), a, (1, 2), APP_ID, **run
            ),
            max_workers=args.workers,
        )
        wall = time.perf_counter() - started
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        state = sandbox_state(url)

    assert summary.paid == args.accounts == len(state["ledger"]), "not every account was paid exactly once"
    minimum = args.accounts / args.per_minute * 60 if args.per_minute else 0.0
    over = f"{(wall / minimum - 1) * 100:+.1f}%" if minimum else "n/a"
    print("| accounts | limit per minute | workers | wall s | theoretical min s | vs min | 429s | peak RSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.accounts:,} | {args.per_minute:,.0f} | {args.workers} | {wall:,.1f} | {minimum:,.1f} | {over} "
        f"| {state['requests']['rate_limited']} | {peak_mib:,.0f} (before batch {rss_before / 1024:,.0f}) |"
    )


if __name__ == "__main__":
    main()
