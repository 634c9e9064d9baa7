"""Import each payroll as soon as it is written: scheduled on the payroll asset, not on a clock.

Every ``ReferralPayrollOperator`` marks the asset ``feishu_hire_payroll`` when it has
written a payroll, with the DAG run, the CSV path and the totals (accounts, rows, points,
cash per currency as decimal strings) in the asset event's extra. Replace the task below
with your own import (an HR system's API, a finance database); read the rows from the
ledger's ``feishu_hire_payroll`` table, where every worker can reach them.
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
)
def example_feishu_payroll_import() -> None:
    @task
    def import_payroll(**context: Any) -> list[dict[str, Any]]:
        import logging

        payrolls = [event.extra for event in context["triggering_asset_events"].get(FEISHU_HIRE_PAYROLL, [])]
        for payroll in payrolls:
            cash = ", ".join(f"{amount} {currency}" for currency, amount in payroll.get("cash_bonus", {}).items())
            logging.getLogger(__name__).info(
                "Payroll of %s %s: %s accounts, %s rows, %s points, cash %s, CSV %s",
                payroll.get("dag_id"),
                payroll.get("run_id"),
                payroll.get("accounts"),
                payroll.get("rows"),
                payroll.get("point_bonus"),
                cash or "none",
                payroll.get("csv") or "none (read table feishu_hire_payroll)",
            )
        return payrolls

    import_payroll()


example_feishu_payroll_import()
