"""Two customer tenants of one store (isv) app share a ledger and never answer for each other.

A store app has one ``app_id`` for every company that installs it; each company is a
tenant (``tenant_key``) with its own referrers, balances and payouts. Here each tenant is a
sandbox of its own (same app, same secret, another tenant_key), both talking to one ledger:
registrations, order ids, payroll batches of the app scope and reconciliations stay apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from airflow_provider_feishu_hire.client import FeishuClient
from airflow_provider_feishu_hire.ledger import APP_SCOPE, Intent, Ledger, PayrollScope, TaskTry
from airflow_provider_feishu_hire.payout import withdraw_batch
from airflow_provider_feishu_hire.reconciliation import reconcile
from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_ID, DEFAULT_APP_SECRET, Account, FeishuSandbox
from airflow_provider_feishu_hire.withdrawal import derive_external_order_id
from tests.conftest import FAST_RETRY

ACCOUNT = "7900000000000000777"  # the same account id in both companies: ids are per tenant
RUN = TaskTry("payroll", "manual__1", "withdraw")


@pytest.fixture
def tenants() -> Iterator[tuple[FeishuSandbox, FeishuSandbox]]:
    with (
        FeishuSandbox([Account(ACCOUNT, 10)], rate_limits=False, app_type="isv", tenant_key="company_a") as a,
        FeishuSandbox([Account(ACCOUNT, 20, {"CNY": Decimal("2.00")})], rate_limits=False, app_type="isv",
                      tenant_key="company_b") as b,
    ):  # fmt: skip
        yield a, b


def client_of(sandbox: FeishuSandbox) -> FeishuClient:
    return FeishuClient(DEFAULT_APP_ID, DEFAULT_APP_SECRET, sandbox.url, retry=FAST_RETRY, app_type="isv",
                        tenant_key=sandbox.tenant_key, app_ticket=lambda: sandbox.app_ticket)  # fmt: skip


def intent_for(client: FeishuClient, account: str) -> Intent:
    order = derive_external_order_id(
        dag_id=RUN.dag_id, run_id=RUN.run_id, task_id=RUN.task_id, referral_account_id=account,
        tenant_key=client.tenant_key,
    )  # fmt: skip
    return Intent(order, account, (1, 2), client.tenant_app_id, RUN.dag_id, RUN.run_id, RUN.task_id)


def test_one_store_app_two_tenants_one_ledger_nothing_crosses_over(
    ledger: Ledger, tenants: tuple[FeishuSandbox, FeishuSandbox]
) -> None:
    a, b = tenants
    with client_of(a) as company_a, client_of(b) as company_b:
        assert company_a.tenant_app_id != company_b.tenant_app_id

        # Registration: the referrer is registered in A; B must ask its own Feishu, not reuse A's id.
        ledger.record_registration(company_a.tenant_app_id, "li.lei@example.com", "7900000000000000777")
        assert ledger.registered_account(company_b.tenant_app_id, "li.lei@example.com") is None

        # The same DAG run pays the same account id in both companies: two withdrawals, one per tenant.
        withdraw_batch(company_a, ledger, [ACCOUNT], intent_for=lambda acc: intent_for(company_a, acc))
        withdraw_batch(company_b, ledger, [ACCOUNT], intent_for=lambda acc: intent_for(company_b, acc))
        assert [e["withdrawal_details"]["point_bonus"] for e in a.state()["ledger"]] == [10]
        assert [e["withdrawal_details"]["point_bonus"] for e in b.state()["ledger"]] == [20]
        assert intent_for(company_a, ACCOUNT).external_order_id != intent_for(company_b, ACCOUNT).external_order_id

        # Payroll of the app scope: each tenant's batch holds its own company's payment only.
        batch_a = ledger.make_payroll_batch(PayrollScope(APP_SCOPE, app_id=company_a.tenant_app_id), RUN)
        batch_b = ledger.make_payroll_batch(PayrollScope(APP_SCOPE, app_id=company_b.tenant_app_id), RUN)
        assert batch_a is not None and batch_b is not None
        assert (batch_a.point_bonus, batch_a.cash_bonus) == (10, {})
        assert (batch_b.point_bonus, batch_b.cash_bonus) == (20, {"CNY": Decimal("2.00")})

        # Reconciliation sends each tenant's own totals to its own Feishu.
        times = [int(s.state()["ledger"][0]["trans_time"]) for s in (a, b)]
        window = (min(times) - 1000, max(times) + 1000)
        assert reconcile(company_a, ledger, *window).ledger_points == {ACCOUNT: 10}
        assert reconcile(company_b, ledger, *window).ledger_points == {ACCOUNT: 20}
        assert (a.requests["reconciliation"], b.requests["reconciliation"]) == (1, 1)
