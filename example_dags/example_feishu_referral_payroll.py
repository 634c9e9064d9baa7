"""Pay out Feishu Hire referral bonuses: withdraw each account, then export one payroll CSV per run.

Trigger with a conf such as ``{"referral_account_ids": ["7001000000000000001"], "output_dir": "/data/payroll"}``.
Each account is its own mapped task instance, labelled by account id in the UI; its
withdrawal is idempotent per task instance, so Airflow's retries never pay twice.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pendulum
from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_feishu_hire.operators.referral_account import ReferralWithdrawOperator

# The accounts of the bundled sandbox (python -m airflow_provider_feishu_hire.sandbox).
SANDBOX_ACCOUNT_IDS = [
    "7001000000000000001",
    "7001000000000000002",
    "7001000000000000003",
    "7001000000000000004",
    "7001000000000000005",
]


@dag(
    dag_id="example_feishu_referral_payroll",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["feishu", "payroll", "example"],
    params={
        "referral_account_ids": Param(
            SANDBOX_ACCOUNT_IDS, type="array", items={"type": "string"}, description="Referral account ids"
        ),
        "output_dir": Param(
            os.path.join(tempfile.gettempdir(), "feishu_referral_payroll"),
            type="string",
            minLength=1,
            description="Folder for the payroll CSV",
        ),
    },
    # The delay between tries is the deployment's [core] default_task_retry_delay.
    default_args={"retries": 3},
)
def example_feishu_referral_payroll() -> None:
    @task
    def referral_account_ids(params: dict[str, Any] | None = None) -> list[str]:
        assert params is not None
        return [str(account_id) for account_id in params["referral_account_ids"]]

    withdrawals = ReferralWithdrawOperator.partial(task_id="withdraw_referral_account").expand(
        referral_account_id=referral_account_ids()
    )

    @task(trigger_rule="all_done")
    def export_payroll(
        withdrawals: list[dict[str, Any]], params: dict[str, Any] | None = None, run_id: str | None = None
    ) -> str:
        """Runs even when some accounts failed, so everyone who was paid reaches payroll; then fails
        naming the accounts that were not, so the run does not look complete."""
        from airflow_provider_feishu_hire.payroll import write_payroll_csv

        assert params is not None and run_id is not None
        # A slice fetches every mapped result in one request (iterating asks one by one);
        # a failed account has no result.
        records = withdrawals[:]
        path = write_payroll_csv(records, params["output_dir"], run_id)
        missing = sorted(set(map(str, params["referral_account_ids"])) - {r["referral_account_id"] for r in records})
        if missing:
            raise AirflowFailException(f"{path} holds everyone paid, but {len(missing)} accounts were not: {missing}")
        return str(path)

    export_payroll(withdrawals.output)


example_feishu_referral_payroll()
