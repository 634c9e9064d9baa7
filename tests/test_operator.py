"""Operator construction: what a DAG author gets wrong is refused when the DAG file is parsed."""

from __future__ import annotations

from datetime import timedelta

import pendulum
import pytest
from airflow.sdk import DAG

from airflow_provider_feishu_hire.operators.referral_account import (
    ReferralBatchWithdrawOperator,
    ReferralWithdrawOperator,
)

pytestmark = pytest.mark.lowest  # also run on the lowest supported Airflow (Makefile: pytest-lowest)


def test_mapped_withdrawals_cannot_share_one_order_id() -> None:
    with (
        DAG("shared_order_id", schedule=None, start_date=pendulum.datetime(2026, 1, 1)),
        pytest.raises(ValueError, match=r"expand_kwargs"),
    ):
        ReferralWithdrawOperator.partial(task_id="withdraw", external_order_id="1").expand(
            referral_account_id=["7001", "7002"]
        )


def test_mapped_withdrawals_are_labelled_by_account_id() -> None:
    with DAG("labels", schedule=None, start_date=pendulum.datetime(2026, 1, 1)):
        mapped = ReferralWithdrawOperator.partial(task_id="withdraw").expand(referral_account_id=["7001"])
        relabelled = ReferralWithdrawOperator.partial(task_id="withdraw2", map_index_template="{{ 1 }}").expand(
            referral_account_id=["7001"]
        )
    assert mapped.map_index_template == "{{ task.referral_account_id }}"
    assert relabelled.map_index_template == "{{ 1 }}"


def test_a_batch_needs_at_least_one_worker() -> None:
    with pytest.raises(ValueError, match="max_workers"):
        ReferralBatchWithdrawOperator(task_id="b", referral_account_ids=["7001"], max_workers=0)


def test_a_policy_that_is_not_exact_fails_the_dag_file_at_parse() -> None:
    with (
        DAG("bad_policy", schedule=None, start_date=pendulum.datetime(2026, 1, 1)),
        pytest.raises(TypeError, match=r"auto_approve_up_to\.cash_bonus\.CNY .* is a float"),
    ):
        ReferralBatchWithdrawOperator(
            task_id="withdraw", referral_account_ids=["7001"], auto_approve_up_to={"cash_bonus": {"CNY": 50.0}}
        )


def test_nobody_deciding_in_time_fails_the_approval_without_retries() -> None:
    """A retry would ask again and keep the run (and the runs queued behind it) waiting for another timeout."""
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_provider_feishu_hire.operators.approval import ReferralPayoutApprovalOperator

    with DAG("approval_timeout", schedule=None, start_date=pendulum.datetime(2026, 1, 1)):
        approval = ReferralPayoutApprovalOperator(task_id="approve_payout", response_timeout=timedelta(hours=1))
    with pytest.raises(AirflowFailException, match="Nobody decided within 1:00:00: nothing paid"):
        approval.execute_complete({}, {"error": "timed out", "error_type": "timeout"})  # type: ignore[arg-type]
