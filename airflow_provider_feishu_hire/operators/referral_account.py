"""Operators that withdraw referral-account balances.

Only the standard library and ``airflow.sdk`` are imported here: every DAG file that
uses these operators pays for this module's imports on every parse. The hook, and
with it ``requests``, is imported when a task runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_feishu_hire.withdrawal import (
    CASH,
    POINTS,
    check_external_order_id,
    check_referral_account_id,
    check_withdraw_bonus_type,
    derive_external_order_id,
    describe_withdrawal,
    withdrawal_record,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

FEISHU_BLUE = "#3370ff"


class ReferralWithdrawOperator(BaseOperator):
    """Withdraw the whole balance of one referral account and return what was paid.

    The return value (and XCom) is the API's ``data`` plus ``referral_account_id``, with
    cash amounts as decimal strings. Without an ``external_order_id`` one is derived from
    the DAG run, task, map index and account, so Airflow's retries of this task instance
    reuse it and Feishu pays once. Errors that retrying cannot fix (unknown or
    deactivated account, bad parameters, missing scope, bad credentials) fail the task
    without retries; transient ones are retried by the client, then by Airflow.

    Map it over accounts with ``.partial(...).expand(referral_account_id=[...])``; each
    mapped instance is labelled in the UI by its account id.
    """

    template_fields: Sequence[str] = ("referral_account_id", "withdraw_bonus_type", "external_order_id")
    ui_color = FEISHU_BLUE
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        referral_account_id: str,
        withdraw_bonus_type: object = (POINTS, CASH),
        external_order_id: str | None = None,
        feishu_hire_conn_id: str = "feishu_hire_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.referral_account_id = referral_account_id
        self.withdraw_bonus_type = withdraw_bonus_type
        self.external_order_id = external_order_id
        self.feishu_hire_conn_id = feishu_hire_conn_id

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        """Label each mapped instance by its account id unless the DAG names another template.

        Airflow takes the label template from ``partial()``, not from the unmapped
        operator's ``__init__``, so the default has to be set here.
        """
        kwargs.setdefault("map_index_template", "{{ task.referral_account_id }}")
        return super().partial(**kwargs)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_feishu_hire.exceptions import FeishuAPIError
        from airflow_provider_feishu_hire.hooks.feishu_hire import FeishuHireHook

        account_id = check_referral_account_id(self.referral_account_id)
        bonus_types = check_withdraw_bonus_type(self.withdraw_bonus_type)
        if self.external_order_id is None:
            order_id = derive_external_order_id(
                dag_id=self.dag_id,
                run_id=context["run_id"],
                task_id=self.task_id,
                map_index=context["ti"].map_index if context["ti"].map_index is not None else -1,
                referral_account_id=account_id,
            )
        else:
            order_id = check_external_order_id(self.external_order_id)

        hook = FeishuHireHook(feishu_hire_conn_id=self.feishu_hire_conn_id)
        try:
            data = hook.withdraw_referral_account(account_id, bonus_types, order_id)
        except FeishuAPIError as err:
            if not err.retryable:
                raise AirflowFailException(str(err)) from None
            raise
        record = withdrawal_record(account_id, data)
        self.log.info("Withdrew %s", describe_withdrawal(record))
        return record
