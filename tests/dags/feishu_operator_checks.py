"""DAG used by tests/test_dags.py: the operator templated, restricted to points, mapped, and fed bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import dag, task

from airflow_provider_feishu_hire.operators.referral_account import ReferralWithdrawOperator


@dag(
    dag_id="feishu_operator_checks",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    params={"points_account": "", "bonus_type": "points", "order_id": "", "mapped_accounts": [], "output": ""},
    default_args={"retries": 2},
)
def feishu_operator_checks() -> None:
    points_only = ReferralWithdrawOperator(
        task_id="points_only",
        referral_account_id="{{ params.points_account }}",
        withdraw_bonus_type="{{ params.bonus_type }}",
        external_order_id="{{ params.order_id }}",
    )

    @task
    def mapped_accounts(params: dict[str, Any] | None = None) -> list[str]:
        assert params is not None
        return list(params["mapped_accounts"])

    mapped = ReferralWithdrawOperator.partial(task_id="mapped").expand(referral_account_id=mapped_accounts())

    @task
    def record(points: dict[str, Any], mapped: list[dict[str, Any]], params: dict[str, Any] | None = None) -> None:
        assert params is not None
        Path(params["output"]).write_text(json.dumps({"points_only": points, "mapped": list(mapped[:])}))

    record(points_only.output, mapped.output)


feishu_operator_checks()
