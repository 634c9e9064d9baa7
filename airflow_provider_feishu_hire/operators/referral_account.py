"""Operators for referral accounts: withdraw balances through the payout ledger; register, deactivate, enable.

Only the standard library and ``airflow.sdk`` are imported here: every DAG file that
uses these operators pays for this module's imports on every parse. The hooks, and with
them ``requests`` and the database drivers, are imported when a task runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_feishu_hire.accounts import check_referrer, check_user_id_type
from airflow_provider_feishu_hire.balance import check_auto_approve_up_to
from airflow_provider_feishu_hire.defaults import DEFAULT_FEISHU_HIRE_CONN_ID, DEFAULT_LEDGER_CONN_ID
from airflow_provider_feishu_hire.operators.task_helpers import (
    FEISHU_BLUE,
    feishu_and_ledger,
    input_errors_fail_the_task,
    permanent_feishu_errors_fail_the_task,
    run_approval,
    task_try,
)
from airflow_provider_feishu_hire.withdrawal import (
    CASH,
    POINTS,
    check_external_order_id,
    check_external_order_ids,
    check_referral_account_id,
    check_referral_account_ids,
    check_withdraw_bonus_type,
    derive_external_order_id,
    plural,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_feishu_hire.client import FeishuClient
    from airflow_provider_feishu_hire.ledger import Intent, TaskTry


class ReferralWithdrawOperator(BaseOperator):
    """Withdraw the whole balance of one referral account, exactly once, and return what was paid.

    The withdrawal goes through the payout ledger (``ledger_conn_id``): the intent is
    recorded before Feishu is called and the answer after, so a retry, a clear or a zombie
    try on another worker finds it there. Without an ``external_order_id`` one is derived
    from the DAG, run, task and account (not the map index), so a re-ordered or grown list
    replays instead of withdrawing anew. An order id the ledger holds for another account
    is refused before anything is sent.

    The return value (XCom) is the API's ``data`` plus ``referral_account_id``, cash amounts
    as decimal strings. Errors retrying cannot fix (bad input, unknown or deactivated
    account, missing scope, an answer to review) fail the task without retries.

    Map it with ``.partial(...).expand(referral_account_id=[...])``; with your own order
    ids, pair them: ``.expand_kwargs([{"referral_account_id": a, "external_order_id": o}, ...])``.
    Each mapped instance is labelled by its account id.
    """

    template_fields: Sequence[str] = (
        "referral_account_id",
        "withdraw_bonus_type",
        "external_order_id",
        "feishu_hire_conn_id",
    )
    ui_color = FEISHU_BLUE
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        referral_account_id: str,
        withdraw_bonus_type: object = (POINTS, CASH),
        external_order_id: str | None = None,
        feishu_hire_conn_id: str = DEFAULT_FEISHU_HIRE_CONN_ID,
        ledger_conn_id: str = DEFAULT_LEDGER_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.referral_account_id = referral_account_id
        self.withdraw_bonus_type = withdraw_bonus_type
        self.external_order_id = external_order_id
        self.feishu_hire_conn_id = feishu_hire_conn_id
        self.ledger_conn_id = ledger_conn_id

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        """Label each mapped instance by its account id unless the DAG names another template.

        Airflow takes the label template from ``partial()``, not from the unmapped
        operator's ``__init__``, so the default has to be set here. An order id in
        ``partial()`` would be shared by every mapped account: refused.
        """
        if kwargs.get("external_order_id") is not None:
            raise ValueError(
                "external_order_id in partial() would be shared by every mapped account, and Feishu would "
                "answer the second account with the first one's withdrawal. Leave it out to derive one per "
                "account, or pair each account with its own id: .expand_kwargs([{'referral_account_id': ..., "
                "'external_order_id': ...}, ...]) (not .expand() over two lists, which is a cross product)"
            )
        kwargs.setdefault("map_index_template", "{{ task.referral_account_id }}")
        return super().partial(**kwargs)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_feishu_hire.ledger import SENDING, SKIPPED
        from airflow_provider_feishu_hire.payout import withdraw_account

        with input_errors_fail_the_task():
            account_id = check_referral_account_id(self.referral_account_id)
            bonus_types = check_withdraw_bonus_type(self.withdraw_bonus_type)
            order_id = None if self.external_order_id is None else check_external_order_id(self.external_order_id)
        with (
            feishu_and_ledger(self.feishu_hire_conn_id, self.ledger_conn_id) as (client, ledger),
            input_errors_fail_the_task(),  # an order id held for another account; a superseded try
        ):
            task = task_try(context, ledger)
            lease = ledger.take_lease(task)
            if not lease.held:
                raise AirflowFailException(lease.describe(task))
            approval = run_approval(self, ledger, task)
            outcome = withdraw_account(
                client,
                ledger,
                _intent(task, client, account_id, bonus_types, order_id),
                approval=approval,
            )
        if outcome.status == SKIPPED:  # read before withdrawing (an approval binds the amounts): nothing there
            self.log.info("Nothing to withdraw from referral account %s", account_id)
            return {"referral_account_id": account_id, "external_order_id": outcome.external_order_id}
        if outcome.withdrawal is None:
            if outcome.status == SENDING:  # Feishu may have committed: the retry sends the same order id
                raise RuntimeError(f"{outcome.describe()}; a retry resends the same order id")
            raise AirflowFailException(outcome.describe())
        self.log.info("Withdrew %s", outcome.describe())
        return outcome.withdrawal.as_xcom()


class ReferralBatchWithdrawOperator(BaseOperator):
    """Withdraw many referral accounts in one task: one token, one keep-alive session, Feishu's pace.

    ``referral_account_ids`` is a list given inline, a template rendering to a list (JSON,
    Python or comma-separated text), or an upstream ``XComArg``. Calls are paced at the
    connection's ``withdraw_rate_limit`` (Feishu's 100 a minute by default), overridable
    here with ``withdraw_per_minute``, and shared by the ``max_workers`` threads. With
    ``check_balances`` each account's balance is read first (at Feishu's separate 10 a
    second) and accounts with nothing to withdraw are skipped, saving withdraw quota.

    Every account goes through the payout ledger, so a retry on any worker carries over
    what was paid and re-sends the rest with the same derived order ids, and an account
    whose earlier outcome is unknown is never skipped on a zero balance. One account's
    failure never stops the others: the task pays everything it can, then fails if any
    account was not settled, retried by Airflow only when a retry can help. The return
    value (XCom) is a bounded summary.

    ``external_order_ids`` (optional; a mapping, its JSON, or an ``XComArg``) chooses the
    order id of some or all accounts, e.g. one derived from what is being paid rather than
    from the run; the others are derived from DAG, run, task and account.

    ``auto_approve_up_to`` (``{"point_bonus": 100, "cash_bonus": {"CNY": "50.00"}}``, per
    account; set in the DAG's code, never from a run's conf) pays a balance within it at
    once, even in a DAG with an approval step, and records the policy in the ledger as
    that account's approval. A balance above it is not sent: it is held for a person
    (``needs_approval``), the task still succeeds, and its XCom's ``awaiting_approval``
    (account to order id) is what a ``ReferralPayoutPreviewOperator`` and
    ``ReferralPayoutApprovalOperator`` downstream show, and a second batch withdrawal
    after them pays under the same order ids. A rejection of the run stops it too.
    """

    template_fields: Sequence[str] = (
        "referral_account_ids",
        "withdraw_bonus_type",
        "external_order_ids",
        "feishu_hire_conn_id",
    )
    ui_color = FEISHU_BLUE
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        referral_account_ids: object,
        withdraw_bonus_type: object = (POINTS, CASH),
        external_order_ids: object = None,
        check_balances: bool = False,
        auto_approve_up_to: Mapping[str, Any] | None = None,
        max_workers: int = 4,
        withdraw_per_minute: float | None = None,
        assets_per_second: float | None = None,
        feishu_hire_conn_id: str = DEFAULT_FEISHU_HIRE_CONN_ID,
        ledger_conn_id: str = DEFAULT_LEDGER_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.auto_approve_up_to = check_auto_approve_up_to(auto_approve_up_to)  # a DAG file's error, at parse
        self.referral_account_ids = referral_account_ids
        self.withdraw_bonus_type = withdraw_bonus_type
        self.external_order_ids = external_order_ids
        self.check_balances = check_balances
        self.max_workers = max_workers
        self.withdraw_per_minute = withdraw_per_minute
        self.assets_per_second = assets_per_second
        self.feishu_hire_conn_id = feishu_hire_conn_id
        self.ledger_conn_id = ledger_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_feishu_hire.payout import withdraw_batch

        with input_errors_fail_the_task():
            account_ids = check_referral_account_ids(self.referral_account_ids)
            bonus_types = check_withdraw_bonus_type(self.withdraw_bonus_type)
            order_ids = check_external_order_ids(self.external_order_ids)
        self.log.info("Withdrawing %s", plural(len(account_ids), "referral account"))
        with feishu_and_ledger(
            self.feishu_hire_conn_id,
            self.ledger_conn_id,
            withdraw_per_minute=self.withdraw_per_minute,
            assets_per_second=self.assets_per_second,
            pool_size=self.max_workers,
        ) as (client, ledger):
            with input_errors_fail_the_task():
                task = task_try(context, ledger)
            policy = self.auto_approve_up_to
            approval = run_approval(self, ledger, task, missing_ok=policy is not None)
            summary = withdraw_batch(
                client,
                ledger,
                account_ids,
                intent_for=lambda account_id: _intent(task, client, account_id, bonus_types, order_ids.get(account_id)),
                check_balances=self.check_balances,
                approval=approval,
                policy=policy,
                max_workers=self.max_workers,
            )
        result = summary.as_xcom()
        self.log.info(
            "Paid %d of %d referral accounts (%d by an earlier try), skipped %d; points %d, cash %s",
            summary.paid,
            summary.total,
            summary.carried_over,
            summary.skipped,
            summary.point_bonus,
            ", ".join(f"{amount} {currency}" for currency, amount in result["cash_bonus"].items()) or "none",
        )
        if summary.superseded:
            raise AirflowFailException(
                f"This try stopped sending: {summary.superseded}. It paid "
                f"{plural(summary.paid, 'referral account')}; all are in the ledger"
            )
        unsettled = summary.open + summary.rejected + summary.review
        if policy is None:
            unsettled += summary.needs_approval
        elif summary.needs_approval:
            self.log.info(
                "%s above auto_approve_up_to (%s), held for the approval step: %s",
                plural(summary.needs_approval, "referral account"),
                policy.describe(),
                ", ".join(summary.awaiting_approval),
            )
        if not unsettled:
            return result
        first = summary.problems[0]
        head = (
            f"{plural(unsettled, 'referral account')} not paid (first: {first['referral_account_id']}, "
            f"{first['status']}, {first['message']}); the other {summary.paid} are paid and in the ledger"
        )
        if summary.open:
            # A retry carries over what was paid and re-sends the rest with the same order ids.
            raise RuntimeError(f"{head}. {plural(summary.open, 'referral account')} may succeed on a retry")
        raise AirflowFailException(
            f"{head}. Retrying cannot help: {summary.rejected} refused, {summary.review} to review, "
            f"{summary.needs_approval} needing a new approval"
        )


def _intent(
    task: TaskTry, client: FeishuClient, account_id: str, bonus_types: Sequence[int], order_id: str | None
) -> Intent:
    from airflow_provider_feishu_hire.ledger import Intent

    return Intent(
        external_order_id=order_id
        or derive_external_order_id(
            dag_id=task.dag_id,
            run_id=task.run_id,
            task_id=task.task_id,
            referral_account_id=account_id,
            run_generation=task.run_generation,
            tenant_key=client.tenant_key,
        ),
        referral_account_id=account_id,
        withdraw_bonus_type=tuple(bonus_types),
        app_id=client.tenant_app_id,
        dag_id=task.dag_id,
        run_id=task.run_id,
        task_id=task.task_id,
        map_index=task.map_index,
        try_number=task.try_number,
        ti_id=task.ti_id,
        run_generation=task.run_generation,
    )


class ReferralAccountRegisterOperator(BaseOperator):
    """Register a referrer's referral account by mobile number or email; return its ``referral_account_id``.

    Registering is the only way to learn an account id, and Feishu does not make it
    idempotent. The id Feishu answers is kept in the payout ledger, so a retry, a clear or
    a re-run returns it without registering again. If an answer is lost before the ledger
    has it, the retry registers again: Feishu then answers the existing account, or
    refuses the duplicate; the task then fails naming the referrer, whose account id
    is in Feishu Hire's referral settings (add it to the ledger by registering once Feishu
    answers it, or use it directly).

    ``referrer_mobile`` (with ``mobile_code``, default 86) or ``referrer_email``, exactly one:
    Feishu's ``mobile`` and ``email`` (``email`` on an operator is Airflow's alert address).
    Map it with ``.partial(...).expand(referrer_email=[...])`` or
    ``.expand_kwargs([{"referrer_mobile": ...}, ...])``; mapped instances are labelled by
    the email or mobile number.
    """

    template_fields: Sequence[str] = (
        "referrer_mobile",
        "mobile_code",
        "referrer_email",
        "user_id_type",
        "feishu_hire_conn_id",
    )
    ui_color = FEISHU_BLUE
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        referrer_mobile: object = None,
        mobile_code: object = "86",
        referrer_email: object = None,
        user_id_type: object = None,
        feishu_hire_conn_id: str = DEFAULT_FEISHU_HIRE_CONN_ID,
        ledger_conn_id: str = DEFAULT_LEDGER_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.referrer_mobile = referrer_mobile
        self.mobile_code = mobile_code
        self.referrer_email = referrer_email
        self.user_id_type = user_id_type
        self.feishu_hire_conn_id = feishu_hire_conn_id
        self.ledger_conn_id = ledger_conn_id

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        kwargs.setdefault("map_index_template", "{{ task.referrer_email or task.referrer_mobile }}")
        return super().partial(**kwargs)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_feishu_hire.exceptions import FeishuAPIError

        with input_errors_fail_the_task():
            body = check_referrer(mobile=self.referrer_mobile, mobile_code=self.mobile_code, email=self.referrer_email)
            user_id_type = check_user_id_type(self.user_id_type)
            # One key per referrer in the ledger: email addresses compare without case.
            referrer = (
                str(body["email"]).lower() if "email" in body else "mobile +{code} {number}".format(**body["mobile"])
            )
        with feishu_and_ledger(self.feishu_hire_conn_id, self.ledger_conn_id) as (client, ledger):
            known = ledger.registered_account(client.tenant_app_id, referrer)
            if known is not None:
                self.log.info("Referral account %s of %s: registered before, taken from the ledger", known, referrer)
                return {"referral_account_id": known, "referrer": referrer, "registered_now": False}
            try:
                account = client.register_referral_account(
                    mobile=self.referrer_mobile,
                    mobile_code=self.mobile_code,
                    email=self.referrer_email,
                    user_id_type=user_id_type,
                )
            except FeishuAPIError as exc:
                if exc.retryable:
                    raise
                if exc.reach.may_have_acted or context["ti"].try_number > 1:  # an earlier send may have registered
                    raise AirflowFailException(
                        f"{exc} — an earlier attempt may have registered {referrer} and lost Feishu's answer: "
                        "look the account up in Feishu Hire before registering by hand"
                    ) from None
                raise AirflowFailException(str(exc)) from None
            account_id = str(account["account_id"])
            ledger.record_registration(client.tenant_app_id, referrer, account_id)
        self.log.info("Registered referral account %s of %s", account_id, referrer)
        return {"referral_account_id": account_id, "referrer": referrer, "registered_now": True}


class _ReferralAccountStatusOperator(BaseOperator):
    """Change one account's status; mappable over ``referral_account_id``, labelled by it."""

    template_fields: Sequence[str] = ("referral_account_id", "feishu_hire_conn_id")
    ui_color = FEISHU_BLUE
    ui_fgcolor = "#ffffff"
    doing = ""

    def __init__(
        self, *, referral_account_id: str, feishu_hire_conn_id: str = DEFAULT_FEISHU_HIRE_CONN_ID, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.referral_account_id = referral_account_id
        self.feishu_hire_conn_id = feishu_hire_conn_id

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        kwargs.setdefault("map_index_template", "{{ task.referral_account_id }}")
        return super().partial(**kwargs)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_feishu_hire.hooks.feishu_hire import FeishuHireHook

        with input_errors_fail_the_task():
            account_id = check_referral_account_id(self.referral_account_id)
            hook = FeishuHireHook(feishu_hire_conn_id=self.feishu_hire_conn_id)
            client = hook.client
        try:
            with permanent_feishu_errors_fail_the_task():
                account = self.call(hook, account_id)
        finally:
            client.close()
        status = account.get("status")
        self.log.info("Referral account %s %s (status %s)", account_id, self.doing, status)
        return {"referral_account_id": account_id, "status": status}

    def call(self, hook: Any, account_id: str) -> dict[str, Any]:
        raise NotImplementedError


class ReferralAccountDeactivateOperator(_ReferralAccountStatusOperator):
    """Deactivate a referral account (someone left): its balance can no longer be withdrawn.

    Withdraw first if the balance is to be paid. Deactivating an account that is already
    deactivated succeeds or is refused, depending on a behaviour Feishu's docs leave open;
    a refusal fails the task without retries.
    """

    doing = "deactivated"

    def call(self, hook: Any, account_id: str) -> dict[str, Any]:
        return dict(hook.deactivate_referral_account(account_id))


class ReferralAccountEnableOperator(_ReferralAccountStatusOperator):
    """Enable a deactivated referral account again, so its balance can be withdrawn."""

    template_fields: Sequence[str] = ("referral_account_id", "user_id_type", "feishu_hire_conn_id")
    doing = "enabled"

    def __init__(self, *, user_id_type: object = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.user_id_type = user_id_type

    def call(self, hook: Any, account_id: str) -> dict[str, Any]:
        with input_errors_fail_the_task():
            user_id_type = check_user_id_type(self.user_id_type)
        return dict(hook.enable_referral_account(account_id, user_id_type))
