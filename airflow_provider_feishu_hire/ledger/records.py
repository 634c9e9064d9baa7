"""What people and checks decided, kept for ever: payout previews and approvals, registrations, and
reconciliations with Feishu (with every disagreement)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal

from sqlalchemy import insert, select, union

from airflow_provider_feishu_hire.ledger.database import inserted_id, upsert
from airflow_provider_feishu_hire.ledger.model import (
    Approval,
    Mismatch,
    Reconciliation,
    RecordedReconciliation,
    TaskTry,
    cash_from_json,
    cash_json,
    now_iso,
)
from airflow_provider_feishu_hire.ledger.payroll import PayrollBatches
from airflow_provider_feishu_hire.ledger.schema import (
    approval,
    payout_preview,
    payout_preview_account,
    reconciliation,
    reconciliation_mismatch,
    registration,
    withdrawal,
)
from airflow_provider_feishu_hire.ledger.settlements import Settlements


class Records(Settlements, PayrollBatches):
    """Previews, approvals, registrations and reconciliations."""

    # -- four eyes before money moves ------------------------------------------------------------

    def record_preview(self, task: TaskTry, balances: Mapping[str, tuple[int, Mapping[str, Decimal]]]) -> int:
        """Keep what an approver will be shown: each account's points and cash per currency; returns its id."""
        with self._begin() as conn:
            preview_id = inserted_id(
                conn.execute(
                    insert(payout_preview).values(
                        dag_id=task.dag_id,
                        run_id=task.run_id,
                        run_generation=task.run_generation,
                        task_id=task.task_id,
                        previewed_at=now_iso(),
                    )
                )
            )
            if balances:
                conn.execute(
                    insert(payout_preview_account),
                    [{"payout_preview_id": preview_id, "referral_account_id": account, "point_bonus": points,
                      "cash_bonus": cash_json(cash)} for account, (points, cash) in balances.items()],
                )  # fmt: skip
        return preview_id

    def previewed(self, payout_preview_id: int, referral_account_id: str) -> tuple[int, dict[str, Decimal]] | None:
        """The points and cash an approver was shown for one account, or None when it was not shown."""
        p = payout_preview_account.c
        query = select(p.point_bonus, p.cash_bonus).where(
            p.payout_preview_id == payout_preview_id, p.referral_account_id == referral_account_id
        )
        with self._begin(write=False) as conn:
            found = conn.execute(query).first()
        return None if found is None else (int(found[0]), cash_from_json(found[1]))

    def record_approval(self, decision: Approval) -> None:
        """Keep a payout decision; every decision is kept, a cleared run's too."""
        with self._begin() as conn:
            conn.execute(
                insert(approval).values(
                    dag_id=decision.dag_id,
                    run_id=decision.run_id,
                    task_id=decision.task_id,
                    decision=decision.decision,
                    decided_by=decision.decided_by,
                    decided_at=decision.decided_at,
                    accounts=decision.accounts,
                    point_bonus=decision.point_bonus,
                    cash_bonus=json.dumps(decision.cash_bonus, sort_keys=True),
                    run_generation=decision.run_generation,
                    triggered_by=decision.triggered_by,
                    payout_preview_id=decision.payout_preview_id,
                )
            )

    def approvals(self, dag_id: str, run_id: str, run_generation: int | None = None) -> list[Approval]:
        """A DAG run's payout decisions (of one generation, if given), oldest first."""
        a = approval.c
        query = select(a.dag_id, a.run_id, a.task_id, a.decision, a.decided_by, a.decided_at, a.accounts,
                       a.point_bonus, a.cash_bonus, a.run_generation, a.triggered_by,
                       a.payout_preview_id).where(a.dag_id == dag_id, a.run_id == run_id)  # fmt: skip
        if run_generation is not None:
            query = query.where(a.run_generation == run_generation)
        with self._begin(write=False) as conn:
            found = conn.execute(query.order_by(a.id)).all()
        return [
            Approval(dag, run, task, decision, who, when, int(accounts), int(points), json.loads(cash),
                     int(generation), triggered, None if preview is None else int(preview))
            for dag, run, task, decision, who, when, accounts, points, cash, generation, triggered, preview in found
        ]  # fmt: skip

    # -- registrations -------------------------------------------------------------------------

    def registered_account(self, app_id: str, referrer: str) -> str | None:
        """The account id Feishu answered when ``referrer`` was registered through this ledger, if it was."""
        r = registration.c
        query = select(r.referral_account_id).where(r.app_id == app_id, r.referrer == referrer)
        with self._begin(write=False) as conn:
            found = conn.execute(query).scalar_one_or_none()
        return None if found is None else str(found)

    def known_accounts(self, app_id: str) -> list[str]:
        """Every referral account this ledger knows for one app and tenant: registered, or ever withdrawn.

        An account named by a balance event gets a withdrawal row (paid, skipped or held)
        when its run looks at it, so this is what a sweep re-reads when events were lost.
        """
        withdrawn = select(withdrawal.c.referral_account_id).where(withdrawal.c.app_id == app_id)
        registered = select(registration.c.referral_account_id).where(registration.c.app_id == app_id)
        with self._begin(write=False) as conn:
            found = conn.execute(union(withdrawn, registered).order_by("referral_account_id")).scalars()
            return [str(account) for account in found]

    def record_registration(self, app_id: str, referrer: str, referral_account_id: str) -> None:
        with self._begin() as conn:
            upsert(
                conn,
                registration,
                {"app_id": app_id, "referrer": referrer, "referral_account_id": referral_account_id,
                 "registered_at": now_iso()},
                update=["referral_account_id"],
            )  # fmt: skip

    # -- reconciliations with Feishu -------------------------------------------------------------

    def record_reconciliation(self, record: Reconciliation, *, dag_id: str, run_id: str, task_id: str) -> int:
        """Keep a reconciliation's window, our totals and every disagreement; returns its id."""
        with self._begin() as conn:
            record_id = inserted_id(
                conn.execute(
                    insert(reconciliation).values(
                        app_id=record.app_id,
                        start_trans_time=record.start_trans_time,
                        end_trans_time=record.end_trans_time,
                        accounts=len(record.ledger_points),
                        point_bonus=sum(record.ledger_points.values()),
                        mismatches=len(record.mismatches),
                        dag_id=dag_id,
                        run_id=run_id,
                        task_id=task_id,
                        reconciled_at=now_iso(),
                    )
                )
            )
            if record.mismatches:
                conn.execute(
                    insert(reconciliation_mismatch),
                    [{"reconciliation_id": record_id, "referral_account_id": m.referral_account_id,
                      "ledger_point_bonus": m.ledger_point_bonus, "feishu_point_bonus": m.feishu_point_bonus}
                     for m in record.mismatches],
                )  # fmt: skip
        return record_id

    def reconciliations(self, app_id: str) -> list[RecordedReconciliation]:
        """Every recorded reconciliation of ``app_id``, oldest first, with our totals then and its disagreements."""
        r, m = reconciliation.c, reconciliation_mismatch.c
        with self._begin(write=False) as conn:
            found = conn.execute(
                select(r.id, r.start_trans_time, r.end_trans_time, r.accounts, r.point_bonus, r.dag_id, r.run_id,
                       r.task_id, r.reconciled_at).where(r.app_id == app_id).order_by(r.id)
            ).all()  # fmt: skip
            mismatches: dict[int, list[Mismatch]] = {}
            for record_id, account, ours, theirs in conn.execute(
                select(m.reconciliation_id, m.referral_account_id, m.ledger_point_bonus, m.feishu_point_bonus)
                .join(reconciliation, r.id == m.reconciliation_id)
                .where(r.app_id == app_id)
                .order_by(m.reconciliation_id, m.referral_account_id)
            ):
                mismatches.setdefault(int(record_id), []).append(Mismatch(account, int(ours), int(theirs)))
        return [
            RecordedReconciliation(int(rid), app_id, int(start), int(end), int(accounts), int(points),
                                   tuple(mismatches.get(int(rid), ())), dag, run, task, when)
            for rid, start, end, accounts, points, dag, run, task, when in found
        ]  # fmt: skip
