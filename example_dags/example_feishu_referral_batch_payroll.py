"""Pay thousands of referrers in one task at Feishu's rate limit, export the run's payroll, reconcile with Feishu.

Trigger with ``{"referral_account_ids": [...]}``. The batch paces withdrawals at 100 a
minute (Feishu's limit) and skips accounts whose balance is zero. Every outcome goes to
the payout ledger, so if a worker dies the retry, on any worker, carries over what was
paid and re-sends the rest with the same order ids.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag

from airflow_provider_feishu_hire.defaults import DEFAULT_FEISHU_HIRE_CONN_ID
from airflow_provider_feishu_hire.operators.approval import (
    ReferralPayoutApprovalOperator,
    ReferralPayoutPreviewOperator,
)
from airflow_provider_feishu_hire.operators.payroll import ReferralPayrollOperator
from airflow_provider_feishu_hire.operators.reconciliation import ReferralReconcileOperator
from airflow_provider_feishu_hire.operators.referral_account import ReferralBatchWithdrawOperator
from airflow_provider_feishu_hire.withdrawal import REFERRAL_ACCOUNT_ID_PATTERN

ACCOUNT_ID = {"type": "string", "pattern": REFERRAL_ACCOUNT_ID_PATTERN}
APPROVAL_HELP = (
    "A person approves the previewed totals in the Airflow UI before anything is paid. Off: unattended runs "
    "pay at once (recorded in the ledger as 'not required')"
)
CONNECTION_HELP = (
    "The Feishu Hire connection to pay through (Admin > Connections); feishu_hire_default is the sandbox's"
)
OUTPUT_DIR_HELP = (
    "Folder for the payroll CSV, reachable by every worker. Empty: beside an SQLite ledger, or no CSV with a "
    "PostgreSQL ledger (the feishu_hire_payroll table holds the payroll)"
)


@dag(
    dag_id="example_feishu_referral_batch_payroll",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["feishu", "payroll", "example"],
    doc_md=__doc__,
    params={
        "referral_account_ids": Param([], type="array", items=ACCOUNT_ID, minItems=1),
        # null, not "": Airflow 3.3.2's trigger form will not submit an empty string.
        "output_dir": Param(None, type=["null", "string"], description=OUTPUT_DIR_HELP),
        "require_approval": Param(True, type="boolean", description=APPROVAL_HELP),
        "feishu_hire_conn_id": Param(
            DEFAULT_FEISHU_HIRE_CONN_ID, type="string", minLength=1, description=CONNECTION_HELP
        ),
    },
    render_template_as_native_obj=True,  # the account list reaches the operators as a list
    # Every Feishu operator takes the connection the trigger form chose.
    default_args={"retries": 3, "feishu_hire_conn_id": "{{ params.feishu_hire_conn_id }}"},
)
def example_feishu_referral_batch_payroll() -> None:
    withdrawals = ReferralBatchWithdrawOperator(
        task_id="withdraw_referral_accounts",
        referral_account_ids="{{ params.referral_account_ids }}",
        check_balances=True,
    )
    (
        ReferralPayoutPreviewOperator(
            task_id="preview_payout", referral_account_ids="{{ params.referral_account_ids }}"
        )
        >> ReferralPayoutApprovalOperator(task_id="approve_payout", required="{{ params.require_approval }}")
        >> withdrawals
    )
    # Both read the ledger and run whatever the batch's outcome; as leaves, either one's
    # failure fails the run.
    withdrawals >> [
        ReferralPayrollOperator(
            task_id="export_payroll",
            referral_account_ids="{{ params.referral_account_ids }}",
            output_dir="{{ params.output_dir or '' }}",
            trigger_rule="all_done",
        ),
        ReferralReconcileOperator(task_id="reconcile_with_feishu", trigger_rule="all_done"),
    ]


example_feishu_referral_batch_payroll()
