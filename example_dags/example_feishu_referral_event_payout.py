"""Pay referral bonuses as they are confirmed: Feishu's balance events start the withdrawals, nobody triggers a run.

The asset ``feishu_referral_balances`` is watched by a trigger holding Feishu's event long
connection (no public endpoint needed). Every ``hire.referral_account.assets_update_v1``
event becomes an asset event, and this DAG runs on them: several events queued before a
run starts reach it together, one withdrawal per account. An event only names the account:
its balance is read from Feishu before anything is decided, so an empty one (typically the
event our own withdrawal raised) is skipped without sending. Asset events the trigger did
not store (posted through the REST API, or marked by another DAG) are ignored.

**The sweep.** The same DAG also runs every 15 minutes (``SWEEP_CRON``; the environment
variable ``FEISHU_HIRE_SWEEP_CRON`` overrides it, ``off`` leaves only the events) and then, having no events, looks at
every account the ledger knows for the app and tenant (registered, or ever withdrawn, which
includes every account an event ever named) under the same policy. A credit whose every
event was lost is paid by the next sweep: within 15 minutes, plus the sweep's balance reads
at Feishu's 10 a second (shared by every worker), plus one scheduler loop.

**The policy.** ``AUTO_APPROVE_UP_TO`` (per account, in this file: never a run parameter)
pays a balance within it at once and records the policy in the ledger as that account's
approval. A balance above it is held, previewed and waits for a person in the approval step,
as in the payroll DAGs (a second person if a person triggered the run); the approved
withdrawal then pays it under the same order id, bound to the amounts shown. A rejection is
final for the run. Runs go on beside one that waits for a person, so small credits are
never held up by a large one. Each run that finds a balance above the policy asks about it
(its event's run, and each sweep while it is unpaid); an ask lapses after ``APPROVAL_WAIT``
(one hour), failing its run and naming the account, which keeps the runs waiting at once to
about five. Approve any one ask: the others then find the balance withdrawn and skip it.

Why a re-delivered event is harmless: the order id of a withdrawal is derived from the
account and the balance it withdraws with its ``modify_time``, not from the DAG run. Feishu
delivers an event again (a lost acknowledgement, a reconnect), a new run starts, and it
meets the same order id in the payout ledger: the original withdrawal is carried over,
nothing is sent. A later credit has a later ``modify_time`` and another balance, hence a
new order id, so it is never mistaken for a repeat. Two runs looking at one account at once
are safe too: the same order id is idempotent at Feishu, another one finds the balance
already withdrawn. Each run also takes the events newer than its own (Airflow leaves out
those that arrive while it creates the run, until some later event comes), so no credit
waits for the next one.

The export's scope is the DAG: each export puts whatever this DAG paid and no batch holds
yet into a payroll batch, so a payment whose own run ended without an export (its approval
found nothing left to pay) is batched by the next run. A run that paid nothing makes no
batch and announces nothing.

The connection ``feishu_hire_default`` is the app's (a self-built app subscribed to the
event, with the long connection as its subscription mode); the ledger is
``feishu_hire_ledger`` as for the other payout DAGs.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Asset, AssetOrTimeSchedule, AssetWatcher, CronTriggerTimetable, dag, task

from airflow_provider_feishu_hire.defaults import DEFAULT_FEISHU_HIRE_CONN_ID, DEFAULT_LEDGER_CONN_ID
from airflow_provider_feishu_hire.operators.approval import (
    ReferralPayoutApprovalOperator,
    ReferralPayoutPreviewOperator,
)
from airflow_provider_feishu_hire.operators.payroll import ReferralPayrollOperator
from airflow_provider_feishu_hire.operators.referral_account import ReferralBatchWithdrawOperator
from airflow_provider_feishu_hire.triggers.events import FeishuReferralAssetsTrigger

# Paid at once, per account; anything more waits for a person. Cash limits are per currency:
# a currency without one always waits.
AUTO_APPROVE_UP_TO = {"point_bonus": 500, "cash_bonus": {"CNY": "200.00", "HKD": "200.00", "USD": "30.00"}}
# The sweep: how often every known account is looked at, whatever the events said ("off": never).
SWEEP_CRON = os.environ.get("FEISHU_HIRE_SWEEP_CRON", "*/15 * * * *")
APPROVAL_WAIT = timedelta(hours=1)

REFERRAL_BALANCES = Asset(
    "feishu_referral_balances",
    watchers=[
        AssetWatcher(
            name="feishu_referral_assets_update",
            trigger=FeishuReferralAssetsTrigger(feishu_hire_conn_id=DEFAULT_FEISHU_HIRE_CONN_ID),
        )
    ],
)

SCHEDULE = (
    [REFERRAL_BALANCES]
    if SWEEP_CRON == "off"
    else AssetOrTimeSchedule(timetable=CronTriggerTimetable(SWEEP_CRON, timezone="UTC"), assets=[REFERRAL_BALANCES])
)


@dag(
    dag_id="example_feishu_referral_event_payout",
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=16,
    tags=["feishu", "payroll", "events", "example"],
    doc_md=__doc__,
    default_args={"retries": 3},
)
def example_feishu_referral_event_payout() -> None:
    @task(inlets=[REFERRAL_BALANCES], multiple_outputs=True)
    def changed_balances(**context: Any) -> dict[str, Any]:
        """The accounts the trigger's events name, each with the order id of its latest event's balance.

        A run without events (the sweep's schedule, or a person's "trigger") looks at every
        account the ledger knows for the app and tenant instead, under order ids of its own.
        """
        import logging

        from airflow_provider_feishu_hire.events import BadEvent, ReferralAssetsUpdate, latest_updates
        from airflow_provider_feishu_hire.operators.task_helpers import feishu_and_ledger
        from airflow_provider_feishu_hire.withdrawal import derive_external_order_id

        events = list(context["triggering_asset_events"].get(REFERRAL_BALANCES, []))
        if not events:
            with feishu_and_ledger(DEFAULT_FEISHU_HIRE_CONN_ID, DEFAULT_LEDGER_CONN_ID) as (client, ledger):
                known = ledger.known_accounts(client.tenant_app_id)
            logging.getLogger(__name__).info("Sweep: looking at the %d accounts the ledger knows", len(known))
            return {"referral_account_ids": known, "external_order_ids": {}}
        # Airflow gives a run the events up to the moment its queue entry was made; events that
        # came while the run was being created lose their entry with it and would wait for the
        # next event. They are newer than this run's: take them here (a repeat is a replay).
        newest = max(event.timestamp for event in events)
        events += context["inlet_events"][REFERRAL_BALANCES].after(newest.isoformat())
        updates = []
        for event in events:
            extra = event.extra or {}
            # Only what our trigger stored: Airflow's triggerer marks those from_trigger; Airflow adds
            # from_rest_api to every event posted through its REST API (it cannot be left out), and a
            # task's outlet event names its DAG. Anything else could be forged by whoever may post events.
            if not extra.get("from_trigger") or extra.get("from_rest_api") or event.source_dag_id:
                logging.getLogger(__name__).warning("Ignored an asset event not stored by the trigger: %s", extra)
                continue
            try:
                updates.append(ReferralAssetsUpdate.from_payload((event.extra or {}).get("payload")))
            except BadEvent as exc:  # one unreadable event must not hold back everyone else's payout
                logging.getLogger(__name__).error("Skipped the asset event of %s: %s", event.timestamp, exc)
        latest = latest_updates(updates)
        # An event only says which account to look at: the withdrawal reads the balance from Feishu and
        # decides there (an empty one is skipped, nothing sent), whatever amounts the event carried.
        orders = {
            # The balance and its modify_time stand in for the run: a repeat of the event maps to this order id.
            u.referral_account_id: derive_external_order_id(
                dag_id=context["ti"].dag_id,
                run_id=f"assets_update-{u.balance_key}",
                task_id=context["ti"].task_id,
                referral_account_id=u.referral_account_id,
            )
            for u in latest
        }
        logging.getLogger(__name__).info("%d balance events, %d accounts to look at", len(updates), len(orders))
        return {"referral_account_ids": list(orders), "external_order_ids": orders}

    changed = changed_balances()
    at_once = ReferralBatchWithdrawOperator(
        task_id="withdraw_changed_balances",
        referral_account_ids=changed["referral_account_ids"],
        external_order_ids=changed["external_order_ids"],
        check_balances=True,  # a balance an earlier run already emptied is skipped, not withdrawn as zero
        auto_approve_up_to=AUTO_APPROVE_UP_TO,
    )

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def held_for_approval(summary: dict[str, Any]) -> dict[str, str]:
        """The accounts above the policy, with their order ids; none: the approval steps skip, the export runs."""
        return dict(summary["awaiting_approval"])

    held = held_for_approval(at_once.output)
    held_ids = "{{ ti.xcom_pull(task_ids='held_for_approval') | list | tojson }}"
    approved = ReferralBatchWithdrawOperator(
        task_id="withdraw_approved_balances",
        referral_account_ids=held_ids,
        external_order_ids=held,  # the held orders, paid as shown
        check_balances=True,
    )
    (
        held
        >> ReferralPayoutPreviewOperator(task_id="preview_payout", referral_account_ids=held_ids)
        >> ReferralPayoutApprovalOperator(task_id="approve_payout", response_timeout=APPROVAL_WAIT)
        >> approved
    )
    # all_done: everyone paid reaches a payroll batch even when one account fails; the export then fails
    # naming that account (refusals are in the ledger), so the run is never green with someone unpaid.
    [at_once, approved] >> ReferralPayrollOperator(
        task_id="export_payroll",
        referral_account_ids=changed["referral_account_ids"],
        external_order_ids=changed["external_order_ids"],  # a repeated event's order, paid by an earlier run
        scope="dag",  # and whatever a run of this DAG paid without reaching its own export
        trigger_rule="all_done",
    )


example_feishu_referral_event_payout()
