"""Feishu's reconciliation of a ``trans_time`` window against the payout ledger.

Cheap to import, like every operator module: hooks and drivers load when the task runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_feishu_hire.accounts import check_trans_time_window
from airflow_provider_feishu_hire.defaults import DEFAULT_FEISHU_HIRE_CONN_ID, DEFAULT_LEDGER_CONN_ID
from airflow_provider_feishu_hire.operators.task_helpers import (
    FEISHU_BLUE,
    feishu_and_ledger,
    input_errors_fail_the_task,
    permanent_feishu_errors_fail_the_task,
)
from airflow_provider_feishu_hire.withdrawal import plural

if TYPE_CHECKING:
    from airflow.sdk import Context


class ReferralReconcileOperator(BaseOperator):
    """Ask Feishu whether it paid out what the ledger says, per account, for a ``trans_time`` window.

    Sends the ledger's per-account point totals (Feishu's endpoint compares points only;
    the log says cash was not compared) and fails, without retries, naming every account
    Feishu disagrees on with both figures: a withdrawal made outside this ledger, or one
    the ledger does not know was paid. Every reconciliation, agreeing or not, is recorded
    in the ledger (``feishu_hire_reconciliation`` and ``feishu_hire_reconciliation_mismatch``).
    Its log gives the window as UTC times, not Feishu's epoch milliseconds.

    ``start_trans_time`` and ``end_trans_time`` (milliseconds or ISO 8601, end exclusive,
    templated: e.g. a month) choose the window; without them it is this DAG run's, from
    its first to its last payment. A run that paid nothing has nothing to reconcile.
    Feishu's docs leave open whether the window's ends are inclusive, so each end is moved
    to the nearest millisecond without a payment (usually by one); the window recorded and
    returned is the one compared.
    Run it after the payroll export, with ``trigger_rule="all_done"``.
    """

    # The connection too: a DAG param lets the person who triggers choose it.
    template_fields: Sequence[str] = ("start_trans_time", "end_trans_time", "feishu_hire_conn_id")
    ui_color = FEISHU_BLUE
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        start_trans_time: object = None,
        end_trans_time: object = None,
        feishu_hire_conn_id: str = DEFAULT_FEISHU_HIRE_CONN_ID,
        ledger_conn_id: str = DEFAULT_LEDGER_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.start_trans_time = start_trans_time
        self.end_trans_time = end_trans_time
        self.feishu_hire_conn_id = feishu_hire_conn_id
        self.ledger_conn_id = ledger_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_feishu_hire.reconciliation import NOT_COMPARED, describe_window, reconcile

        ti = context["ti"]
        with input_errors_fail_the_task():
            window = check_trans_time_window(self.start_trans_time, self.end_trans_time)
        with feishu_and_ledger(self.feishu_hire_conn_id, self.ledger_conn_id) as (client, ledger):
            if window is None:
                paid = ledger.trans_time_range(ti.dag_id, context["run_id"])
                if paid is None:
                    self.log.info("This DAG run paid nothing: nothing to reconcile")
                    return {"accounts": 0, "mismatches": []}
                window = (paid[0], paid[1] + 1)
            with permanent_feishu_errors_fail_the_task():
                record = reconcile(client, ledger, *window)
            ledger.record_reconciliation(record, dag_id=ti.dag_id, run_id=context["run_id"], task_id=ti.task_id)
        compared = describe_window(record)
        if record.mismatches:
            raise AirflowFailException(
                f"Feishu disagrees with the ledger on the points of "
                f"{plural(len(record.mismatches), 'referral account')} {compared}: "
                + "; ".join(m.describe() for m in record.mismatches)
                + f". {NOT_COMPARED}. Find the withdrawals Feishu counts and the ledger does not (made outside "
                "this provider?), or the reverse, before paying more"
            )
        self.log.info(
            "Feishu agrees with the ledger on the points of %s (%s) %s. %s",
            plural(len(record.ledger_points), "referral account"),
            plural(sum(record.ledger_points.values()), "point"),
            compared,
            NOT_COMPARED,
        )
        return {
            "start_trans_time": str(record.start_trans_time),
            "end_trans_time": str(record.end_trans_time),
            "accounts": len(record.ledger_points),
            "point_bonus": sum(record.ledger_points.values()),
            "mismatches": [],
        }
