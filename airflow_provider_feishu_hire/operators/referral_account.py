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
    check_referral_account_ids,
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
        operator's ``__init__``, so the default has to be set here. An order id in
        ``partial()`` would be shared by every mapped account, and Feishu would answer
        the second account with the first one's withdrawal: refused.
        """
        if kwargs.get("external_order_id") is not None:
            raise ValueError(
                "external_order_id in partial() would be shared by every mapped account; "
                "expand it together with referral_account_id, or leave it out to derive one per account"
            )
        kwargs.setdefault("map_index_template", "{{ task.referral_account_id }}")
        return super().partial(**kwargs)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_feishu_hire.exceptions import FeishuAPIError
        from airflow_provider_feishu_hire.hooks.feishu_hire import FeishuHireHook

        account_id = check_referral_account_id(self.referral_account_id)
        bonus_types = check_withdraw_bonus_type(self.withdraw_bonus_type)
        if self.external_order_id is None:
            order_id = _order_id_for(context, account_id)
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


class ReferralBatchWithdrawOperator(BaseOperator):
    """Withdraw many referral accounts in one task: one token, one keep-alive session, Feishu's pace.

    ``referral_account_ids`` is a list given inline, a template rendering to a list (JSON,
    Python or comma-separated text), or an upstream ``XComArg``. Calls are paced at the
    connection's ``withdraw_rate_limit`` (Feishu's 100 a minute by default), overridable
    here with ``withdraw_per_minute``, and shared by the ``max_workers`` threads. With
    ``check_balances`` each account's balance is read first (at Feishu's separate 10 a
    second) and accounts with nothing to withdraw are skipped, saving withdraw quota.

    Every account's outcome goes to a JSON-lines journal in ``results_dir`` (which must be
    reachable by every worker that may run a retry, and by downstream readers). The
    journal makes the task resumable: a retry carries over the accounts already paid and
    re-sends the rest with the same deterministic ``external_order_id``, so no account is
    paid twice. One account's failure never stops the others: the task pays everything it
    can, then fails if any account failed, and is retried by Airflow only if a retry can
    help. The return value (XCom) is a bounded summary with the journal's path.
    """

    template_fields: Sequence[str] = ("referral_account_ids", "withdraw_bonus_type", "results_dir")
    ui_color = FEISHU_BLUE
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        referral_account_ids: object,
        results_dir: str,
        withdraw_bonus_type: object = (POINTS, CASH),
        check_balances: bool = False,
        max_workers: int = 4,
        withdraw_per_minute: float | None = None,
        assets_per_second: float | None = None,
        feishu_hire_conn_id: str = "feishu_hire_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.referral_account_ids = referral_account_ids
        self.results_dir = results_dir
        self.withdraw_bonus_type = withdraw_bonus_type
        self.check_balances = check_balances
        self.max_workers = max_workers
        self.withdraw_per_minute = withdraw_per_minute
        self.assets_per_second = assets_per_second
        self.feishu_hire_conn_id = feishu_hire_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_feishu_hire.batch import journal_path, withdraw_batch
        from airflow_provider_feishu_hire.hooks.feishu_hire import FeishuHireHook

        account_ids = check_referral_account_ids(self.referral_account_ids)
        bonus_types = check_withdraw_bonus_type(self.withdraw_bonus_type)
        if not str(self.results_dir or "").strip():
            raise ValueError("results_dir is empty: name a folder every worker can reach")
        results_path = journal_path(
            self.results_dir,
            dag_id=self.dag_id,
            run_id=context["run_id"],
            task_id=self.task_id,
            map_index=_map_index(context),
        )

        hook = FeishuHireHook(
            feishu_hire_conn_id=self.feishu_hire_conn_id,
            withdraw_per_minute=self.withdraw_per_minute,
            assets_per_second=self.assets_per_second,
            pool_size=self.max_workers,
        )
        self.log.info("Withdrawing %d referral accounts; journal %s", len(account_ids), results_path)
        summary = withdraw_batch(
            hook.client,
            account_ids,
            bonus_types=bonus_types,
            order_id_for=lambda account_id: _order_id_for(context, account_id),
            results_path=results_path,
            check_balances=self.check_balances,
            max_workers=self.max_workers,
            earlier_tries=context["ti"].try_number > 1,
        )
        result = summary.as_xcom()
        self.log.info(
            "Paid %d (%d by an earlier try), skipped %d, failed %d permanently and %d transiently; points %d, cash %s",
            summary.paid,
            summary.carried_over,
            summary.skipped,
            summary.failed_permanent,
            summary.failed_transient,
            summary.point_bonus,
            result["cash_bonus"] or "none",
        )
        if summary.failed_transient:
            # A retry carries over what was paid and re-sends the rest with the same order ids.
            raise RuntimeError(
                f"{summary.failed_transient} referral accounts failed transiently; a retry resumes from {results_path}"
            )
        if summary.failed_permanent:
            raise AirflowFailException(
                f"{summary.failed_permanent} referral accounts failed permanently (first: "
                f"{summary.failures[0]['referral_account_id']} code {summary.failures[0]['code']}); "
                f"all others were paid. Details: {results_path}"
            )
        return result


def _map_index(context: Context) -> int:
    map_index = context["ti"].map_index
    return -1 if map_index is None else map_index


def _order_id_for(context: Context, referral_account_id: str) -> str:
    ti = context["ti"]
    return derive_external_order_id(
        dag_id=ti.dag_id,
        run_id=context["run_id"],
        task_id=ti.task_id,
        map_index=_map_index(context),
        referral_account_id=referral_account_id,
    )
