"""Import each payroll batch once, as soon as it is made: scheduled on the payroll asset, not on a clock.

Every ``ReferralPayrollOperator`` that makes a payroll batch marks the asset
``feishu_hire_payroll``; the event's extra lists the ids (``payroll_batch_ids``) and, per
batch, its totals and CSV. The same batch can be announced more than once (a cleared
export announces the batches it made again), so an import de-duplicates on the batch id:
this one asks the ledger whether it took the batch before, imports it, then records that it
did. Replace the logging below with your own import (an HR system's API, a finance
database), keyed on the batch id as well, so that a crash between importing and recording
cannot import a batch twice either. The lines of a batch are in the ledger's
``feishu_hire_payroll`` table (``FeishuHireLedgerHook.payroll_batch_rows``).
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import dag, task

from airflow_provider_feishu_hire.operators.payroll import FEISHU_HIRE_PAYROLL


@dag(
    dag_id="example_feishu_payroll_import",
    schedule=[FEISHU_HIRE_PAYROLL],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["feishu", "payroll", "example"],
    doc_md=__doc__,
)
def example_feishu_payroll_import() -> None:
    @task
    def import_payroll(**context: Any) -> list[int]:
        import logging

        from airflow_provider_feishu_hire.hooks.ledger import FeishuHireLedgerHook

        log = logging.getLogger(__name__)
        consumer = context["ti"].dag_id
        imported: list[int] = []
        hook = FeishuHireLedgerHook()
        try:
            for event in context["triggering_asset_events"].get(FEISHU_HIRE_PAYROLL, []):
                for batch in (event.extra or {}).get("payroll_batches", []):
                    if hook.ledger.delivered(batch["id"], consumer):
                        log.info("Payroll batch %s was imported before: skipped", batch["id"])
                        continue
                    lines = hook.payroll_batch_rows(batch["id"])
                    cash = ", ".join(f"{amount} {currency}" for currency, amount in batch["cash_bonus"].items())
                    log.info(
                        "Imported payroll batch %s: %s lines, %s points%s",
                        batch["id"],
                        len(lines),
                        batch["point_bonus"],
                        f", {cash}" if cash else "",
                    )
                    hook.ledger.record_delivery(batch["id"], consumer)
                    imported.append(batch["id"])
        finally:
            hook.close()
        return imported

    import_payroll()


example_feishu_payroll_import()
