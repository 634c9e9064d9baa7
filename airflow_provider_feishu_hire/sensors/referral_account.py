"""A sensor that waits for a referral account's confirmed balance to reach a threshold.

Only the standard library and ``airflow.sdk`` are imported here: DAG files pay for this
module's imports on every parse. The hook (requests) and the trigger (httpx) are
imported when the task runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_feishu_hire.balance import (
    AccountDeactivated,
    check_balance_threshold,
    check_poke_interval,
    parse_account_assets,
)
from airflow_provider_feishu_hire.defaults import DEFAULT_FEISHU_HIRE_CONN_ID
from airflow_provider_feishu_hire.operators.task_helpers import FEISHU_BLUE, input_errors_fail_the_task
from airflow_provider_feishu_hire.withdrawal import UnreadableAnswer, check_referral_account_id

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_feishu_hire.hooks.feishu_hire import FeishuHireHook
    from airflow_provider_feishu_hire.triggers.referral_account import ReferralBalanceTrigger


class ReferralBalanceSensor(BaseSensorOperator):
    """Wait until a referral account's confirmed balance reaches ``min_point_bonus`` and/or ``min_cash_bonus``.

    Give points (a whole number), cash in one ``currency_type`` (an amount as a string
    such as ``"500.00"``, or a Decimal; a float is refused), or both, in which case both
    must be reached. The sensor returns the balance it saw (XCom): ``point_bonus`` and
    ``cash_bonus`` as ``[{"currency_type", "amount"}]`` with amounts as decimal strings.

    Deferrable by default: waiting for a bonus can take days, and a deferred sensor holds
    no worker slot while it waits (the triggerer polls). ``deferrable=False`` pokes with
    the hook instead (``mode="reschedule"`` frees the slot between pokes). Either way one
    balance read per ``poke_interval`` (at least a second; default a minute) keeps the
    app far inside Feishu's 10 reads a second. Bad input, an unknown or deactivated
    account, a missing scope or wrong credentials fail the task without retries;
    transient errors are tried again at the next poke.
    """

    template_fields: Sequence[str] = ("referral_account_id", "min_point_bonus", "min_cash_bonus", "currency_type")
    ui_color = FEISHU_BLUE
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        referral_account_id: str,
        min_point_bonus: object = None,
        min_cash_bonus: object = None,
        currency_type: str | None = None,
        feishu_hire_conn_id: str = DEFAULT_FEISHU_HIRE_CONN_ID,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.poke_interval = check_poke_interval(self.poke_interval)
        self.referral_account_id = referral_account_id
        self.min_point_bonus = min_point_bonus
        self.min_cash_bonus = min_cash_bonus
        self.currency_type = currency_type
        self.feishu_hire_conn_id = feishu_hire_conn_id
        self.deferrable = deferrable

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        self.defer(
            trigger=self._trigger(),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout) if self.timeout else None,
        )

    def _trigger(self) -> ReferralBalanceTrigger:
        """The trigger, built here so that bad input fails the task before it defers."""
        from airflow_provider_feishu_hire.triggers.referral_account import ReferralBalanceTrigger

        with input_errors_fail_the_task():
            return ReferralBalanceTrigger(
                referral_account_id=self.referral_account_id,
                **check_balance_threshold(self.min_point_bonus, self.min_cash_bonus, self.currency_type).as_strings(),
                poke_interval=self.poke_interval,
                feishu_hire_conn_id=self.feishu_hire_conn_id,
            )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """The trigger's verdict: the balance for XCom, or the reason it cannot be reached."""
        if event.get("status") != "success":
            raise AirflowFailException(str(event.get("message") or event))
        balance: dict[str, Any] = event["balance"]
        self.log.info("Referral account %s reached the threshold: %s", self.referral_account_id, balance)
        return balance

    @cached_property
    def hook(self) -> FeishuHireHook:
        """One hook for all pokes of this try: one token, one keep-alive session."""
        from airflow_provider_feishu_hire.hooks.feishu_hire import FeishuHireHook

        return FeishuHireHook(self.feishu_hire_conn_id)

    def poke(self, context: Context) -> PokeReturnValue | bool:
        from airflow_provider_feishu_hire.exceptions import FeishuAPIError

        with input_errors_fail_the_task():
            account_id = check_referral_account_id(self.referral_account_id)
            threshold = check_balance_threshold(self.min_point_bonus, self.min_cash_bonus, self.currency_type)
            try:
                balance = parse_account_assets(account_id, self.hook.get_account_assets(account_id))
                reached = threshold.reached_by(balance)
            except FeishuAPIError as err:
                if err.retryable:
                    self.log.warning("%s; trying again at the next poke", err)
                    return False
                raise AirflowFailException(str(err)) from None
            except UnreadableAnswer as exc:
                raise AirflowFailException(f"{exc} while reading referral account {account_id}") from None
            except AccountDeactivated as exc:
                raise AirflowFailException(str(exc)) from None
        self.log.info("Referral account %s holds %s", account_id, balance.describe())
        return PokeReturnValue(is_done=reached, xcom_value=balance.as_xcom())
