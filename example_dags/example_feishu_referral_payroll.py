"""Pay out Feishu Hire referral bonuses: withdraw each account, export the run's payroll, reconcile with Feishu.

Trigger with a conf such as ``{"referral_account_ids": ["7001000000000000001"]}``. A person
approves the previewed amounts first. Each account is its own mapped task instance,
labelled by account id in the UI. Every withdrawal goes through the payout ledger (the
``feishu_hire_ledger`` connection, or an SQLite file in ``$AIRFLOW_HOME`` on a single
machine), so retries, clears and re-ordered lists never pay twice. The export then puts
what this run paid into one payroll batch (a ledger record: each payment is in exactly one
batch) and announces it on the ``feishu_hire_payroll`` asset; it fails naming anyone not
paid. Works unchanged on any number of workers once the ledger is on PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import Param, dag, task

from airflow_provider_feishu_hire.defaults import DEFAULT_FEISHU_HIRE_CONN_ID
from airflow_provider_feishu_hire.operators.approval import (
    ReferralPayoutApprovalOperator,
    ReferralPayoutPreviewOperator,
)
from airflow_provider_feishu_hire.operators.payroll import ReferralPayrollOperator
from airflow_provider_feishu_hire.operators.reconciliation import ReferralReconcileOperator
from airflow_provider_feishu_hire.operators.referral_account import ReferralWithdrawOperator
from airflow_provider_feishu_hire.withdrawal import REFERRAL_ACCOUNT_ID_PATTERN

# The accounts of the bundled sandbox (python -m airflow_provider_feishu_hire.sandbox).
SANDBOX_ACCOUNT_IDS = [
    "7001000000000000001",
    "7001000000000000002",
    "7001000000000000003",
    "7001000000000000004",
    "7001000000000000005",
]
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
    dag_id="example_feishu_referral_payroll",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["feishu", "payroll", "example"],
    doc_md=__doc__,
    params={
        "referral_account_ids": Param(
            SANDBOX_ACCOUNT_IDS, type="array", items=ACCOUNT_ID, minItems=1, description="Referral account ids"
        ),
        # null, not "": Airflow 3.3.2's trigger form will not submit an empty string.
        "output_dir": Param(None, type=["null", "string"], description=OUTPUT_DIR_HELP),
        "require_approval": Param(True, type="boolean", description=APPROVAL_HELP),
        "feishu_hire_conn_id": Param(
            DEFAULT_FEISHU_HIRE_CONN_ID, type="string", minLength=1, description=CONNECTION_HELP
        ),
    },
    # The delay between tries is the deployment's [core] default_task_retry_delay.
    # Every Feishu operator takes the connection the trigger form chose.
    default_args={"retries": 3, "feishu_hire_conn_id": "{{ params.feishu_hire_conn_id }}"},
)
def example_feishu_referral_payroll() -> None:
    @task
    def referral_account_ids(params: dict[str, Any] | None = None) -> list[str]:
        """The ids as pasted, trimmed and checked, each once: one mapped withdrawal per account."""
        from airflow_provider_feishu_hire.withdrawal import check_referral_account_ids

        assert params is not None
        return list(dict.fromkeys(check_referral_account_ids(params["referral_account_ids"])))

    account_ids = referral_account_ids()
    withdrawals = ReferralWithdrawOperator.partial(task_id="withdraw_referral_account").expand(
        referral_account_id=account_ids
    )
    # Four eyes: the totals are read at Feishu's balance pace and shown to a person, whose
    # decision goes to the ledger; a rejection skips everything after it.
    (
        ReferralPayoutPreviewOperator(task_id="preview_payout", referral_account_ids=account_ids)
        >> ReferralPayoutApprovalOperator(task_id="approve_payout", required="{{ params.require_approval }}")
        >> withdrawals
    )
    # all_done: everyone paid reaches payroll even when one account fails; the export then
    # fails naming who was not paid, so the run is never green with someone missing.
    # Reconciliation reads the ledger too, so it runs beside the export: both are leaves,
    # and the run fails if either does.
    withdrawals >> [
        ReferralPayrollOperator(
            task_id="export_payroll",
            referral_account_ids="{{ params.referral_account_ids }}",
            output_dir="{{ params.output_dir or '' }}",
            trigger_rule="all_done",
        ),
        ReferralReconcileOperator(task_id="reconcile_with_feishu", trigger_rule="all_done"),
    ]


example_feishu_referral_payroll()
