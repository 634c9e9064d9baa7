"""Two batches on two Celery workers against one Feishu app: one shared pace versus a pace per process.

Starts the distributed stack of tests/test_distributed.py (scripts/celery_stack.py:
PostgreSQL, Redis, api-server, scheduler, dag-processor, triggerer, two Celery workers)
against an in-process sandbox that enforces Feishu's withdraw limit as a sliding window,
triggers the batch example twice at once (half the accounts each), and reports the
sandbox-side span of the withdrawals, the wall time and the 429s: once with the pace
shared through the ledger (the default), once with ``shared_pace: false`` on the
connection (each task process paces itself, as before).

    .venv/bin/python benchmarks/bench_distributed_pace.py --accounts 200 --per-minute 100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from celery_stack import CeleryStack  # noqa: E402

from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_ID, DEFAULT_APP_SECRET, Account, FeishuSandbox  # noqa: E402

DAG_ID = "example_feishu_referral_batch_payroll"


def run(accounts: int, per_minute: int, shared: bool) -> str:
    everyone = [Account(f"79{n:017d}", point_bonus=1, cash_bonus={"CNY": Decimal("0.01")}) for n in range(accounts)]
    ids = [a.account_id for a in everyone]
    with FeishuSandbox(everyone, withdraw_limit=(per_minute, 60.0)) as sandbox:
        connection = {
            "conn_type": "feishu_hire",
            "host": sandbox.url,
            "login": DEFAULT_APP_ID,
            "password": DEFAULT_APP_SECRET,
            "extra": {"withdraw_rate_limit": per_minute, "shared_pace": shared},
        }
        env = {"AIRFLOW_CONN_FEISHU_HIRE_DEFAULT": json.dumps(connection)}
        with CeleryStack(sandbox_url=sandbox.url, extra_env=env) as stack:
            started = time.monotonic()
            runs = [
                stack.trigger(DAG_ID, {"referral_account_ids": half, "require_approval": False})
                for half in (ids[::2], ids[1::2])
            ]
            states = [stack.wait(DAG_ID, run_id, timeout=accounts * 60 / per_minute * 3 + 300) for run_id in runs]
            wall = time.monotonic() - started
            workers = {ti.get("hostname") for run_id in runs for ti in stack.task_instances(DAG_ID, run_id)}
        state = sandbox.state()
    times = sorted(int(entry["trans_time"]) for entry in state["ledger"])
    span = (times[-1] - times[0]) / 1000
    minimum = (accounts - 1) * 60 / per_minute
    paid_once = len(times) == accounts == len({e["referral_account_id"] for e in state["ledger"]})
    pace = "shared (ledger)" if shared else "per process"
    return (
        f"| {pace} | {accounts} | {per_minute} | {span:,.1f} | {minimum:,.1f} "
        f"| {(span / minimum - 1) * 100:+.1f}% | {state['requests']['rate_limited']} | {wall:,.1f} "
        f"| {', '.join(sorted(str(w) for w in workers))} | {'/'.join(states)}, {'yes' if paid_once else 'NO'} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--per-minute", type=int, default=100)
    args = parser.parse_args()
    columns = ["pace", "accounts", "limit per minute", "withdrawal span s", "minimum s", "vs min", "429s"]
    columns += ["wall s", "workers", "runs, paid once"]
    print("| " + " | ".join(columns) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for shared in (True, False):
        print(run(args.accounts, args.per_minute, shared), flush=True)


if __name__ == "__main__":
    main()
