"""The payroll export: the ledger's paid withdrawals of a DAG run (or a ``trans_time`` window) to payroll.

Cheap to import, like every operator module: hooks and drivers load when the task runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_feishu_hire.accounts import check_trans_time_window
from airflow_provider_feishu_hire.ledger import DEFAULT_LEDGER_CONN_ID
from airflow_provider_feishu_hire.operators.referral_account import FEISHU_BLUE, input_errors_fail_the_task
from airflow_provider_feishu_hire.withdrawal import check_referral_account_ids, plural

if TYPE_CHECKING:
    from airflow.sdk import Context

# Every payroll export marks this asset (unless given other outlets), with the run's totals in
# the event's extra, so that a payroll-import DAG can be scheduled on it.
FEISHU_HIRE_PAYROLL = Asset("feishu_hire_payroll")


class ReferralPayrollOperator(BaseOperator):
    """Write the payroll of this DAG run from the payout ledger: a CSV and an upsert into ``feishu_hire_payroll``.

    Reads the ledger, never XCom or a worker's files, so it is right whichever tries and
    workers paid whom. Before writing anything it checks that no withdrawal of the run
    has an unknown outcome (money may have moved that payroll could not show). It never
    replaces an existing CSV with fewer rows. The CSV goes to
    ``<output_dir>/<dag_id>/payroll_<run_id>.csv``; without ``output_dir``, beside an
    SQLite ledger, and not at all for a server database (its payroll table is the export
    every worker can reach). The table upsert is keyed by order id, bonus type and
    currency, so a re-run writes nothing new.

    ``referral_account_ids`` (optional) are the accounts the run was meant to pay: any not
    paid (refused by Feishu, never withdrawn) are named after the payroll of everyone who
    was paid has been written, and the task fails. ``start_trans_time`` and
    ``end_trans_time`` (milliseconds or ISO 8601, end exclusive) export every withdrawal
    in that window across runs instead, e.g. a month's payroll.

    Run it with ``trigger_rule="all_done"`` after the withdrawals, so that one account's
    failure does not keep everyone else out of payroll.

    Its outlet is the asset :data:`FEISHU_HIRE_PAYROLL` (``outlets`` chooses others): each
    export that writes the payroll emits an asset event whose extra holds the DAG run,
    the CSV path, and the totals (accounts, rows, points, cash per currency as decimal
    strings), so a downstream payroll import can be scheduled on it.
    """

    template_fields: Sequence[str] = ("referral_account_ids", "output_dir", "start_trans_time", "end_trans_time")
    ui_color = FEISHU_BLUE
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        referral_account_ids: object = None,
        output_dir: str | None = None,
        start_trans_time: object = None,
        end_trans_time: object = None,
        ledger_conn_id: str = DEFAULT_LEDGER_CONN_ID,
        upsert_table: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("outlets", [FEISHU_HIRE_PAYROLL])
        super().__init__(**kwargs)
        self.referral_account_ids = referral_account_ids
        self.output_dir = output_dir
        self.start_trans_time = start_trans_time
        self.end_trans_time = end_trans_time
        self.ledger_conn_id = ledger_conn_id
        self.upsert_table = upsert_table

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_feishu_hire.hooks.ledger import FeishuHireLedgerHook
        from airflow_provider_feishu_hire.ledger import OPEN_STATUSES
        from airflow_provider_feishu_hire.payroll import (
            completeness,
            payroll_csv_path,
            payroll_rows,
            payroll_totals,
            trans_time_iso,
            write_payroll_csv,
        )

        dag_id, run_id = context["ti"].dag_id, context["run_id"]
        with input_errors_fail_the_task():
            expected = (
                [] if self.referral_account_ids is None else check_referral_account_ids(self.referral_account_ids)
            )
            window = check_trans_time_window(self.start_trans_time, self.end_trans_time)
            hook = FeishuHireLedgerHook(self.ledger_conn_id)
            ledger = hook.ledger
            folder = str(self.output_dir).strip() if self.output_dir else hook.default_payroll_dir
        try:
            if window:
                rows = ledger.rows(start_trans_time=window[0], end_trans_time=window[1])
                # An open withdrawal first requested before the window ends may have been paid in it.
                rows += ledger.rows(statuses=OPEN_STATUSES, requested_before=trans_time_iso(window[1]))
                name = f"{window[0]}-{window[1]}"
            else:
                rows = ledger.rows(dag_id=dag_id, run_id=run_id)
                name = run_id
            check = completeness(rows, expected)
            if check.open:
                hint = " Clear the withdrawal tasks: they resend the same order ids." if check.resendable else ""
                raise AirflowFailException(f"{check.open_message()}.{hint}")
            table = payroll_rows(rows)
            path = write_payroll_csv(table, payroll_csv_path(folder, dag_id, name)) if folder else None
            if self.upsert_table:
                hook.upsert_payroll(table)
        finally:
            hook.close()
        totals = payroll_totals(table)
        # Airflow emits the event only if this task succeeds: not when someone is missing below.
        for outlet in self.outlets:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra = {
                    "dag_id": dag_id,
                    "run_id": run_id,
                    "csv": str(path) if path else None,
                    **totals,
                }
        accounts = totals["accounts"]
        where = f"{path} and table feishu_hire_payroll" if path else "table feishu_hire_payroll"
        if check.not_paid:
            first = next(iter(check.not_paid.values()))
            listed = "; ".join(check.not_paid.values())
            raise AirflowFailException(
                f"{plural(len(check.not_paid), 'referral account')} not paid ({first}); the "
                f"{plural(accounts, 'account')} paid are in payroll ({plural(len(table), 'row')}, {where}). "
                f"Not paid: {listed}"
            )
        self.log.info("Payroll: %s, %s, written to %s", plural(accounts, "account"), plural(len(table), "row"), where)
        return {"csv": str(path) if path else None, "rows": len(table), "accounts": accounts}
