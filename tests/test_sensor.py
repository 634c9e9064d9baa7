"""The referral balance sensor: its trigger against the sandbox over real HTTP, in asyncio, and its task side."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from airflow.sdk import PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_SECRET, DEFAULT_TENANT_KEY, FeishuSandbox
from airflow_provider_feishu_hire.sensors.referral_account import ReferralBalanceSensor
from airflow_provider_feishu_hire.triggers.referral_account import ReferralBalanceTrigger
from tests.conftest import connection_json

pytestmark = pytest.mark.lowest  # also run on the lowest supported Airflow (Makefile: pytest-lowest)

POINTS_AND_CASH = "7001000000000000001"  # 1200 points, 3000.00 CNY
POINTS_ONLY = "7001000000000000003"  # 450 points
DEACTIVATED = "7001000000000000009"
TICKET_VARIABLE = "feishu_hire_sensor_ticket"


def run_trigger(
    trigger: ReferralBalanceTrigger, sandbox: FeishuSandbox, while_waiting: Callable[[], None] | None = None
) -> dict[str, Any]:
    """The trigger's first event, as the triggerer would get it; ``while_waiting`` runs after its first balance read."""

    async def first_event() -> dict[str, Any]:
        events = trigger.run()
        pending = asyncio.ensure_future(anext(events))
        if while_waiting is not None:
            while sandbox.requests["assets"] == 0 and not pending.done():
                await asyncio.sleep(0.02)
            assert not pending.done(), f"fired before the balance changed: {pending.result().payload}"
            while_waiting()
        event = await asyncio.wait_for(pending, timeout=60)
        await events.aclose()
        return dict(event.payload)

    return asyncio.run(first_event())


def trigger(account: str = POINTS_ONLY, **threshold: str) -> ReferralBalanceTrigger:
    return ReferralBalanceTrigger(referral_account_id=account, poke_interval=1, **threshold)


def test_the_trigger_fires_once_the_balance_reaches_every_threshold(feishu_connection: FeishuSandbox) -> None:
    waiting = trigger(POINTS_AND_CASH, min_point_bonus="1000", min_cash_bonus="3000.50", currency_type="CNY")
    event = run_trigger(
        waiting, feishu_connection, lambda: feishu_connection.credit(POINTS_AND_CASH, cash_bonus={"CNY": "0.50"})
    )
    assert event == {
        "status": "success",
        "balance": {
            "referral_account_id": POINTS_AND_CASH,
            "point_bonus": 1200,
            "cash_bonus": [{"currency_type": "CNY", "amount": "3000.50"}],
        },
    }
    assert feishu_connection.requests["assets"] >= 2  # read before the credit, and after it
    assert feishu_connection.state()["ledger"] == []  # a sensor moves no money


def test_a_transient_error_is_read_again_at_the_next_poll(
    feishu_connection: FeishuSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    feishu_connection.inject("http_500", endpoint="assets")
    event = run_trigger(trigger(min_point_bonus="400"), feishu_connection)
    assert event["status"] == "success" and event["balance"]["point_bonus"] == 450
    assert "system error" in capsys.readouterr().out  # the trigger's log (structlog, to stdout)


@pytest.mark.parametrize(
    ("account", "expected"),
    [("7009999999999999999", "1002553"), (DEACTIVATED, "is deactivated")],
)
def test_an_account_that_cannot_be_waited_for_ends_the_trigger(
    feishu_connection: FeishuSandbox, account: str, expected: str
) -> None:
    event = run_trigger(trigger(account, min_point_bonus="1"), feishu_connection)
    assert event["status"] == "error"
    assert expected in event["message"] and account in event["message"]
    assert feishu_connection.requests["assets"] == 1  # not read again


def test_a_missing_scope_ends_the_trigger(monkeypatch: pytest.MonkeyPatch) -> None:
    with FeishuSandbox(rate_limits=False, scopes=()) as sandbox:
        monkeypatch.setenv("AIRFLOW_CONN_FEISHU_HIRE_DEFAULT", connection_json(sandbox.url))
        event = run_trigger(trigger(min_point_bonus="1"), sandbox)
    assert event["status"] == "error" and "99991672" in event["message"]


def test_the_trigger_serializes_ids_and_strings_only(feishu_connection: FeishuSandbox) -> None:
    waiting = trigger(POINTS_AND_CASH, min_point_bonus="1", min_cash_bonus="5", currency_type="cny")
    run_trigger(waiting, feishu_connection)  # the triggerer holds a token now
    classpath, kwargs = waiting.serialize()

    assert kwargs == {
        "referral_account_id": POINTS_AND_CASH,
        "min_point_bonus": "1",
        "min_cash_bonus": "5.00",
        "currency_type": "CNY",
        "poke_interval": 1.0,
        "feishu_hire_conn_id": "feishu_hire_default",
    }
    text = json.dumps(kwargs)
    assert DEFAULT_APP_SECRET not in text and not any(token in text for token in feishu_connection.issued_tokens)
    module, name = classpath.rsplit(".", 1)
    assert getattr(__import__(module, fromlist=[name]), name)(**kwargs).serialize() == (classpath, kwargs)


@pytest.fixture
def store_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[FeishuSandbox]:
    with FeishuSandbox(rate_limits=False, app_type="isv") as sandbox:
        extra = {"app_type": "isv", "tenant_key": DEFAULT_TENANT_KEY, "app_ticket_variable": TICKET_VARIABLE}
        monkeypatch.setenv("AIRFLOW_CONN_FEISHU_HIRE_DEFAULT", connection_json(sandbox.url, **extra))
        yield sandbox


def test_a_store_app_trigger_asks_for_a_new_app_ticket_and_picks_up_the_stored_one(
    store_app: FeishuSandbox,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    stale = "stale-ticket-0000000000000000"
    variable = f"AIRFLOW_VAR_{TICKET_VARIABLE.upper()}"
    monkeypatch.setenv(variable, stale)

    async def receiver_stores_the_pushed_ticket() -> None:
        while store_app.requests["app_ticket"] == 0:  # the trigger asked Feishu to push the ticket again
            await asyncio.sleep(0.02)
        monkeypatch.setenv(variable, store_app.app_ticket)

    async def both() -> dict[str, Any]:
        events = trigger(min_point_bonus="400").run()
        receiver = asyncio.ensure_future(receiver_stores_the_pushed_ticket())
        event = await asyncio.wait_for(anext(events), timeout=60)
        await events.aclose()
        await receiver
        return dict(event.payload)

    event = asyncio.run(both())
    assert event["status"] == "success" and event["balance"]["point_bonus"] == 450
    assert store_app.requests["app_ticket"] == 1 and store_app.requests["app_token"] == 1
    captured = capsys.readouterr()
    shown = caplog.text + captured.out + captured.err + json.dumps(event)
    assert repr(TICKET_VARIABLE) in shown and "app_ticket/resend" in shown
    secrets = [DEFAULT_APP_SECRET, stale, store_app.app_ticket, *store_app.issued_tokens, *store_app.issued_app_tokens]
    assert [secret for secret in secrets if secret in shown] == []


# -- the task side --------------------------------------------------------------------------------------


def sensor(**kwargs: Any) -> ReferralBalanceSensor:
    return ReferralBalanceSensor(task_id="wait_for_balance", poke_interval=1, **kwargs)


def test_the_sensor_defers_to_its_trigger_and_returns_the_balance(feishu_connection: FeishuSandbox) -> None:
    waiting = sensor(referral_account_id=POINTS_AND_CASH, min_cash_bonus=Decimal("3000"), currency_type="CNY")
    with pytest.raises(TaskDeferred) as deferred:
        waiting.execute(context={})  # type: ignore[arg-type]
    assert deferred.value.method_name == "execute_complete"
    assert isinstance(deferred.value.trigger, ReferralBalanceTrigger)
    assert deferred.value.trigger.serialize()[1]["min_cash_bonus"] == "3000.00"
    assert feishu_connection.requests["assets"] == 0  # the worker reads nothing: the triggerer does

    event = run_trigger(deferred.value.trigger, feishu_connection)
    balance = waiting.execute_complete(context={}, event=event)  # type: ignore[arg-type]
    assert balance["cash_bonus"] == [{"currency_type": "CNY", "amount": "3000.00"}]
    assert Decimal(balance["cash_bonus"][0]["amount"]) == Decimal("3000.00")


def test_an_error_event_fails_the_task_with_its_reason(feishu_connection: FeishuSandbox) -> None:
    waiting = sensor(referral_account_id=DEACTIVATED, min_point_bonus=1)
    with pytest.raises(TaskDeferred) as deferred:
        waiting.execute(context={})  # type: ignore[arg-type]
    event = run_trigger(deferred.value.trigger, feishu_connection)
    with pytest.raises(AirflowFailException, match="deactivated"):
        waiting.execute_complete(context={}, event=event)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_cash_bonus": 0.5, "currency_type": "CNY"}, "min_cash_bonus"),
        ({"min_cash_bonus": "0.001", "currency_type": "CNY"}, "min_cash_bonus"),
        ({"min_cash_bonus": "-5", "currency_type": "CNY"}, "min_cash_bonus"),
        ({"min_cash_bonus": "10"}, "currency_type"),
        ({"min_cash_bonus": "10", "currency_type": "yuan"}, "currency_type"),
        ({"min_point_bonus": "1.5"}, "min_point_bonus"),
        ({"min_point_bonus": "0"}, "min_point_bonus"),
        ({}, "min_point_bonus"),
        ({"referral_account_id": "70/../x", "min_point_bonus": "1"}, "referral_account_id"),
    ],
)
def test_bad_input_fails_before_deferring_and_names_the_field(
    feishu_connection: FeishuSandbox, kwargs: dict[str, Any], field: str
) -> None:
    waiting = sensor(**{"referral_account_id": POINTS_ONLY, **kwargs})
    with pytest.raises(AirflowFailException, match=field):
        waiting.execute(context={})  # type: ignore[arg-type]


def test_a_poke_interval_below_a_second_is_refused() -> None:
    with pytest.raises(ValueError, match="poke_interval"):
        ReferralBalanceSensor(task_id="too_fast", referral_account_id=POINTS_ONLY, min_point_bonus=1, poke_interval=0.1)


def test_without_deferring_the_sensor_pokes_with_the_hook(feishu_connection: FeishuSandbox) -> None:
    waiting = sensor(referral_account_id=POINTS_ONLY, min_point_bonus="500", deferrable=False)
    first = waiting.poke(context={})  # type: ignore[arg-type]
    assert isinstance(first, PokeReturnValue) and not first.is_done
    feishu_connection.credit(POINTS_ONLY, point_bonus=50)
    second = waiting.poke(context={})  # type: ignore[arg-type]
    assert isinstance(second, PokeReturnValue) and second.is_done
    assert second.xcom_value == {"referral_account_id": POINTS_ONLY, "point_bonus": 500, "cash_bonus": []}
    assert feishu_connection.requests["token"] == 1  # one hook, one token, for every poke


def test_without_deferring_a_deactivated_account_fails_the_task(feishu_connection: FeishuSandbox) -> None:
    waiting = sensor(referral_account_id=DEACTIVATED, min_point_bonus="1", deferrable=False)
    with pytest.raises(AirflowFailException, match="deactivated"):
        waiting.poke(context={})  # type: ignore[arg-type]
