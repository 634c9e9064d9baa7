"""What every Feishu Hire task does around its work: its client and ledger, its try, its approval, its errors.

Only the standard library and ``airflow.sdk`` at import: every operator module imports
this one, so every DAG file pays for it on every parse.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_feishu_hire.client import FeishuClient
    from airflow_provider_feishu_hire.ledger import Approval, Ledger, TaskTry

FEISHU_BLUE = "#3370ff"


@contextmanager
def input_errors_fail_the_task() -> Iterator[None]:
    """Bad input cannot get better by waiting: fail at once, without Airflow's retries."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from None


@contextmanager
def permanent_feishu_errors_fail_the_task() -> Iterator[None]:
    """A refusal Feishu will repeat (unknown account, missing scope) fails at once; transient errors retry."""
    from airflow_provider_feishu_hire.exceptions import FeishuAPIError

    try:
        yield
    except FeishuAPIError as exc:
        if exc.retryable:
            raise
        raise AirflowFailException(str(exc)) from None


@contextmanager
def feishu_and_ledger(
    feishu_hire_conn_id: str, ledger_conn_id: str, **hook_options: Any
) -> Iterator[tuple[FeishuClient, Ledger]]:
    """A task's Feishu client, paced through its payout ledger, and the ledger; both closed when the task ends.

    A connection or ledger that cannot be used is a configuration error: the task fails
    at once, without Airflow's retries.
    """
    from airflow_provider_feishu_hire.hooks.feishu_hire import FeishuHireHook
    from airflow_provider_feishu_hire.hooks.ledger import FeishuHireLedgerHook

    with input_errors_fail_the_task():
        ledger_hook = FeishuHireLedgerHook(ledger_conn_id)
        try:
            ledger = ledger_hook.ledger
            client = FeishuHireHook(feishu_hire_conn_id=feishu_hire_conn_id, ledger=ledger, **hook_options).client
        except BaseException:
            ledger_hook.close()
            raise
    try:
        yield client, ledger
    finally:
        ledger_hook.close()
        client.close()


def task_try(context: Context, ledger: Ledger) -> TaskTry:
    """This try of this task as the ledger tells tries apart, with the generation of its DAG run.

    The generation comes from the run's ``clear_number`` and ``start_date``, which Airflow
    renews on every clear and starts again when a deleted run is created anew under the
    same ``run_id`` (see :meth:`Ledger.run_generation`).
    """
    from airflow_provider_feishu_hire.ledger import TaskTry

    ti, dag_run = context["ti"], context["dag_run"]
    started = dag_run.start_date or dag_run.run_after
    generation = ledger.run_generation(
        ti.dag_id, ti.run_id, int(getattr(dag_run, "clear_number", 0) or 0), started.isoformat()
    )
    return TaskTry(
        dag_id=ti.dag_id,
        run_id=ti.run_id,
        task_id=ti.task_id,
        map_index=-1 if ti.map_index is None else ti.map_index,
        try_number=ti.try_number,
        ti_id=str(ti.id),
        run_generation=generation,
    )


def run_approval(task: BaseOperator, ledger: Ledger, run: TaskTry, *, missing_ok: bool = False) -> Approval | None:
    """The decision this run's withdrawals must obey, read from the ledger, or None when none is asked for.

    A DAG with a payout approval step (``ReferralPayoutApprovalOperator``, wherever it is
    wired) sends nothing without an approval of this very run in the ledger: not when its
    tasks are cleared after a rejection, not under ``trigger_rule="all_done"``, not when the
    approval step is not upstream at all. A rejection is final for the run (a later approval
    does not undo it); a rejection, no decision, or an approval given by the user who
    triggered the run fails the task before anything is sent. "not required" (the run turned
    approval off, recorded with who triggered it) lets it through. ``missing_ok``: no
    person's decision yet (or nothing to pay) is not a refusal — for a withdrawal whose
    authority is the DAG's ``auto_approve_up_to`` policy, and for the payroll export.
    """
    from airflow_provider_feishu_hire.ledger import APPROVE, AUTO_APPROVED, NOT_REQUIRED, NOTHING_TO_PAY, REJECT
    from airflow_provider_feishu_hire.operators.approval import ReferralPayoutApprovalOperator

    dag = task.get_dag()
    if dag is None or not any(isinstance(t, ReferralPayoutApprovalOperator) for t in dag.tasks):
        return None
    # A person's decisions: the policy's own records (one per account it paid) decide nothing for the others.
    decisions = [d for d in ledger.approvals(run.dag_id, run.run_id, run.run_generation) if d.decision != AUTO_APPROVED]
    rejected = next((d for d in decisions if d.decision == REJECT), None)
    if rejected is not None:
        when = utc_text(rejected.decided_at)
        raise AirflowFailException(f"Rejected by {rejected.decided_by} at {when}: nothing paid")
    if not decisions or decisions[-1].decision == NOTHING_TO_PAY:
        if missing_ok:
            return None
        if not decisions:
            raise AirflowFailException(
                f"DAG {run.dag_id} asks for a payout approval and the ledger holds none for run {run.run_id}: "
                "nothing sent. Let the approval step decide first"
            )
        raise AirflowFailException(f"The preview of run {run.run_id} found nothing to pay: nothing sent")
    last = decisions[-1]
    if last.decision == NOT_REQUIRED:
        task.log.info("Approval was turned off for this run (triggered by %s)", last.triggered_by or "unknown")
        return None
    if last.decision != APPROVE:
        raise AirflowFailException(f"{last.decision} by {last.decided_by} at {utc_text(last.decided_at)}: nothing paid")
    if last.triggered_by is not None and last.decided_by == last.triggered_by:
        raise AirflowFailException(
            f"Approved by {last.decided_by}, who triggered the run: a second person must approve; nothing paid"
        )
    return last


def utc_text(moment: datetime | str) -> str:
    """A decision's time as a person reads it anywhere: UTC, to the second, zone named."""
    when = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
