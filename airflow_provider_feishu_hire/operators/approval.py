"""Four eyes before money moves: a preview of the payout and a person's approval in the Airflow UI.

Built on the standard provider's human-in-the-loop ``ApprovalOperator`` (Airflow 3.1+; on
3.3+ the task waits in the ``awaiting_input`` state, before that it defers to the
triggerer). Only DAGs that ask for approval import that module.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_feishu_hire.defaults import DEFAULT_FEISHU_HIRE_CONN_ID
from airflow_provider_feishu_hire.ledger import DEFAULT_LEDGER_CONN_ID, NOT_REQUIRED, NOTHING_TO_PAY
from airflow_provider_feishu_hire.operators.task_helpers import (
    FEISHU_BLUE,
    feishu_and_ledger,
    input_errors_fail_the_task,
    permanent_feishu_errors_fail_the_task,
    task_try,
    utc_text,
)
from airflow_provider_feishu_hire.withdrawal import (
    CASH,
    POINTS,
    check_referral_account_ids,
    check_withdraw_bonus_type,
)

if TYPE_CHECKING:
    from airflow.sdk import Context


class ReferralPayoutPreviewOperator(BaseOperator):
    """Read every account's balance and return what a payout would withdraw, for the approver.

    Balances are read at Feishu's 10 a second (the connection's ``assets_rate_limit``,
    shared through the ledger by every worker). The return value (XCom) holds the number of
    accounts with a balance, points and cash per currency (decimal strings), the largest
    payouts in each unit, the accounts that cannot be paid and why, ``nothing_to_pay`` (why
    there is nothing to approve, or null), and ``subject``/``markdown`` for
    :class:`ReferralPayoutApprovalOperator`.
    """

    # The connection too: a DAG param lets the person who triggers choose it.
    template_fields: Sequence[str] = ("referral_account_ids", "withdraw_bonus_type", "feishu_hire_conn_id")
    ui_color = FEISHU_BLUE
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        referral_account_ids: object,
        withdraw_bonus_type: object = (POINTS, CASH),
        feishu_hire_conn_id: str = DEFAULT_FEISHU_HIRE_CONN_ID,
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
            feishu_and_ledger(self.feishu_hire_conn_id, self.ledger_conn_id) as (client, ledger),
            permanent_feishu_errors_fail_the_task(),
        ):
            preview = preview_payout(client, account_ids, bonus_types)
            # What the approver is shown, per account, is what an approval binds: the withdrawals read it here.
            shown = {b.referral_account_id: (b.point_bonus, b.cash_bonus) for b in preview.payable}
            preview_id = ledger.record_preview(task_try(context, ledger), shown)
        self.log.info("%s", preview.nothing_to_pay() or preview.headline())
        return {**preview.as_xcom(), "payout_preview_id": preview_id}


class ReferralPayoutApprovalOperator(ApprovalOperator):
    """A person approves or rejects the previewed payout in the Airflow UI; the decision goes to the ledger.

    The subject and body come from the preview task's XCom (``preview_task_id``). Every
    outcome is recorded in the ledger's ``feishu_hire_approval`` (who decided, when, the
    totals they saw) before it acts:

    - **Approve**: the task succeeds and the withdrawals downstream run.
    - **Reject**: the task fails, without retries, with "Rejected by <user> at <time>:
      nothing paid". Failing rather than skipping is what makes a rejection stand out:
      skipped tasks count as success, so a skipping approval leaves the task and the run
      green. Downstream tasks follow their trigger rules: the withdrawals (``all_success``)
      become ``upstream_failed`` and send nothing, also when cleared; a task that runs
      whatever happened upstream (``all_done``, like the payroll export) runs and must
      read the rejection from the ledger. Airflow sets a run's state from its last tasks
      only, so whether the run ends ``failed`` is up to them.
    - **Nothing to pay** (no account has a balance): nobody is asked. If the preview could
      not read or pay some account, the task fails naming them; if every account was read
      with a zero balance, it succeeds and skips everything downstream.

    ``required`` (templated, e.g. ``"{{ params.require_approval }}"``) false lets unattended
    runs through at once; that is recorded too, as "not required".
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
        super().__init__(**kwargs)
        self.preview_task_id = preview_task_id
        self.required = required
        self.ledger_conn_id = ledger_conn_id

    def execute(self, context: Context) -> Any:
        with input_errors_fail_the_task():
            required = _flag(self.required, "required")
        preview = context["ti"].xcom_pull(task_ids=self.preview_task_id) or {}
        if preview.get("nothing_to_pay"):
            self._record(context, preview, NOTHING_TO_PAY, "nobody (nothing to pay)")
            if preview.get("not_payable"):
                # One short line per account first: the log viewer cuts the exception's long line.
                for account, why in preview["not_payable"].items():
                    self.log.error("Cannot pay %s: %s", account, why)
                raise AirflowFailException(preview["nothing_to_pay"])
            self.log.info("%s", preview["nothing_to_pay"])
            # Raises to skip them; returns only when there is nothing downstream.
            self.skip(ti=context["ti"], tasks=[t for t in self.get_flat_relatives(upstream=False) if not t.is_teardown])
            return None
        if required:
            return super().execute(context)
        self.log.info("Approval is turned off for this run: paying without a person's decision")
        self._record(context, preview, NOT_REQUIRED, "nobody (approval not required)")
        return {"chosen_options": [self.APPROVE], "responded_by_user": None}

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        # The standard operator's own handling validates the answer; its Approve/Reject step is
        # replaced: a rejection fails. Nobody deciding within response_timeout fails too, without
        # retries: a retry would ask again and keep the run waiting for several timeouts.
        from airflow.providers.standard.exceptions import HITLTimeoutError

        try:
            answer = HITLOperator.execute_complete(self, context, event)
        except HITLTimeoutError:
            raise AirflowFailException(
                f"Nobody decided within {self.response_timeout}: nothing paid (a later run asks again)"
            ) from None
        decision = answer["chosen_options"][0]
        user = answer["responded_by_user"] or {}
        who = str(user.get("name") or user.get("id") or "unknown") if isinstance(user, dict) else str(user)
        moment = answer["responded_at"]
        preview = context["ti"].xcom_pull(task_ids=self.preview_task_id) or {}
        # Recorded before acting on it, so the ledger knows the decision whatever happens next.
        self._record(context, preview, decision, who, moment)
        self.hitl_summary_extra["approved"] = decision == self.APPROVE
        when = utc_text(moment)
        if decision != self.APPROVE:
            raise AirflowFailException(f"Rejected by {who} at {when}: nothing paid")
        if who == context["dag_run"].triggering_user_name:  # the withdrawals refuse it too, from the ledger
            raise AirflowFailException(
                f"Approved by {who} at {when}, who triggered this run: a second person must approve (clear this "
                "task to ask again); nothing paid"
            )
        self.log.info("Approved by %s at %s", who, when)
        return answer

    def _record(
        self, context: Context, preview: dict[str, Any], decision: str, who: str, when: datetime | None = None
    ) -> None:
        from airflow_provider_feishu_hire.hooks.ledger import FeishuHireLedgerHook
        from airflow_provider_feishu_hire.ledger import Approval

        moment = when if isinstance(when, datetime) else datetime.now(timezone.utc)
        hook = FeishuHireLedgerHook(self.ledger_conn_id)
        try:
            run = task_try(context, hook.ledger)
            hook.ledger.record_approval(
                Approval(
                    dag_id=run.dag_id,
                    run_id=run.run_id,
                    task_id=run.task_id,
                    decision=decision,
                    decided_by=who,
                    decided_at=moment.astimezone(timezone.utc).isoformat(timespec="seconds"),
                    accounts=int(preview.get("payable", 0)),
                    point_bonus=int(preview.get("point_bonus", 0)),
                    cash_bonus=dict(preview.get("cash_bonus", {})),
                    run_generation=run.run_generation,
                    triggered_by=context["dag_run"].triggering_user_name,
                    payout_preview_id=preview.get("payout_preview_id"),
                )
            )
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
