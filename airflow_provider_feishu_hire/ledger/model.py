"""What the ledger takes and hands back: plain values, no database.

A try of a task (:class:`TaskTry`), what it is about to send (:class:`Intent`), the right
to send it (:class:`Claim`), a withdrawal as recorded (:class:`LedgerRow`), a task's lease,
the records people and checks leave (approvals, settlements, reconciliations) and payroll
batches; and the errors that say why the ledger refused something.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from airflow_provider_feishu_hire.ledger.state_machine import REVIEW, SENDING
from airflow_provider_feishu_hire.withdrawal import Withdrawal, format_money

# Approval decisions: a person's two, a run that turned approval off, a preview that found nothing to pay.
APPROVE, REJECT, NOT_REQUIRED, NOTHING_TO_PAY = "Approve", "Reject", "not required", "nothing to pay"
AUTO_APPROVED = "auto-approved"  # one account's balance within the DAG's auto_approve_up_to policy
RUN_SCOPE, DAG_SCOPE, APP_SCOPE = "run", "dag", "app"
PAYROLL_SCOPES = (RUN_SCOPE, DAG_SCOPE, APP_SCOPE)


class LedgerError(ValueError):
    """The ledger cannot do what was asked, and waiting will not change it; the message says what to do."""


class OrderIdConflict(ValueError):
    """An ``external_order_id`` the ledger already holds for another account: refused before sending."""


class NeedsReview(LedgerError):
    """A withdrawal whose money may have moved in an amount the ledger cannot state."""


class Superseded(LedgerError):
    """This try of a task no longer holds its lease (a newer try, or a re-created run, took over): it sends nothing."""


@dataclass(frozen=True)
class TaskTry:
    """One try of one task instance, as the ledger tells tries apart.

    ``ti_id`` is Airflow's task-instance id, new for every try; ``run_generation`` is the
    incarnation of the DAG run (:meth:`Ledger.run_generation`). Outside Airflow both may
    be left at their defaults.
    """

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    try_number: int = 1
    ti_id: str | None = None
    run_generation: int = 1


@dataclass(frozen=True)
class Intent:
    """What is about to be sent, and by which try: recorded before the call."""

    external_order_id: str
    referral_account_id: str
    withdraw_bonus_type: Sequence[int]
    app_id: str
    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    try_number: int = 1
    ti_id: str | None = None
    run_generation: int = 1

    @property
    def task_try(self) -> TaskTry:
        return TaskTry(
            self.dag_id, self.run_id, self.task_id, self.map_index, self.try_number, self.ti_id, self.run_generation
        )

    @property
    def bonus_types(self) -> str:
        """The bonus types as the ledger stores them ("1,2")."""
        return ",".join(map(str, self.withdraw_bonus_type))


@dataclass(frozen=True)
class Claim:
    """The right to send ``intent`` once, or the recorded withdrawal if it was already paid.

    ``uncertain`` says an earlier send of this order id may have reached Feishu: a
    refusal now does not prove no money moved.
    """

    intent: Intent
    paid: Withdrawal | None = None
    attempt_id: int | None = None
    uncertain: bool = False


@dataclass
class LedgerRow:
    """One withdrawal as the ledger holds it."""

    external_order_id: str
    referral_account_id: str
    status: str
    dag_id: str
    run_id: str
    task_id: str
    sends: int
    error_code: int | None = None
    error_msg: str | None = None
    log_id: str | None = None
    withdrawal: Withdrawal | None = None
    raw_answer: str | None = None
    cash: dict[str, Decimal] = field(default_factory=dict)
    run_generation: int = 1
    payroll_batch_id: int | None = None

    def describe_problem(self) -> str:
        """Why this row is not settled, for a person: the facts first."""
        if self.status == REVIEW:
            return (
                f"account {self.referral_account_id} order {self.external_order_id} needs review "
                f"({self.error_msg or 'unreadable answer'})"
            )
        if self.status == SENDING:
            last = f", last error {self.error_code} {self.error_msg}" if self.error_msg else ""
            return f"account {self.referral_account_id} order {self.external_order_id} outcome unknown{last}"
        why = f" ({self.error_msg})" if self.error_msg else ""
        return f"account {self.referral_account_id} order {self.external_order_id} {self.status}{why}"


@dataclass(frozen=True)
class Lease:
    """The try holding a task instance's lease; ``held`` says whether it is the one that asked."""

    try_number: int
    run_generation: int
    held: bool

    def describe(self, task: TaskTry) -> str:
        """Why ``task`` may not send, for a person."""
        if self.run_generation > task.run_generation:
            return f"DAG run {task.run_id} was deleted and created again: this try of the deleted run sends nothing"
        if self.run_generation == task.run_generation and self.try_number > task.try_number:
            return f"try {self.try_number} of this task has started, so try {task.try_number} sends nothing"
        return (
            f"the ledger holds try {self.try_number} of task {task.task_id} in DAG run {task.run_id} from another "
            "task instance: the run was deleted and created again under the same run_id with the same start date, "
            "so it cannot be told from the deleted run and sends nothing. Trigger it under a new run_id"
        )


@dataclass(frozen=True)
class Mismatch:
    """An account whose withdrawn points Feishu and the ledger state differently."""

    referral_account_id: str
    ledger_point_bonus: int
    feishu_point_bonus: int

    def describe(self) -> str:
        return (
            f"account {self.referral_account_id}: ledger {self.ledger_point_bonus} points, "
            f"Feishu {self.feishu_point_bonus} points"
        )


@dataclass(frozen=True)
class Reconciliation:
    """One comparison with Feishu: the window (ms, both ends inclusive), what we sent, what disagreed."""

    app_id: str
    start_trans_time: int
    end_trans_time: int
    ledger_points: dict[str, int]
    mismatches: tuple[Mismatch, ...] = ()


@dataclass(frozen=True)
class RecordedReconciliation:
    """A reconciliation as the ledger kept it: the window, our totals then, and every disagreement."""

    id: int
    app_id: str
    start_trans_time: int
    end_trans_time: int
    accounts: int
    point_bonus: int
    mismatches: tuple[Mismatch, ...]
    dag_id: str
    run_id: str
    task_id: str
    reconciled_at: str


@dataclass(frozen=True)
class Approval:
    """A person's decision on a DAG run's payout, with the preview totals it was made on."""

    dag_id: str
    run_id: str
    task_id: str
    decision: str  # "Approve", "Reject", or "not required" when the DAG run turned approval off
    decided_by: str
    decided_at: str  # ISO 8601, UTC
    accounts: int
    point_bonus: int
    cash_bonus: dict[str, str]  # currency -> decimal string
    run_generation: int = 1
    triggered_by: str | None = None  # who triggered the run (Airflow's triggering_user_name): never the approver
    payout_preview_id: int | None = None  # the per-account amounts the approver was shown


@dataclass(frozen=True)
class Settlement:
    """A person's account of what became of an order: paid (with Feishu's amounts and time) or not paid."""

    id: int
    external_order_id: str
    paid: bool
    trans_time: int | None
    point_bonus: int | None
    cash_bonus: dict[str, Decimal]
    evidence: str
    proposed_by: str
    proposed_at: str
    confirmed_by: str | None = None
    confirmed_at: str | None = None


@dataclass(frozen=True)
class PayrollScope:
    """Which paid withdrawals an export may claim for a new payroll batch.

    ``run``: the withdrawals sent by one DAG run (the example DAGs'), including what a deleted
    earlier generation of the same run_id paid and no batch holds;
    ``dag``: by any run of a DAG; ``app``: by one Feishu app, whatever DAG sent them.
    Withdrawals already in a batch are never claimed again, whatever the scope.
    """

    kind: str
    dag_id: str | None = None
    run_id: str | None = None
    run_generation: int = 1
    app_id: str | None = None

    def __post_init__(self) -> None:
        needs = {RUN_SCOPE: ("dag_id", "run_id"), DAG_SCOPE: ("dag_id",), APP_SCOPE: ("app_id",)}
        if self.kind not in needs:
            raise ValueError(f"payroll scope {self.kind!r} is unknown: use one of {', '.join(PAYROLL_SCOPES)}")
        missing = [name for name in needs[self.kind] if not getattr(self, name)]
        if missing:
            raise ValueError(f"payroll scope {self.kind!r} needs {' and '.join(missing)}")

    @property
    def key(self) -> str:
        if self.kind == RUN_SCOPE:
            return f"{self.dag_id}/{self.run_id}#{self.run_generation}"
        return str(self.dag_id if self.kind == DAG_SCOPE else self.app_id)


@dataclass(frozen=True)
class PayrollBatch:
    """One payroll batch: the paid withdrawals one export claimed, for ever, and their totals."""

    id: int
    scope: str
    scope_key: str
    made_by: TaskTry
    created_at: str  # ISO 8601, UTC
    accounts: int
    point_bonus: int
    cash_bonus: dict[str, Decimal]
    members: tuple[LedgerRow, ...]

    def totals(self) -> dict[str, Any]:
        """JSON-safe totals: cash per currency as decimal strings."""
        return {
            "accounts": self.accounts,
            "withdrawals": len(self.members),
            "point_bonus": self.point_bonus,
            "cash_bonus": {currency: format_money(amount) for currency, amount in sorted(self.cash_bonus.items())},
        }


def cash_json(cash: Mapping[str, Decimal]) -> str:
    """Cash per currency as JSON of exact decimal strings."""
    return json.dumps({currency: format_money(amount) for currency, amount in cash.items()}, sort_keys=True)


def cash_from_json(text: str | None) -> dict[str, Decimal]:
    return {currency: Decimal(amount) for currency, amount in json.loads(text or "{}").items()}


def raw_json(data: object) -> str:
    """An answer's ``data`` as JSON text for the ledger, Decimals as they arrived."""
    return json.dumps(data, default=str, ensure_ascii=False, sort_keys=True)


def now_iso() -> str:
    """Now, UTC, as the ledger writes times: ISO 8601 to the millisecond."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
