"""The payroll export: claim the ledger's paid withdrawals into a payroll batch, write it, announce it.

Cheap to import, like every operator module: hooks and drivers load when the task runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airflow_provider_feishu_hire.accounts import check_trans_time_window
from airflow_provider_feishu_hire.defaults import DEFAULT_FEISHU_HIRE_CONN_ID
from airflow_provider_feishu_hire.ledger import DEFAULT_LEDGER_CONN_ID, PAYROLL_SCOPES, RUN_SCOPE
from airflow_provider_feishu_hire.operators.task_helpers import FEISHU_BLUE, input_errors_fail_the_task
from airflow_provider_feishu_hire.withdrawal import check_external_order_ids, check_referral_account_ids, plural

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_feishu_hire.ledger import PayrollBatch, TaskTry

# Every payroll export marks this asset (unless given other outlets) with the ids and totals of
# its payroll batches in the event's extra, so that a payroll-import DAG can be scheduled on it.
FEISHU_HIRE_PAYROLL = Asset("feishu_hire_payroll")


class ReferralPayrollOperator(BaseOperator):
    """Put the paid withdrawals of this DAG run (or DAG, or app) into a payroll batch, and announce it.

    A payroll batch is a ledger record: in one transaction the export claims every paid
    withdrawal in its ``scope`` that is in no batch yet, and writes the batch's lines to the
    ledger's ``feishu_hire_payroll`` table. A withdrawal belongs to one batch for ever,
    whichever run, try or worker paid it and whenever; the ledger, never XCom or a
    worker's files, is the source.

    ``scope``: ``"run"`` (default) claims what this DAG run sent (the generation of the run:
    a run deleted and created again under the same run_id is another run); ``"dag"`` what
    any run of this DAG sent; ``"app"`` what the connection's Feishu app paid, whatever DAG
    sent it. A payment recorded after the batch was made (a settled review, a withdrawal
    cleared and paid later) is claimed by the next export of the scope.

    A re-run of the export (a clear, a retry) returns the batches it made: same ids, same
    CSV content; it makes a new batch only for payments that are in none. Every batch it
    made is in the asset event's extra (``payroll_batch_ids`` and per batch the totals and
    CSV), so a consumer de-duplicates on the batch id. A run that paid nothing makes no
    batch and emits no asset event: the task is skipped, saying so.

    Before succeeding it checks that every account the run was asked to pay has an
    outcome: withdrawals whose outcome is unknown, refusals (recorded for the balance read
    too) and ``referral_account_ids`` without a withdrawal fail the task, naming them, after
    everyone paid is in a batch. ``external_order_ids`` (account to order id, as given to a
    batch withdrawal) lets an order another run already paid — a repeated event's — settle
    its account. Run it with ``trigger_rule="all_done"`` after the
    withdrawals, so that one account's failure does not keep everyone else out of payroll.

    CSV files go to ``<output_dir>/<dag_id>/payroll_<UTC time>_batch<id>.csv``; without
    ``output_dir`` beside an SQLite ledger, and none for a server database (its payroll
    table is the export every worker can reach).

    ``start_trans_time`` and ``end_trans_time`` (milliseconds or ISO 8601, end exclusive)
    make it a *report* instead: every paid withdrawal in that window across runs, batched
    or not, written to ``report_<start>_to_<end>.csv``. A report claims nothing and
    announces nothing (no asset outlet).
    """

    template_fields: Sequence[str] = (
        "referral_account_ids",
        "external_order_ids",
        "output_dir",
        "start_trans_time",
        "end_trans_time",
        "scope",
        "feishu_hire_conn_id",
    )
    ui_color = FEISHU_BLUE
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        referral_account_ids: object = None,
        external_order_ids: object = None,
        output_dir: str | None = None,
        start_trans_time: object = None,
        end_trans_time: object = None,
        scope: str = RUN_SCOPE,
        feishu_hire_conn_id: str = DEFAULT_FEISHU_HIRE_CONN_ID,
        ledger_conn_id: str = DEFAULT_LEDGER_CONN_ID,
        **kwargs: Any,
    ) -> None:
        report = start_trans_time is not None or end_trans_time is not None
        kwargs.setdefault("outlets", [] if report else [FEISHU_HIRE_PAYROLL])
        super().__init__(**kwargs)
        self.referral_account_ids = referral_account_ids
        self.external_order_ids = external_order_ids
        self.output_dir = output_dir
        self.start_trans_time = start_trans_time
        self.end_trans_time = end_trans_time
        self.scope = scope
        self.feishu_hire_conn_id = feishu_hire_conn_id
        self.ledger_conn_id = ledger_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_feishu_hire.hooks.ledger import FeishuHireLedgerHook

        with input_errors_fail_the_task():
            expected = (
                [] if self.referral_account_ids is None else check_referral_account_ids(self.referral_account_ids)
            )
            orders = check_external_order_ids(self.external_order_ids)
            window = check_trans_time_window(self.start_trans_time, self.end_trans_time)
            if self.scope not in PAYROLL_SCOPES:
                raise ValueError(f"scope {self.scope!r} is unknown: use one of {', '.join(PAYROLL_SCOPES)}")
            hook = FeishuHireLedgerHook(self.ledger_conn_id)
            folder = str(self.output_dir).strip() if self.output_dir else hook.default_payroll_dir
        try:
            with input_errors_fail_the_task():
                ledger = hook.ledger
            if window:
                return self._report(ledger, context["ti"].dag_id, window, folder)
            return self._batch(ledger, context, expected, orders, folder)
        finally:
            hook.close()

    def _batch(
        self, ledger: Any, context: Context, expected: list[str], orders: dict[str, str], folder: Any
    ) -> dict[str, Any]:
        from airflow_provider_feishu_hire.ledger import OPEN_STATUSES, PayrollScope
        from airflow_provider_feishu_hire.operators.task_helpers import task_try
        from airflow_provider_feishu_hire.payroll import completeness

        task = task_try(context, ledger)
        app_id = self._app_id() if self.scope == "app" else None
        scope = PayrollScope(self.scope, task.dag_id, task.run_id, task.run_generation, app_id)
        made = ledger.make_payroll_batch(scope, task)
        batches = ledger.payroll_batches(made_by=task)
        written = [self._announce(batch, folder) for batch in batches]
        if made is None and batches:
            self.log.info("Nothing new to claim: payroll %s made before", plural(len(batches), "batch"))
        rows = ledger.rows(dag_id=task.dag_id, run_id=task.run_id)
        # Who this run paid is its own generation's business; an unknown outcome a deleted generation
        # left is named too, since the money may have moved for this run_id.
        rows = [r for r in rows if r.run_generation == task.run_generation or r.status in OPEN_STATUSES]
        # An order this run was given that another run sent (a repeated event, carried over) settles its account.
        rows += [row for order in orders.values() if (row := ledger.get(order)) and row.run_id != task.run_id]
        check = completeness(rows, expected)
        problems = self._problems(ledger, task, check)
        if not batches:
            if problems:
                raise AirflowFailException(f"Nothing paid, so no payroll batch. {problems}")
            elsewhere = sorted({r.payroll_batch_id for r in rows if r.payroll_batch_id and r.run_id == task.run_id})
            if elsewhere:  # a "dag" or "app" scope: another run's export claimed them first
                listed = ", ".join(map(str, elsewhere))
                raise AirflowSkipException(f"What this run paid is in payroll batch {listed}, made by another export")
            raise AirflowSkipException("Nothing paid by this run: no payroll batch, no asset event")
        for outlet in self.outlets:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra = {
                    "dag_id": task.dag_id,
                    "run_id": task.run_id,
                    "payroll_batch_ids": [batch.id for batch in batches],
                    "payroll_batches": written,  # type: ignore[dict-item]  # JSON: ints, strings, dicts of them
                }
        if problems:
            raise AirflowFailException(f"{problems} Everyone paid is in {_batch_names(batches)}.")
        return {"payroll_batch_ids": [batch.id for batch in batches], "payroll_batches": written}

    def _announce(self, batch: PayrollBatch, folder: Any) -> dict[str, Any]:
        """Write the batch's CSV (same content on every re-run) and log it on one short line."""
        from airflow_provider_feishu_hire.payroll import payroll_batch_csv_path, payroll_rows, write_payroll_csv

        rows = payroll_rows(batch.members)
        totals = batch.totals()
        path = (
            write_payroll_csv(rows, payroll_batch_csv_path(folder, batch.made_by.dag_id, batch.id, batch.created_at))
            if folder
            else None
        )
        cash = ", ".join(f"{amount} {currency}" for currency, amount in totals["cash_bonus"].items())
        self.log.info(
            "Payroll batch %d: %s, %s, %d points%s",
            batch.id,
            plural(totals["accounts"], "account"),
            plural(totals["withdrawals"], "withdrawal"),
            totals["point_bonus"],
            f", {cash}" if cash else "",
        )
        self.log.info("Payroll batch %d is in table feishu_hire_payroll%s", batch.id, f" and {path}" if path else "")
        return {"id": batch.id, "csv": str(path) if path else None, "created_at": batch.created_at, **totals}

    def _problems(self, ledger: Any, task: TaskTry, check: Any) -> str:
        """Why this run must not end green, for a person: its approval's verdict, unknown outcomes, who is unpaid."""
        from airflow_provider_feishu_hire.operators.task_helpers import run_approval

        parts = []
        try:
            # The withdrawals' own check (rejected, self-approved); a missing decision refused them already.
            run_approval(self, ledger, task, missing_ok=True)
        except AirflowFailException as refused:
            parts.append(f"{refused}.")
        if check.open:
            hint = " Clear the withdrawal tasks: they resend the same order ids." if check.resendable else ""
            parts.append(f"{check.open_message()}.{hint}")
        if check.not_paid:
            listed = "; ".join(check.not_paid.values())
            parts.append(f"{plural(len(check.not_paid), 'referral account')} not paid: {listed}.")
        return " ".join(parts)

    def _report(self, ledger: Any, dag_id: str, window: tuple[int, int], folder: Any) -> dict[str, Any]:
        from airflow_provider_feishu_hire.ledger import OPEN_STATUSES
        from airflow_provider_feishu_hire.payroll import (
            payroll_report_csv_path,
            payroll_rows,
            payroll_totals,
            write_payroll_csv,
        )
        from airflow_provider_feishu_hire.withdrawal import trans_time_iso

        rows = ledger.rows(start_trans_time=window[0], end_trans_time=window[1])
        # An open withdrawal first requested before the window ends may have been paid in it.
        unknown = ledger.rows(statuses=OPEN_STATUSES, requested_before=trans_time_iso(window[1]))
        table = payroll_rows(rows)
        path = write_payroll_csv(table, payroll_report_csv_path(folder, dag_id, *window)) if folder else None
        totals = payroll_totals(table)
        self.log.info(
            "Report, not a payroll batch (claims nothing): %s paid from %s to %s%s",
            plural(totals["accounts"], "account"),
            trans_time_iso(window[0]),
            trans_time_iso(window[1]),
            f", in {path}" if path else "",
        )
        if unknown:
            raise AirflowFailException(
                f"The report may be missing money: {plural(len(unknown), 'withdrawal')} first requested before "
                f"the window ends have no known outcome: " + "; ".join(row.describe_problem() for row in unknown)
            )
        return {"csv": str(path) if path else None, **totals}

    def _app_id(self) -> str:
        """The connection's app as the ledger keys it (a store app's tenant included)."""
        from airflow_provider_feishu_hire.hooks.feishu_hire import FeishuHireHook

        with input_errors_fail_the_task():
            client = FeishuHireHook(feishu_hire_conn_id=self.feishu_hire_conn_id).client
        client.close()
        return client.tenant_app_id


def _batch_names(batches: Sequence[PayrollBatch]) -> str:
    return "payroll " + ("batch " if len(batches) == 1 else "batches ") + ", ".join(str(b.id) for b in batches)
