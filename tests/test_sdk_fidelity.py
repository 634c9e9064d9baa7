"""Fidelity: Feishu's official Python SDK (``lark-oapi``) drives the sandbox, and our client agrees with it.

The sandbox and the client were written here from the same docs, so they could share a
misreading; the SDK's generated models were not. Every answer the sandbox gives must
parse into them with each field of the type the SDK declares, and the SDK must read the
same values our client returns, field by field. Both talk to one sandbox: where a call
changes state, the SDK makes it first and our client repeats it (a replayed
``external_order_id``, an idempotent status change, a second registration of the same
referrer), which the sandbox answers with the same order or account. Every test runs
as a custom (self-built) app and as a store (isv) app.

The SDK holds money as float; it is compared as ``Decimal(str(amount))``, so the SDK's
100.5 equals our exact ``Decimal("100.50")``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

lark = pytest.importorskip("lark_oapi")
from lark_oapi.api.auth.v3 import (  # noqa: E402
    CreateAppAccessTokenRequest,
    CreateAppAccessTokenRequestBody,
    CreateTenantAccessTokenRequest,
    CreateTenantAccessTokenRequestBody,
    InternalTenantAccessTokenRequest,
    InternalTenantAccessTokenRequestBody,
)
from lark_oapi.api.hire.v1 import (  # noqa: E402
    BonusAmount,
    CreateReferralAccountRequest,
    CreateReferralAccountRequestBody,
    DeactivateReferralAccountRequest,
    EnableReferralAccountRequest,
    EnableReferralAccountRequestBody,
    GetAccountAssetsReferralAccountRequest,
    Mobile,
    ReconciliationReferralAccountRequest,
    ReconciliationReferralAccountRequestBody,
    TradeDetail,
    WithdrawReferralAccountRequest,
    WithdrawReferralAccountRequestBody,
)
from lark_oapi.core.token import AccessTokenResponse  # noqa: E402

from airflow_provider_feishu_hire.client import FeishuClient  # noqa: E402
from airflow_provider_feishu_hire.exceptions import FeishuAPIError  # noqa: E402
from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_SECRET, FeishuSandbox  # noqa: E402
from tests.conftest import FAST_RETRY  # noqa: E402

TENANT_KEY = "fidelity_tenant_key"
UNKNOWN_ACCOUNT = "7999999999999999999"


class Apps:
    """One app on one sandbox, through the SDK and through our client."""

    def __init__(self, sandbox: FeishuSandbox) -> None:
        self.sandbox = sandbox
        self.isv = sandbox.app_type == "isv"
        builder = lark.Client.builder().app_id(sandbox.app_id).app_secret(DEFAULT_APP_SECRET).domain(sandbox.url)
        self.sdk = builder.app_type(lark.AppType.ISV if self.isv else lark.AppType.SELF).build()
        self.api = self.sdk.hire.v1.referral_account
        # A store app names the customer's tenant, and the app_ticket Feishu pushed, on each SDK call.
        self.option = (
            lark.RequestOption.builder().tenant_key(TENANT_KEY).app_ticket(sandbox.app_ticket).build()
            if self.isv
            else None
        )
        self.ours = FeishuClient(
            sandbox.app_id,
            DEFAULT_APP_SECRET,
            sandbox.url,
            retry=FAST_RETRY,
            app_type=sandbox.app_type,
            tenant_key=TENANT_KEY if self.isv else None,
            app_ticket=lambda: sandbox.app_ticket,
        )

    def tenant_access_token(self) -> str:
        """A tenant_access_token through the SDK's auth endpoints: one call for a custom app, two for a store app."""
        auth = self.sdk.auth.v3
        if not self.isv:
            body = InternalTenantAccessTokenRequestBody.builder().app_id(self.sandbox.app_id)
            request = InternalTenantAccessTokenRequest.builder().request_body(
                body.app_secret(DEFAULT_APP_SECRET).build()
            )
            return token_answer(auth.tenant_access_token.internal(request.build())).tenant_access_token
        body = CreateAppAccessTokenRequestBody.builder().app_id(self.sandbox.app_id).app_secret(DEFAULT_APP_SECRET)
        request = CreateAppAccessTokenRequest.builder().request_body(body.app_ticket(self.sandbox.app_ticket).build())
        app_token = token_answer(auth.app_access_token.create(request.build())).app_access_token
        body = CreateTenantAccessTokenRequestBody.builder().app_access_token(app_token).tenant_key(TENANT_KEY)
        request = CreateTenantAccessTokenRequest.builder().request_body(body.build())
        return token_answer(auth.tenant_access_token.create(request.build())).tenant_access_token

    # The SDK's request builders, one per endpoint; each returns the SDK's response.

    def register(self, mobile: str | None = None, email: str | None = None) -> Any:
        body = CreateReferralAccountRequestBody.builder()
        body = body.email(email) if email else body.mobile(Mobile.builder().code("86").number(mobile).build())
        return self.api.create(CreateReferralAccountRequest.builder().request_body(body.build()).build(), self.option)

    def get_account_assets(self, account_id: str, user_id_type: str | None = None) -> Any:
        request = GetAccountAssetsReferralAccountRequest.builder().referral_account_id(account_id)
        if user_id_type:
            request = request.user_id_type(user_id_type)
        return self.api.get_account_assets(request.build(), self.option)

    def withdraw(self, account_id: str, kinds: list[int], order_id: str) -> Any:
        body = WithdrawReferralAccountRequestBody.builder().withdraw_bonus_type(kinds).external_order_id(order_id)
        request = WithdrawReferralAccountRequest.builder().referral_account_id(account_id).request_body(body.build())
        return self.api.withdraw(request.build(), self.option)

    def deactivate(self, account_id: str) -> Any:
        request = DeactivateReferralAccountRequest.builder().referral_account_id(account_id).build()
        return self.api.deactivate(request, self.option)

    def enable(self, account_id: str) -> Any:
        body = EnableReferralAccountRequestBody.builder().referral_account_id(account_id).build()
        return self.api.enable(EnableReferralAccountRequest.builder().request_body(body).build(), self.option)

    def reconcile(self, start: str, end: str, totals: dict[str, int]) -> Any:
        details = [
            TradeDetail.builder()
            .account_id(account_id)
            .total_recharge_reward_info(BonusAmount.builder().point_bonus(points).build())
            .build()
            for account_id, points in totals.items()
        ]
        body = ReconciliationReferralAccountRequestBody.builder().start_trans_time(start).end_trans_time(end)
        request = ReconciliationReferralAccountRequest.builder().request_body(body.trade_details(details).build())
        return self.api.reconciliation(request.build(), self.option)


def token_answer(response: Any) -> Any:
    """A token answer as the SDK's token manager reads it.

    Feishu puts tokens beside code and msg, not in ``data``: the generated auth models'
    ``data`` stays empty, so the SDK's own token manager parses with AccessTokenResponse.
    """
    assert response.success(), (response.code, response.msg)
    answer = AccessTokenResponse(json.loads(response.raw.content))
    assert type(answer.expire) is int and answer.expire > 0
    assert answer.tenant_access_token or answer.app_access_token
    return answer


def parsed(response: Any) -> Any:
    """The ``data`` of an SDK answer Feishu accepted, as JSON-like data (see :func:`plain`)."""
    assert response.success(), (response.code, response.msg)
    assert response.data is not None, "the SDK parsed no data"
    return plain(response.data)


def plain(value: Any) -> Any:
    """An SDK model as JSON-like data, failing on any field not of the type the SDK declares for it.

    The SDK's parser keeps whatever scalar arrives (a dict where it declares str, say), so
    "it parsed" proves nothing until the types are checked. Floats become Decimal via str.
    Fields the SDK does not know are dropped by its parser: comparing the result with our
    client's dict catches those too.
    """
    if isinstance(value, list):
        return [plain(item) for item in value]
    declared_types = getattr(type(value), "_types", None)
    if declared_types is None:
        return value
    fields = {}
    for name, declared in declared_types.items():
        field = getattr(value, name)
        where = f"{type(value).__name__}.{name} = {field!r}"
        if field is None:
            continue
        if declared in (int, str):
            assert type(field) is declared, f"{where}; the SDK declares {declared.__name__}"
        elif declared is float:
            assert type(field) in (int, float), f"{where}; the SDK declares float"
            field = Decimal(str(field))
        fields[name] = plain(field)
    return fields


@pytest.fixture(params=["custom", "isv"])
def apps(request: pytest.FixtureRequest) -> Iterator[Apps]:
    # A fresh app id per test: the SDK caches tokens process-wide by app id, whatever the domain.
    app_id = f"cli_fidelity_{uuid.uuid4().hex[:12]}"
    with FeishuSandbox(rate_limits=False, app_id=app_id, app_type=request.param, tenant_key=TENANT_KEY) as sandbox:
        made = Apps(sandbox)
        with made.ours:
            yield made


def funded_account(sandbox: FeishuSandbox) -> str:
    """A registered referrer with 120 points, CNY 100.50 and USD 0.10 to withdraw."""
    account_id = str(sandbox.register(mobile={"code": "86", "number": "13800138000"})["account_id"])
    sandbox.credit(account_id, 120, {"CNY": "100.50", "USD": "0.10"})
    return account_id


def test_tenant_access_token(apps: Apps) -> None:
    """The sandbox hands both the same token, as Feishu does while a token is young, and accepts it."""
    token = apps.tenant_access_token()
    assert token == apps.ours.get_tenant_access_token()
    assert token in apps.sandbox.issued_tokens


@pytest.mark.parametrize(
    ("referrer", "user_id_type"),
    [({"mobile": "13900139000"}, "open_id"), ({"email": "referrer@example.com"}, "user_id")],
    ids=["mobile", "email"],
)
def test_register_and_get_account_assets(apps: Apps, referrer: dict[str, str], user_id_type: str) -> None:
    account = parsed(apps.register(**referrer))["account"]
    assert account["account_id"].isdigit() and account["status"] == 1
    assert account == apps.ours.register_referral_account(**referrer)  # the same referrer: the same account

    assets = parsed(apps.get_account_assets(account["account_id"], user_id_type))
    assert assets == apps.ours.get_account_assets(account["account_id"], user_id_type)
    shown = assets["account"]["referrer"]
    assert set(shown["name"]) == {"zh_cn", "en_us"} and all(shown["name"].values())
    assert shown["id"]
    if "mobile" in referrer:
        assert shown["mobile"] == "+86" + referrer["mobile"] and "email" not in shown
    else:
        assert shown["email"] == referrer["email"] and "mobile" not in shown


def test_withdraw(apps: Apps) -> None:
    account_id = funded_account(apps.sandbox)
    data = parsed(apps.withdraw(account_id, [1, 2], "fidelity-order-1"))
    assert data["external_order_id"] == "fidelity-order-1" and data["trans_time"].isdigit()
    assert data["withdrawal_details"] == {
        "point_bonus": 120,
        "cash_bonus": [
            {"currency_type": "CNY", "amount": Decimal("100.50")},
            {"currency_type": "USD", "amount": Decimal("0.10")},
        ],
    }
    assert data == apps.ours.withdraw_referral_account(account_id, [1, 2], "fidelity-order-1")  # a replay
    assert len(apps.sandbox.ledger) == 1  # the money moved once

    drained = parsed(apps.get_account_assets(account_id))
    assert drained["account"]["assets"]["confirmed_bonus"] == {"point_bonus": 0, "cash_bonus": []}
    assert drained == apps.ours.get_account_assets(account_id)


def test_deactivate_and_enable(apps: Apps) -> None:
    account_id = funded_account(apps.sandbox)
    deactivated = parsed(apps.deactivate(account_id))["account"]
    assert deactivated["status"] == 2 and deactivated["assets"]["confirmed_bonus"]["point_bonus"] == 120
    assert deactivated == apps.ours.deactivate_referral_account(account_id)
    enabled = parsed(apps.enable(account_id))["account"]
    assert enabled["status"] == 1
    assert enabled == apps.ours.enable_referral_account(account_id)


def test_reconciliation(apps: Apps) -> None:
    account_id = funded_account(apps.sandbox)
    trans_time = apps.ours.withdraw_referral_account(account_id, [1], "fidelity-order-2")["trans_time"]
    claimed = {account_id: 100, UNKNOWN_ACCOUNT: 5}
    failed = parsed(apps.reconcile("0", trans_time, claimed))["check_failed_list"]
    assert {(f["account_id"], f["total_withdraw_reward_info"]["point_bonus"]) for f in failed} == {
        (account_id, 120),
        (UNKNOWN_ACCOUNT, 0),
    }
    assert failed == apps.ours.reconcile_referral_accounts("0", trans_time, claimed)


REFUSED_CALLS: dict[str, tuple[Callable[[Apps, str], Any], Callable[[FeishuClient, str], Any]]] = {
    "get_account_assets": (Apps.get_account_assets, FeishuClient.get_account_assets),
    "withdraw": (
        lambda apps, account_id: apps.withdraw(account_id, [1, 2], "fidelity-refused"),
        lambda ours, account_id: ours.withdraw_referral_account(account_id, [1, 2], "fidelity-refused"),
    ),
    "deactivate": (Apps.deactivate, FeishuClient.deactivate_referral_account),
    "enable": (Apps.enable, FeishuClient.enable_referral_account),
}


@pytest.mark.parametrize(
    ("endpoint", "account", "code"),
    [
        *((endpoint, "unknown", 1002553) for endpoint in REFUSED_CALLS),
        ("withdraw", "deactivated", 1002555),
    ],
)
def test_refusals_read_alike(apps: Apps, endpoint: str, account: str, code: int) -> None:
    """The SDK's code and msg of a refusal are our FeishuAPIError's code and msg."""
    account_id = UNKNOWN_ACCOUNT
    if account == "deactivated":
        account_id = funded_account(apps.sandbox)
        apps.sandbox.deactivate(account_id)
    sdk_call, our_call = REFUSED_CALLS[endpoint]
    response = sdk_call(apps, account_id)
    assert not response.success()
    with pytest.raises(FeishuAPIError) as refused:
        our_call(apps.ours, account_id)
    assert (response.code, response.msg, response.raw.status_code) == (
        code,
        refused.value.msg,
        refused.value.http_status,
    )
    assert refused.value.code == code
    assert apps.sandbox.ledger == []  # a refused withdrawal moved nothing
