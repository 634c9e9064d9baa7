"""Four eyes before money moves: a preview of the payout and a person's approval in the Airflow UI.

Built on the standard provider's human-in-the-loop ``ApprovalOperator`` (Airflow 3.1+; on
3.3+ the task waits in the ``awaiting_input`` state, before that it defers to the
triggerer). Only DAGs that ask for approval import that module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import BaseOperator

from airflow_provider_feishu_hire.ledger import DEFAULT_LEDGER_CONN_ID
from airflow_provider_feishu_hire.operators.referral_account import (
    FEISHU_BLUE,
    feishu_and_ledger,
    input_errors_fail_the_task,
    permanent_feishu_errors_fail_the_task,
)
from airflow_provider_feishu_hire.withdrawal import (
    CASH,
    POINTS,
    check_referral_account_ids,
    check_withdraw_bonus_type,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_feishu_hire.ledger import Approval

NOT_REQUIRED = "not required"


class ReferralPayoutPreviewOperator(BaseOperator):
    """Read every account's balance and return what a payout would withdraw, for the approver.

    Balances are read at Feishu's 10 a second (the connection's ``assets_rate_limit``,
    shared through the ledger by every worker). The return value (XCom) holds the number of
    accounts with a balance, points and cash per currency (decimal strings), the largest
    payouts, the accounts that cannot be paid and why, and ``subject``/``markdown`` for
    :class:`ReferralPayoutApprovalOperator`.
    """

    template_fields: Sequence[str] = ("referral_account_ids", "withdraw_bonus_type")
    ui_color = FEISHU_BLUE
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        referral_account_ids: object,
        withdraw_bonus_type: object = (POINTS, CASH),
        feishu_hire_conn_id: str = "feishu_hire_default",
        ledger_conn_id: str = DEFAULT_LEDGER_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.referral_account_ids = referral_account_ids
        self.withdraw_bonus_type = withdraw_bonus_type
        self.feishu_hire_conn_id = feishu_hire_conn_id
        self.ledger_conn_id = ledger_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_feishu_hire.preview import preview_payout

        with input_errors_fail_the_task():
            account_ids = check_referral_account_ids(self.referral_account_ids)
            bonus_types = check_withdraw_bonus_type(self.withdraw_bonus_type)
        with (
            feishu_and_ledger(self.feishu_hire_conn_id, self.ledger_conn_id) as (client, _),
            permanent_feishu_errors_fail_the_task(),
        ):
            preview = preview_payout(client, account_ids, bonus_types)
        self.log.info("%s", preview.headline())
        return preview.as_xcom()


class ReferralPayoutApprovalOperator(ApprovalOperator):
    """A person approves or rejects the previewed payout in the Airflow UI; the decision goes to the ledger.

    The subject and body come from the preview task's XCom (``preview_task_id``). Approve:
    the withdrawals downstream run. Reject: every downstream task is skipped, so nothing is
    paid and no payroll is written. Either way the ledger's ``feishu_hire_approval`` keeps
    who decided, when, and the totals they saw. ``required`` (templated, e.g.
    ``"{{ params.require_approval }}"``) false lets unattended runs through at once; that is
    recorded too, as "not required".
    """

    template_fields: Sequence[str] = (*ApprovalOperator.template_fields, "required")
    ui_color = FEISHU_BLUE
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        preview_task_id: str = "preview_payout",
        required: object = True,
        ledger_conn_id: str = DEFAULT_LEDGER_CONN_ID,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("subject", f"{{{{ ti.xcom_pull(task_ids='{preview_task_id}')['subject'] }}}}")
        kwargs.setdefault("body", f"{{{{ ti.xcom_pull(task_ids='{preview_task_id}')['markdown'] }}}}")
        kwargs.setdefault("ignore_downstream_trigger_rules", True)  # a rejection skips payroll too
        super().__init__(**kwargs)
        self.preview_task_id = preview_task_id
        self.required = required
        self.ledger_conn_id = ledger_conn_id

    def execute(self, context: Context) -> Any:
        with input_errors_fail_the_task():
            required = _flag(self.required, "required")
        if required:
            return super().execute(context)
        self.log.info("Approval is turned off for this run: paying without a person's decision")
        self._record(context, NOT_REQUIRED, "nobody (approval not required)")
        return {"chosen_options": [self.APPROVE], "responded_by_user": None}

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        # Recorded before the parent acts on it: a rejection skips the downstream tasks by
        # raising, so nothing after the parent's call would run.
        if "error" not in event:  # a timeout or trigger error: the parent raises, nobody decided
            self.validate_chosen_options(event["chosen_options"])
            user = event.get("responded_by_user") or {}
            who = str(user.get("name") or user.get("id") or "unknown") if isinstance(user, dict) else str(user)
            decision = event["chosen_options"][0]
            self._record(context, decision, who, event.get("responded_at"))
            self.log.info("%s by %s", "Approved" if decision == self.APPROVE else "Rejected: nothing is paid", who)
        return super().execute_complete(context, event)

    def _record(self, context: Context, decision: str, who: str, when: Any = None) -> None:
        from datetime import datetime, timezone

        from airflow_provider_feishu_hire.hooks.ledger import FeishuHireLedgerHook
        from airflow_provider_feishu_hire.ledger import Approval

        preview = context["ti"].xcom_pull(task_ids=self.preview_task_id) or {}
        moment = when if isinstance(when, datetime) else datetime.now(timezone.utc)
        approval: Approval = Approval(
            dag_id=context["ti"].dag_id,
            run_id=context["run_id"],
            task_id=context["ti"].task_id,
            decision=decision,
            decided_by=who,
            decided_at=moment.astimezone(timezone.utc).isoformat(timespec="seconds"),
            accounts=int(preview.get("payable", 0)),
            point_bonus=int(preview.get("point_bonus", 0)),
            cash_bonus=dict(preview.get("cash_bonus", {})),
        )
        hook = FeishuHireLedgerHook(self.ledger_conn_id)
        try:
            hook.ledger.record_approval(approval)
        finally:
            hook.close()


def _flag(value: object, field: str) -> bool:
    """A boolean from a DAG param: True/False, or the text a template renders ("True", "false")."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"{field} {value!r} is neither true nor false")
