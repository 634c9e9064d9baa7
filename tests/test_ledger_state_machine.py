"""The withdrawal state machine, exhaustively: every status × every outcome, through the ledger's own API,
on every database; the table in code is the one in README."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from airflow_provider_feishu_hire.exceptions import Reach
from airflow_provider_feishu_hire.ledger import (
    NEEDS_APPROVAL,
    PAID,
    REJECTED,
    REVIEW,
    SENDING,
    SKIPPED,
    STATUSES,
    TRANSITIONS,
    Claim,
    Intent,
    Ledger,
    LedgerError,
    Outcome,
)
from airflow_provider_feishu_hire.ledger.state_machine import failure_outcome, markdown_table
from airflow_provider_feishu_hire.withdrawal import Withdrawal

pytestmark = pytest.mark.lowest  # also run on the lowest supported Airflow (Makefile: pytest-lowest)

ACCOUNT, APP = "7001000000000000001", "cli_app"


def intent(order: str, try_number: int) -> Intent:
    return Intent(order, ACCOUNT, (1, 2), APP, "payroll", "run", "withdraw", try_number=try_number)


def reach(ledger: Ledger, order: str, status: str) -> Claim:
    """A row in ``status`` through the API a payout uses; the claim that got it there (or an unsent one)."""
    first = intent(order, 1)
    if status == SKIPPED:
        assert ledger.skip(first, "nothing to withdraw")
        return Claim(first)
    if status == NEEDS_APPROVAL:
        assert ledger.hold(first, "above the approval")
        return Claim(first)
    claim = ledger.claim(first)
    if status == PAID:
        ledger.record_paid(claim, Withdrawal(ACCOUNT, order, 1_700_000_000_000, 5, {"CNY": Decimal("1.05")}))
    elif status == REJECTED:
        ledger.record_failure(claim, code=1002001, msg="refused", log_id=None, retryable=False, reach=Reach.REFUSED)
    elif status == REVIEW:
        ledger.record_unreadable(claim, '{"point_bonus": "x"}', "point_bonus is not a number")
    assert (ledger.get(order) or pytest.fail(order)).status == status
    return claim


def apply(ledger: Ledger, settler: Ledger, order: str, claim: Claim, outcome: Outcome) -> None:
    """``outcome`` happening to the row, through the ledger's API (try 2 when a new try does it)."""
    again = intent(order, 2)
    row = ledger.get(order)
    sending = row is not None and row.status == SENDING
    fail: Callable[..., object] = lambda **kw: ledger.record_failure(claim, code=1, msg="no", log_id=None, **kw)  # noqa: E731
    settle = lambda paid: settler.confirm_settlement(  # noqa: E731
        settler.propose_settlement(order, paid=paid, evidence="Feishu's record", proposed_by="a", trans_time=1,
                                   point_bonus=1, cash_bonus={"CNY": Decimal("0.01")}).id, "b",
    )  # fmt: skip
    actions: dict[Outcome, Callable[[], object]] = {
        Outcome.SEND: lambda: ledger.claim(again),
        Outcome.EMPTY_BALANCE: lambda: ledger.skip(again, "empty"),
        Outcome.BALANCE_REFUSED: lambda: ledger.refuse(again, 1002001, "refused"),
        Outcome.OVER_APPROVAL: lambda: ledger.hold(again, "above"),
        Outcome.PAID: lambda: ledger.record_paid(claim, Withdrawal(ACCOUNT, order, 1_700_000_000_001, 9, {})),
        Outcome.UNREADABLE: lambda: ledger.record_unreadable(claim, "{}", "empty"),
        Outcome.TRANSIENT: lambda: fail(retryable=True, reach=Reach.UNKNOWN),
        Outcome.REFUSED: lambda: fail(retryable=False, reach=Reach.REFUSED),
        Outcome.REFUSED_WHILE_IN_FLIGHT: lambda: (
            ledger.claim(again) if sending else None,  # another send out
            fail(retryable=False, reach=Reach.REFUSED),
        ),
        Outcome.REFUSED_AFTER_UNKNOWN: lambda: fail(retryable=False, reach=Reach.REFUSED_AFTER_UNKNOWN),
        Outcome.NOT_REACHED_AFTER_SEND: lambda: fail(retryable=False, reach=Reach.NOT_SENT_AFTER_UNKNOWN),
        Outcome.SETTLED_PAID: lambda: settle(True),
        Outcome.SETTLED_NOT_PAID: lambda: settle(False),
    }
    actions[outcome]()


def test_the_table_covers_every_status_and_outcome() -> None:
    assert set(TRANSITIONS) == set(itertools.product(STATUSES, Outcome))
    assert set(TRANSITIONS.values()) <= {*STATUSES, None}


def test_failures_are_classified_as_the_table_names_them() -> None:
    assert failure_outcome(retryable=True, reach=Reach.REFUSED, in_flight=True, unknown=True) is Outcome.TRANSIENT
    assert failure_outcome(retryable=False, reach=Reach.REFUSED, in_flight=True, unknown=True) is (
        Outcome.REFUSED_WHILE_IN_FLIGHT
    )
    assert failure_outcome(retryable=False, reach=Reach.REFUSED, in_flight=False, unknown=True) is (
        Outcome.REFUSED_AFTER_UNKNOWN
    )
    assert failure_outcome(retryable=False, reach=Reach.REFUSED, in_flight=False, unknown=False) is Outcome.REFUSED
    assert failure_outcome(retryable=False, reach=Reach.NOT_SENT, in_flight=False, unknown=True) is (
        Outcome.NOT_REACHED_AFTER_SEND
    )
    assert failure_outcome(retryable=False, reach=Reach.NOT_SENT, in_flight=False, unknown=False) is Outcome.REFUSED


@pytest.mark.parametrize("status", STATUSES)
def test_every_outcome_moves_a_row_as_the_table_says(ledger: Ledger, status: str) -> None:
    # Settling a sending row needs its sends to be past answering: a second view of the ledger where they are.
    with Ledger(ledger._connect, ledger.dialect, in_flight_seconds=0) as settler:
        for number, outcome in enumerate(Outcome):
            order = f"74{STATUSES.index(status)}{number:02d}0000000000001"
            claim = reach(ledger, order, status)
            expected = TRANSITIONS[(status, outcome)]
            if expected is None:
                with pytest.raises(LedgerError):
                    apply(ledger, settler, order, claim, outcome)
                expected = status  # refused: unchanged
            else:
                apply(ledger, settler, order, claim, outcome)
            row = ledger.get(order)
            assert row is not None and row.status == expected, f"{status} × {outcome.name}"


def test_readme_shows_the_table_of_the_code() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert markdown_table() in readme
