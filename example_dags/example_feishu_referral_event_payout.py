"""Pay referral bonuses as they are confirmed: Feishu's balance events start the withdrawals, nobody triggers a run.

The asset ``feishu_referral_balances`` is watched by a trigger holding Feishu's event long
connection (no public endpoint needed). Every ``hire.referral_account.assets_update_v1``
event becomes an asset event, and this DAG runs on them: several events queued before a
run starts reach it together, one withdrawal per account. An event only names the account:
its balance is read from Feishu before anything is decided, so an empty one (typically the
event our own withdrawal raised) is skipped without sending. Asset events the trigger did
not store (posted through the REST API, or marked by another DAG) are ignored.

Why a re-delivered event is harmless: the order id of a withdrawal is derived from the
account and the balance it withdraws with its ``modify_time``, not from the DAG run. Feishu
delivers an event again (a lost acknowledgement, a reconnect), a new run starts, and it
meets the same order id in the payout ledger: the original withdrawal is carried over,
nothing is sent. A later credit has a later ``modify_time`` and another balance, hence a
new order id, so it is never mistaken for a repeat. ``max_active_runs=1`` keeps two runs from withdrawing
one account at once; the balance is read before sending, so a balance an earlier run
already emptied is skipped rather than withdrawn as zero. Each run also takes the events
newer than its own (Airflow leaves out those that arrive while it creates the run, until
some later event comes), so no credit waits for the next one.

Each run's export puts what the run paid into a payroll batch; a run that paid nothing (its
event was our own withdrawal's, or a repeat) makes no batch and announces nothing. A
withdrawal belongs to the run that sent it, so an event another run found empty and this
one paid is in this run's batch.

The connection ``feishu_hire_default`` is the app's (a self-built app subscribed to the
event, with the long connection as its subscription mode); the ledger is
``feishu_hire_ledger`` as for the other payout DAGs. The month-end payroll DAG still
sweeps whatever an event did not pay (say, a balance credited while the app was
unsubscribed).
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import Asset, AssetWatcher, dag, task

from airflow_provider_feishu_hire.operators.payroll import ReferralPayrollOperator
from airflow_provider_feishu_hire.operators.referral_account import ReferralBatchWithdrawOperator
from airflow_provider_feishu_hire.triggers.events import FeishuReferralAssetsTrigger

REFERRAL_BALANCES = Asset(
    "feishu_referral_balances",
    watchers=[
        AssetWatcher(
            name="feishu_referral_assets_update",
            trigger=FeishuReferralAssetsTrigger(feishu_hire_conn_id="feishu_hire_default"),
        )
    ],
)


@dag(
    dag_id="example_feishu_referral_event_payout",
    schedule=[REFERRAL_BALANCES],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["feishu", "payroll", "events", "example"],
    doc_md=__doc__,
    default_args={"retries": 3},
)
def example_feishu_referral_event_payout() -> None:
    @task(inlets=[REFERRAL_BALANCES], multiple_outputs=True)
    def changed_balances(**context: Any) -> dict[str, Any]:
        """The accounts the trigger's events name, each with the order id of its latest event's balance."""
        import logging

        from airflow_provider_feishu_hire.events import BadEvent, ReferralAssetsUpdate, latest_updates
        from airflow_provider_feishu_hire.withdrawal import derive_external_order_id

        events = list(context["triggering_asset_events"].get(REFERRAL_BALANCES, []))
        if events:
            # Airflow gives a run the events up to the moment its queue entry was made; events
            # that came while the run was being created lose their entry with it and would wait
            # for the next event. They are newer than this run's: take them here (a repeat is a replay).
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
    withdrawals = ReferralBatchWithdrawOperator(
        task_id="withdraw_changed_balances",
        referral_account_ids=changed["referral_account_ids"],
        external_order_ids=changed["external_order_ids"],
        check_balances=True,  # a balance an earlier run already emptied is skipped, not withdrawn as zero
    )
    # all_done: everyone paid reaches a payroll batch even when one account fails; the export then fails
    # naming that account (refusals are in the ledger), so the run is never green with someone unpaid.
    withdrawals >> ReferralPayrollOperator(
        task_id="export_payroll",
        referral_account_ids=changed["referral_account_ids"],
        external_order_ids=changed["external_order_ids"],  # a repeated event's order, paid by an earlier run
        trigger_rule="all_done",
    )


example_feishu_referral_event_payout()
