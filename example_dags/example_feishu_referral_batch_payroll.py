"""Pay thousands of referrers in one task at Feishu's rate limit, then export the same payroll CSV.

Trigger with ``{"referral_account_ids": [...], "output_dir": "...", "results_dir": "..."}``.
The batch paces withdrawals at 100 a minute (Feishu's limit), skips accounts whose
balance is zero, and journals every outcome in ``results_dir``; if a worker dies, the
retry carries over what was paid and re-sends the rest with the same order ids.
``results_dir`` must be reachable by every worker (a shared volume in Celery or Kubernetes).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pendulum
from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_feishu_hire.operators.referral_account import ReferralBatchWithdrawOperator

DAG_ID = "example_feishu_referral_batch_payroll"
WORK_DIR = os.path.join(tempfile.gettempdir(), "feishu_referral_payroll")


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["feishu", "payroll", "example"],
    params={
        "referral_account_ids": Param([], type="array", items={"type": "string"}, minItems=1),
        "output_dir": Param(WORK_DIR, type="string", minLength=1, description="Folder for the payroll CSV"),
        "results_dir": Param(
            os.path.join(WORK_DIR, "journals"), type="string", minLength=1, description="Folder for batch journals"
        ),
    },
    render_template_as_native_obj=True,  # the account list reaches the operator as a list
    default_args={"retries": 3},
)
def example_feishu_referral_batch_payroll() -> None:
    withdrawals = ReferralBatchWithdrawOperator(
        task_id="withdraw_referral_accounts",
        referral_account_ids="{{ params.referral_account_ids }}",
        results_dir="{{ params.results_dir }}",
        check_balances=True,
    )

    @task(trigger_rule="all_done")
    def export_payroll(params: dict[str, Any] | None = None, run_id: str | None = None) -> str:
        """Reads the batch's journal, not its XCom: a batch that failed for one account pushed no
        summary, yet everyone it paid must reach payroll. Then fails naming who was not paid."""
        from airflow_provider_feishu_hire.batch import journal_path, paid_records, settled_account_ids
        from airflow_provider_feishu_hire.payroll import write_payroll_csv

        assert params is not None and run_id is not None
        journal = journal_path(params["results_dir"], dag_id=DAG_ID, run_id=run_id, task_id=withdrawals.task_id)
        path = write_payroll_csv(paid_records(journal), params["output_dir"], run_id)
        missing = sorted(set(map(str, params["referral_account_ids"])) - settled_account_ids(journal))
        if missing:
            raise AirflowFailException(f"{path} holds everyone paid, but {len(missing)} accounts were not: {missing}")
        return str(path)

    withdrawals >> export_payroll()


example_feishu_referral_batch_payroll()
