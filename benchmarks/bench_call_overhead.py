"""Per-call cost of one withdrawal on loopback: FeishuHireHook vs a bare requests.Session vs lark-oapi.

Every contender repeats the same withdrawal (same account, same external_order_id), so
the sandbox does identical work for each: Feishu's idempotent replay of the original
details. Over HTTP and over TLS with a self-signed certificate. Contenders run
interleaved, round after round; the table gives the median round.

    .venv/bin/pip install lark-oapi
    .venv/bin/python benchmarks/bench_call_overhead.py --calls 300 --rounds 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import sandbox_process, self_signed_certificate

ACCOUNT = "7001000000000000001"
ORDER_ID = "8000000000000000001"
APP_SECRET = "sandbox-app-secret-not-for-production"


def contenders(url: str, app_id: str) -> dict[str, Callable[[], object]]:
    import lark_oapi as lark
    import requests
    from lark_oapi.api.hire.v1 import WithdrawReferralAccountRequest, WithdrawReferralAccountRequestBody

    from airflow_provider_feishu_hire.hooks.feishu_hire import FeishuHireHook

    os.environ["AIRFLOW_CONN_FEISHU_HIRE_DEFAULT"] = json.dumps(
        # No client-side pacing: this measures the cost of a call, not Feishu's rate limit.
        {
            "conn_type": "feishu_hire",
            "host": url,
            "login": app_id,
            "password": APP_SECRET,
            "extra": {"withdraw_rate_limit": 0},
        }
    )
    hook = FeishuHireHook()
    hook.withdraw_referral_account(ACCOUNT, [1, 2], ORDER_ID)  # the one real withdrawal; replays from here on

    session = requests.Session()
    token = session.post(
        f"{url}/open-apis/auth/v3/tenant_access_token/internal", json={"app_id": app_id, "app_secret": APP_SECRET}
    ).json()["tenant_access_token"]
    withdraw_url = f"{url}/open-apis/hire/v1/referral_account/{ACCOUNT}/withdraw"
    body = {"withdraw_bonus_type": [1, 2], "external_order_id": ORDER_ID}

    def bare() -> object:
        answer = session.post(withdraw_url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        return answer.json()["data"]

    sdk = lark.Client.builder().app_id(app_id).app_secret(APP_SECRET).domain(url).log_level(lark.LogLevel.ERROR).build()
    request = (
        WithdrawReferralAccountRequest.builder()
        .referral_account_id(ACCOUNT)
        .request_body(
            WithdrawReferralAccountRequestBody.builder().withdraw_bonus_type([1, 2]).external_order_id(ORDER_ID).build()
        )
        .build()
    )

    def lark_sdk() -> object:
        answer = sdk.hire.v1.referral_account.withdraw(request)
        assert answer.success(), answer.msg
        return answer.data

    return {
        "bare requests.Session": bare,
        "FeishuHireHook": lambda: hook.withdraw_referral_account(ACCOUNT, [1, 2], ORDER_ID),
        "lark-oapi 1.7.5": lark_sdk,
    }


def measure(calls: int, rounds: int, url: str, app_id: str) -> dict[str, float]:
    runners = contenders(url, app_id)
    for run in runners.values():  # warm up: token, connection, imports
        for _ in range(10):
            run()
    per_call: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            started = time.perf_counter()
            for _ in range(calls):
                run()
            per_call[name].append((time.perf_counter() - started) / calls * 1e6)
    return {name: statistics.median(values) for name, values in per_call.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="feishu-bench-"))
    with tempfile.TemporaryDirectory() as folder:
        cert, key = self_signed_certificate(Path(folder))
        print("| transport | contender | µs per call | calls per second | vs bare Session |")
        print("|---|---|---:|---:|---:|")
        for transport, extra in (
            ("http", []),
            ("https (self-signed)", ["--tls-cert", cert, "--tls-key", key]),
        ):
            os.environ["REQUESTS_CA_BUNDLE"] = cert
            # A new app id per sandbox: lark-oapi caches tokens process-wide and would
            # replay the first sandbox's token to the second.
            app_id = f"cli_bench_{transport[:5]}"
            with sandbox_process(None, "--no-rate-limits", "--app-id", app_id, *extra) as url:
                results = measure(args.calls, args.rounds, url, app_id)
            bare = results["bare requests.Session"]
            for name, micros in results.items():
                print(f"| {transport} | {name} | {micros:,.0f} | {1e6 / micros:,.0f} | {micros / bare:.2f}x |")


if __name__ == "__main__":
    main()
