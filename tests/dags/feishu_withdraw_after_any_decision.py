"""DAG used by tests/test_approval_dag.py: a withdrawal that runs whatever the approval decided.

``trigger_rule="all_done"`` lets Airflow start the withdrawal after a rejection too; the
withdrawal itself reads the run's decision from the ledger and sends nothing.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag

from airflow_provider_feishu_hire.operators.approval import (
    ReferralPayoutApprovalOperator,
    ReferralPayoutPreviewOperator,
)
from airflow_provider_feishu_hire.operators.referral_account import ReferralBatchWithdrawOperator


@dag(
    dag_id="feishu_withdraw_after_any_decision",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    params={"referral_account_ids": []},
)
def feishu_withdraw_after_any_decision() -> None:
    accounts = "{{ params.referral_account_ids }}"
    (
        ReferralPayoutPreviewOperator(task_id="preview_payout", referral_account_ids=accounts)
        >> ReferralPayoutApprovalOperator(task_id="approve_payout")
        >> ReferralBatchWithdrawOperator(
            task_id="withdraw_whatever_was_decided",
            referral_account_ids=accounts,
            trigger_rule="all_done",
        )
    )


feishu_withdraw_after_any_decision()
