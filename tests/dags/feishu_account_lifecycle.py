"""DAG used by tests/test_dags.py: an account's whole life — register, wait for a bonus, pay, deactivate, reconcile."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pendulum
from airflow.sdk import dag, task

from airflow_provider_feishu_hire.operators.payroll import ReferralPayrollOperator
from airflow_provider_feishu_hire.operators.reconciliation import ReferralReconcileOperator
from airflow_provider_feishu_hire.operators.referral_account import (
    ReferralAccountDeactivateOperator,
    ReferralAccountRegisterOperator,
    ReferralWithdrawOperator,
)
from airflow_provider_feishu_hire.sensors.referral_account import ReferralBalanceSensor


@dag(
    dag_id="feishu_account_lifecycle",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    params={"emails": [], "sandbox_url": ""},
    default_args={"retries": 2},
)
def feishu_account_lifecycle() -> None:
    @task
    def emails(params: dict[str, Any] | None = None) -> list[str]:
        assert params is not None
        return list(params["emails"])

    registered = ReferralAccountRegisterOperator.partial(task_id="register").expand(referrer_email=emails())

    @task
    def account_ids(accounts: list[dict[str, Any]]) -> list[str]:
        return [account["referral_account_id"] for account in accounts]

    ids = account_ids(registered.output)

    @task
    def hr_confirms_bonuses(ids: list[str], params: dict[str, Any] | None = None) -> None:
        """What HR does in Feishu Hire, done here through the sandbox's control endpoint."""
        assert params is not None
        for n, account_id in enumerate(ids):
            body = {"account_id": account_id, "point_bonus": 10 * (n + 1), "cash_bonus": [
                {"currency_type": "CNY", "amount": f"{n + 1}.05"}]}  # fmt: skip
            request = urllib.request.Request(
                params["sandbox_url"] + "/_sandbox/credit",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            urllib.request.urlopen(request, timeout=10).close()

    wait = ReferralBalanceSensor(
        task_id="wait_for_bonus",
        referral_account_id="{{ ti.xcom_pull(task_ids='account_ids')[0] }}",
        min_point_bonus=10,
        min_cash_bonus="1.05",
        currency_type="CNY",
        poke_interval=1,
        timeout=120,
    )
    withdrawals = ReferralWithdrawOperator.partial(task_id="withdraw").expand(referral_account_id=ids)
    deactivate = ReferralAccountDeactivateOperator(
        task_id="deactivate_leaver", referral_account_id="{{ ti.xcom_pull(task_ids='account_ids')[-1] }}"
    )
    hr_confirms_bonuses(ids) >> wait >> withdrawals >> deactivate
    deactivate >> [
        ReferralPayrollOperator(task_id="export_payroll", referral_account_ids=ids, trigger_rule="all_done"),
        ReferralReconcileOperator(task_id="reconcile_with_feishu", trigger_rule="all_done"),
    ]


feishu_account_lifecycle()
