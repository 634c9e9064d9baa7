"""The payout ledger on every database it supports: what a payments engineer relies on.

Every test takes the ``ledger`` fixture, so it runs against a SQLite file and a real
PostgreSQL database. Facts are read back through the ledger's own API (often a second
``Ledger``, as another worker would) or through plain SQL on a connection of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from airflow_provider_feishu_hire.exceptions import Reach
from airflow_provider_feishu_hire.ledger import (
    PAID,
    REJECTED,
    REVIEW,
    SENDING,
    SKIPPED,
    Claim,
    Intent,
    Ledger,
    LedgerError,
    LedgerRow,
    NeedsReview,
    OrderIdConflict,
)
from airflow_provider_feishu_hire.ledger.migrations import PRE_ALEMBIC_REFUSAL, VERSION_TABLE, head
from airflow_provider_feishu_hire.withdrawal import CASH, POINTS, Withdrawal
from tests.conftest import ledger_connection, ledger_sql

pytestmark = pytest.mark.lowest  # also run on the lowest supported Airflow (Makefile: pytest-lowest)

ACCOUNT = "7001000000000000001"
OTHER_ACCOUNT = "7001000000000000002"
ORDER = "7412589630258741001"
DAG_ID = "feishu_referral_payroll"
RUN_ID = "scheduled__2025-06-01T00:00:00+00:00"
TASK_ID = "withdraw_referral_accounts"
TRANS_TIME = 1_748_736_000_123  # 2025-06-01T00:00:00.123Z, in ms


def intent(
    order_id: str = ORDER,
    account: str = ACCOUNT,
    *,
    dag_id: str = DAG_ID,
    run_id: str = RUN_ID,
    task_id: str = TASK_ID,
    map_index: int = -1,
    try_number: int = 1,
) -> Intent:
    return Intent(
        external_order_id=order_id,
        referral_account_id=account,
        withdraw_bonus_type=[POINTS, CASH],
        app_id="cli_a1b2c3d4e5f6a7b8",
        dag_id=dag_id,
        run_id=run_id,
        task_id=task_id,
        map_index=map_index,
        try_number=try_number,
    )


def withdrawal(
    order_id: str = ORDER,
    account: str = ACCOUNT,
    *,
    trans_time: int = TRANS_TIME,
    points: int = 1200,
    cash: dict[str, Decimal] | None = None,
) -> Withdrawal:
    return Withdrawal(
        referral_account_id=account,
        external_order_id=order_id,
        trans_time=trans_time,
        point_bonus=points,
        cash_bonus={"CNY": Decimal("1288.88"), "USD": Decimal("0.10")} if cash is None else cash,
    )


query = ledger_sql  # plain SQL with ? placeholders, committed: what any other process would see


def attempts(ledger: Ledger, order_id: str = ORDER) -> list[tuple[Any, ...]]:
    """(try_number, outcome, finished) of every attempt on an order id, oldest first."""
    return query(
        ledger,
        "SELECT try_number, outcome, finished_at IS NOT NULL FROM feishu_hire_withdrawal_attempt "
        "WHERE external_order_id = ? ORDER BY id",
        order_id,
    )


def attempt_count(ledger: Ledger, order_id: str = ORDER) -> int:
    [(count,)] = query(
        ledger, "SELECT count(*) FROM feishu_hire_withdrawal_attempt WHERE external_order_id = ?", order_id
    )
    return int(count)


def cash_row_count(ledger: Ledger, order_id: str = ORDER) -> int:
    [(count,)] = query(ledger, "SELECT count(*) FROM feishu_hire_withdrawal_cash WHERE external_order_id = ?", order_id)
    return int(count)


def status(ledger: Ledger, order_id: str = ORDER) -> str:
    row = ledger.get(order_id)
    assert row is not None, f"no ledger row for {order_id}"
    return row.status


@contextmanager
def second_ledger(ledger: Ledger) -> Iterator[Ledger]:
    """Another process's view: a separate Ledger with its own connections to the same database."""
    other = Ledger(ledger._connect, ledger.dialect)
    try:
        yield other
    finally:
        other.close()


# -- claim: the intent is on record before anything is sent ----------------------------------------


def test_claim_commits_a_sending_row_that_another_process_sees(ledger: Ledger) -> None:
    claim = ledger.claim(intent(map_index=3))

    assert claim.paid is None and claim.attempt_id is not None and claim.uncertain is False
    with second_ledger(ledger) as other:
        row = other.get(ORDER)
    assert row is not None
    assert (row.status, row.referral_account_id, row.dag_id, row.run_id, row.task_id, row.sends) == (
        SENDING,
        ACCOUNT,
        DAG_ID,
        RUN_ID,
        TASK_ID,
        1,
    )
    assert query(
        ledger,
        "SELECT status, referral_account_id, dag_id, run_id, task_id, map_index FROM feishu_hire_withdrawal "
        "WHERE external_order_id = ?",
        ORDER,
    ) == [(SENDING, ACCOUNT, DAG_ID, RUN_ID, TASK_ID, 3)]


def test_get_of_an_unknown_order_id_is_none(ledger: Ledger) -> None:
    assert ledger.get("7412589630258749999") is None
    assert ledger.rows() == []


# -- one order id, one account ----------------------------------------------------------------------


@pytest.mark.parametrize("held_by", ["claim", "skip"])
def test_order_id_of_another_account_is_refused_and_the_row_is_untouched(ledger: Ledger, held_by: str) -> None:
    if held_by == "claim":
        ledger.claim(intent())
    else:
        assert ledger.skip(intent(), "nothing to withdraw")
    before = ledger.get(ORDER)
    attempts_before = attempt_count(ledger)

    with pytest.raises(OrderIdConflict) as on_claim:
        ledger.claim(intent(account=OTHER_ACCOUNT, try_number=2))
    with pytest.raises(OrderIdConflict) as on_skip:
        ledger.skip(intent(account=OTHER_ACCOUNT, try_number=2), "nothing to withdraw")

    for raised in (on_claim.value, on_skip.value):
        assert isinstance(raised, ValueError)
        assert ACCOUNT in str(raised) and OTHER_ACCOUNT in str(raised) and ORDER in str(raised)
    assert ledger.get(ORDER) == before
    assert attempt_count(ledger) == attempts_before
    assert query(ledger, "SELECT count(*) FROM feishu_hire_withdrawal") == [(1,)]


# -- paid: exact money, final -----------------------------------------------------------------------

EXACT_CASH = {
    "USD": Decimal("0.10"),
    "CNY": Decimal("1288.88"),
    "KWD": Decimal("0.105"),
    "IDR": Decimal("12345678901234.56"),
}


def test_record_paid_then_claim_returns_the_exact_withdrawal(ledger: Ledger) -> None:
    paid = withdrawal(points=1200, cash=EXACT_CASH)
    claim = ledger.claim(intent())
    ledger.record_paid(claim, paid)

    again = ledger.claim(intent(try_number=2))

    assert again.paid is not None and again.paid == paid
    assert again.paid.trans_time == TRANS_TIME and again.paid.point_bonus == 1200
    assert again.attempt_id is None  # nothing is sent again, so no attempt is recorded
    assert attempt_count(ledger) == 1
    cash = dict(again.paid.cash_bonus)
    assert cash == EXACT_CASH
    assert all(isinstance(amount, Decimal) for amount in cash.values())
    assert (str(cash["USD"]), str(cash["CNY"]), str(cash["IDR"])) == ("0.10", "1288.88", "12345678901234.56")
    assert str(cash["KWD"]) == "0.105"
    with second_ledger(ledger) as other:
        row = other.get(ORDER)
    assert row is not None and row.status == PAID and row.withdrawal == paid
    assert {currency: str(amount) for currency, amount in row.cash.items()} == {
        currency: str(amount) for currency, amount in EXACT_CASH.items()
    }


def test_money_is_stored_as_exact_decimal_never_a_float(ledger: Ledger) -> None:
    ledger.record_paid(ledger.claim(intent()), withdrawal(cash=EXACT_CASH))

    if ledger.dialect == "sqlite":
        types = query(ledger, "SELECT DISTINCT typeof(amount) FROM feishu_hire_withdrawal_cash")
        assert types == [("text",)]
        stored = dict(query(ledger, "SELECT currency_type, amount FROM feishu_hire_withdrawal_cash"))
        assert stored == {currency: str(amount) for currency, amount in EXACT_CASH.items()}
    else:  # an exact decimal column: PostgreSQL's NUMERIC keeps each amount's scale, MySQL's needs one
        [(kind, precision, scale)] = query(
            ledger,
            "SELECT data_type, numeric_precision, numeric_scale FROM information_schema.columns "
            "WHERE table_name = 'feishu_hire_withdrawal_cash' AND column_name = 'amount' AND table_schema = "
            + ("DATABASE()" if ledger.dialect == "mysql" else "current_schema()"),
        )
        assert (str(kind).lower(), precision, scale) in {("numeric", None, None), ("decimal", 38, 12)}
        stored = dict(query(ledger, "SELECT currency_type, amount FROM feishu_hire_withdrawal_cash"))
        assert all(type(amount) is Decimal for amount in stored.values())
        assert stored == EXACT_CASH


def test_points_only_withdrawal_reads_back_with_no_cash(ledger: Ledger) -> None:
    paid = withdrawal(points=300, cash={})
    ledger.record_paid(ledger.claim(intent()), paid)

    assert ledger.claim(intent(try_number=2)).paid == paid
    assert cash_row_count(ledger) == 0


def test_paid_is_final(ledger: Ledger) -> None:
    paid = withdrawal()
    claim = ledger.claim(intent())
    ledger.record_paid(claim, paid)

    ledger.record_failure(claim, code=1002001, msg="refused", log_id="log-1", retryable=False, reach=Reach.REFUSED)
    assert status(ledger) == PAID
    ledger.record_failure(claim, code=None, msg="read timed out", log_id=None, retryable=True, reach=Reach.UNKNOWN)
    assert status(ledger) == PAID
    ledger.record_unreadable(claim, '{"trans_time": null}', "trans_time None is not milliseconds")
    assert status(ledger) == PAID
    assert not ledger.skip(intent(try_number=2), "nothing to withdraw")  # the zero balance is our own payment

    ledger.record_paid(claim, paid)  # a zombie try recording the same answer again
    zombie = ledger.claim(intent(try_number=3))
    assert zombie.paid == paid
    ledger.record_paid(zombie, paid)

    row = ledger.get(ORDER)
    assert row is not None
    assert (row.status, row.withdrawal, row.raw_answer, row.error_code, row.error_msg) == (PAID, paid, None, None, None)
    assert cash_row_count(ledger) == len(paid.cash_bonus)


# -- failures -----------------------------------------------------------------------------------------


def test_retryable_failure_keeps_the_row_sending(ledger: Ledger) -> None:
    claim = ledger.claim(intent())

    left = ledger.record_failure(
        claim, code=None, msg="read timed out", log_id="20250601-abc", retryable=True, reach=Reach.UNKNOWN
    ).status

    assert left == SENDING
    row = ledger.get(ORDER)
    assert row is not None
    assert (row.status, row.error_msg, row.log_id) == (SENDING, "read timed out", "20250601-abc")
    assert not ledger.skip(intent(try_number=2), "nothing to withdraw")  # Feishu may have paid: never settle by zero
    retry = ledger.claim(intent(try_number=2))
    assert retry.paid is None and retry.uncertain is True


def test_permanent_failure_after_a_fresh_claim_is_rejected(ledger: Ledger) -> None:
    claim = ledger.claim(intent())

    left = ledger.record_failure(
        claim, code=1002001, msg="account deactivated", log_id="log-1", retryable=False, reach=Reach.REFUSED
    ).status

    assert left == REJECTED
    row = ledger.get(ORDER)
    assert row is not None
    assert (row.status, row.error_code, row.error_msg, row.log_id) == (
        REJECTED,
        1002001,
        "account deactivated",
        "log-1",
    )
    retry = ledger.claim(intent(try_number=2))  # a rejection moved no money: the id may be sent again
    assert retry.paid is None and retry.uncertain is False
    assert status(ledger) == SENDING


def test_permanent_failure_that_may_have_reached_feishu_goes_to_review(ledger: Ledger) -> None:
    claim = ledger.claim(intent())

    left = ledger.record_failure(
        claim, code=500, msg="connection reset", log_id=None, retryable=False, reach=Reach.REFUSED_AFTER_UNKNOWN
    ).status

    assert left == REVIEW
    assert status(ledger) == REVIEW


@pytest.mark.parametrize("first_try", ["lost", "retryable"])
def test_permanent_failure_after_an_earlier_send_goes_to_review(ledger: Ledger, first_try: str) -> None:
    first = ledger.claim(intent(try_number=1))
    if first_try == "retryable":
        ledger.record_failure(first, code=None, msg="read timed out", log_id=None, retryable=True, reach=Reach.UNKNOWN)
    # "lost": the first try died (killed worker, zombie) with the row still sending

    if first_try == "lost":
        # Seconds after the first try stopped answering it may still be waiting for Feishu: not yet for a person.
        early = ledger.claim(intent(try_number=2))
        refused = ledger.record_failure(
            early, code=1002001, msg="deactivated", log_id=None, retryable=False, reach=Reach.REFUSED
        )
        assert refused.status == SENDING
        ledger = Ledger(ledger._connect, ledger.dialect, in_flight_seconds=0)  # ... and later, surely dead
    second = ledger.claim(intent(try_number=2))
    assert second.uncertain is True
    left = ledger.record_failure(
        second, code=1002001, msg="account deactivated", log_id=None, retryable=False, reach=Reach.REFUSED
    ).status

    assert left == REVIEW
    row = ledger.get(ORDER)
    assert row is not None and row.status == REVIEW and row.sends == (3 if first_try == "lost" else 2)


def test_a_row_in_review_is_never_claimed_again(ledger: Ledger) -> None:
    claim = ledger.claim(intent())
    ledger.record_failure(
        claim, code=500, msg="connection reset", log_id=None, retryable=False, reach=Reach.REFUSED_AFTER_UNKNOWN
    )

    with pytest.raises(NeedsReview) as raised:
        ledger.claim(intent(try_number=2))

    assert isinstance(raised.value, LedgerError)
    assert ORDER in str(raised.value) and ACCOUNT in str(raised.value) and "connection reset" in str(raised.value)
    assert status(ledger) == REVIEW
    assert attempt_count(ledger) == 1  # the refused claim sent nothing
    assert not ledger.skip(intent(try_number=3), "nothing to withdraw")
    ledger.record_paid(claim, withdrawal())  # a late answer does not settle it either: a person does
    assert status(ledger) == REVIEW
    assert cash_row_count(ledger) == 0


def test_unreadable_answer_is_kept_raw_and_put_in_review(ledger: Ledger) -> None:
    raw = '{"external_order_id": "7412589630258741001", "trans_time": "1748736000123", "withdrawal_details": null}'
    claim = ledger.claim(intent())

    ledger.record_unreadable(claim, raw, "cash_bonus item {'amount': None} has no exact amount")
    ledger.record_unreadable(claim, "{}", "a zombie's later answer")  # the first raw answer is never replaced

    row = ledger.get(ORDER)
    assert row is not None
    assert row.status == REVIEW and row.raw_answer == raw
    assert row.error_msg is not None and "has no exact amount" in row.error_msg
    with pytest.raises(NeedsReview):
        ledger.claim(intent(try_number=2))
    assert attempts(ledger) == [(1, REVIEW, True)]


# -- skip ---------------------------------------------------------------------------------------------


def test_skip_records_a_new_order_id_and_a_later_claim_sends_it(ledger: Ledger) -> None:
    assert ledger.skip(intent(), "nothing to withdraw at the balance check") is True

    row = ledger.get(ORDER)
    assert row is not None
    assert (row.status, row.sends, row.error_msg) == (SKIPPED, 0, "nothing to withdraw at the balance check")
    assert attempt_count(ledger) == 0
    assert ledger.skip(intent(try_number=2), "still nothing") is True  # skipping again is harmless
    assert status(ledger) == SKIPPED

    claim = ledger.claim(intent(try_number=3))  # the balance grew: now it is sent

    assert claim.paid is None and claim.uncertain is False
    row = ledger.get(ORDER)
    assert row is not None and (row.status, row.sends) == (SENDING, 1)
    assert attempts(ledger) == [(3, None, False)]


@pytest.mark.parametrize("on_record", [SENDING, PAID, REVIEW])
def test_skip_refuses_when_a_send_is_on_record(ledger: Ledger, on_record: str) -> None:
    claim = ledger.claim(intent())
    if on_record == PAID:
        ledger.record_paid(claim, withdrawal())
    elif on_record == REVIEW:
        ledger.record_unreadable(claim, "{}", "no trans_time")
    before = ledger.get(ORDER)

    assert ledger.skip(intent(try_number=2), "nothing to withdraw") is False

    assert ledger.get(ORDER) == before
    assert status(ledger) == on_record


def test_a_rejected_order_is_settled_as_skipped_by_a_zero_balance_but_an_unknown_one_never(ledger: Ledger) -> None:
    """``rejected`` means no send of the order can have moved money (an unknown earlier send makes it ``review``),
    so a zero balance settles it: Feishu may refuse an empty withdrawal, and it must not be re-sent for ever."""
    claim = ledger.claim(intent())
    ledger.record_failure(
        claim, code=1002556, msg="nothing to withdraw", log_id=None, retryable=False, reach=Reach.REFUSED
    )
    assert status(ledger) == REJECTED
    assert ledger.skip(intent(try_number=2), "nothing to withdraw") is True
    assert status(ledger) == SKIPPED

    other = intent("7412589630258741009")
    lost = ledger.claim(other)
    ledger.record_failure(lost, code=None, msg="read timed out", log_id=None, retryable=True, reach=Reach.UNKNOWN)
    assert ledger.skip(intent("7412589630258741009", try_number=2), "nothing to withdraw") is False
    assert ledger.get("7412589630258741009").status == SENDING  # its zero may be that send's payment


def test_an_order_id_is_one_withdrawal_same_account_app_and_bonus_types(ledger: Ledger) -> None:
    ledger.claim(intent())
    points_only = Intent(**{**intent().__dict__, "withdraw_bonus_type": (1,)})
    with pytest.raises(OrderIdConflict, match="bonus types 1,2"):
        ledger.claim(points_only)  # Feishu would replay the points-and-cash withdrawal
    other_app = Intent(**{**intent().__dict__, "app_id": "cli_other"})
    with pytest.raises(OrderIdConflict, match="cli_other"):
        ledger.skip(other_app, "nothing to withdraw")


# -- the attempt trail --------------------------------------------------------------------------------


def test_every_claim_appends_an_attempt_and_none_is_ever_deleted(ledger: Ledger) -> None:
    claims: list[Claim] = []
    for try_number in (1, 2, 3):
        claim = ledger.claim(intent(try_number=try_number, map_index=7))
        claims.append(claim)
        assert attempt_count(ledger) == try_number
        if try_number < 3:
            ledger.record_failure(
                claim, code=None, msg="read timed out", log_id=None, retryable=True, reach=Reach.UNKNOWN
            )
    ledger.record_paid(claims[-1], withdrawal())
    ledger.claim(intent(try_number=4))  # answered from the ledger: no send, no attempt
    ledger.record_failure(claims[0], code=None, msg="late timeout", log_id=None, retryable=True, reach=Reach.UNKNOWN)

    ids = [claim.attempt_id for claim in claims]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert attempts(ledger) == [(1, SENDING, True), (2, SENDING, True), (3, PAID, True)]
    assert query(
        ledger,
        "SELECT DISTINCT dag_id, run_id, task_id, map_index FROM feishu_hire_withdrawal_attempt "
        "WHERE external_order_id = ?",
        ORDER,
    ) == [(DAG_ID, RUN_ID, TASK_ID, 7)]
    row = ledger.get(ORDER)
    assert row is not None and (row.status, row.sends) == (PAID, 3)


def test_attempts_are_kept_for_every_outcome(ledger: Ledger) -> None:
    orders = [f"74125896302587420{n:02d}" for n in range(4)]
    rejected = ledger.claim(intent(orders[0]))
    ledger.record_failure(rejected, code=1002001, msg="refused", log_id=None, retryable=False, reach=Reach.REFUSED)
    review = ledger.claim(intent(orders[1]))
    ledger.record_unreadable(review, "{}", "no trans_time")
    paid = ledger.claim(intent(orders[2]))
    ledger.record_paid(paid, withdrawal(orders[2]))
    assert ledger.skip(intent(orders[3]), "nothing to withdraw")

    assert [attempts(ledger, order) for order in orders] == [
        [(1, REJECTED, True)],
        [(1, REVIEW, True)],
        [(1, PAID, True)],
        [],
    ]
    assert query(ledger, "SELECT count(*) FROM feishu_hire_withdrawal_attempt") == [(3,)]


# -- reading rows -------------------------------------------------------------------------------------


def test_rows_select_by_run_by_trans_time_and_by_status(ledger: Ledger) -> None:
    day = 86_400_000
    paid_times = {
        "7412589630258743001": TRANS_TIME - 1,  # just before the window
        "7412589630258743002": TRANS_TIME,  # at the start: in
        "7412589630258743003": TRANS_TIME + day - 1,  # last ms: in
        "7412589630258743004": TRANS_TIME + day,  # at the end: out (end exclusive)
    }
    for order_id, trans_time in paid_times.items():
        ledger.record_paid(ledger.claim(intent(order_id)), withdrawal(order_id, trans_time=trans_time))
    other_run = "manual__2025-06-02T08:30:00+00:00"
    sending = "7412589630258743005"
    ledger.claim(intent(sending, run_id=other_run))
    skipped = "7412589630258743006"
    assert ledger.skip(intent(skipped, run_id=other_run), "nothing to withdraw")
    in_review = "7412589630258743007"
    ledger.record_unreadable(ledger.claim(intent(in_review, dag_id="other_dag", run_id=other_run)), "{}", "bad")

    def ids(rows: list[LedgerRow]) -> list[str]:
        return [row.external_order_id for row in rows]

    assert ids(ledger.rows(dag_id=DAG_ID, run_id=RUN_ID)) == sorted(paid_times)
    assert ids(ledger.rows(dag_id=DAG_ID, run_id=other_run)) == [sending, skipped]
    assert ids(ledger.rows(run_id=other_run)) == [sending, skipped, in_review]
    assert ids(ledger.rows(dag_id="other_dag")) == [in_review]
    window = ledger.rows(start_trans_time=TRANS_TIME, end_trans_time=TRANS_TIME + day)
    assert ids(window) == ["7412589630258743002", "7412589630258743003"]
    assert all(row.status == PAID and row.withdrawal is not None for row in window)
    assert ids(ledger.rows(start_trans_time=TRANS_TIME + day)) == ["7412589630258743004"]
    assert ids(ledger.rows(end_trans_time=TRANS_TIME)) == ["7412589630258743001"]
    assert ids(ledger.rows(statuses=(SENDING, REVIEW))) == [sending, in_review]
    assert ids(ledger.rows(statuses=(SKIPPED,))) == [skipped]
    assert ids(ledger.rows(statuses=(REJECTED,))) == []
    assert ids(ledger.rows(run_id=other_run, statuses=(SENDING, REVIEW))) == [sending, in_review]
    assert len(ledger.rows()) == 7


# -- schema -------------------------------------------------------------------------------------------


def test_migrate_is_idempotent_and_keeps_the_data(ledger: Ledger) -> None:
    paid = withdrawal()
    ledger.record_paid(ledger.claim(intent()), paid)

    ledger.migrate()
    with second_ledger(ledger) as other:
        other.migrate()
        other.migrate()
        assert other.claim(intent(try_number=2)).paid == paid

    assert query(ledger, f"SELECT version_num FROM {VERSION_TABLE}") == [(head(),)]
    # Releases before Alembic read this table, and refuse a version above theirs (3).
    assert query(ledger, "SELECT version FROM feishu_hire_ledger_schema") == [(PRE_ALEMBIC_REFUSAL,)]
    assert cash_row_count(ledger) == len(paid.cash_bonus)


def test_a_ledger_written_by_a_newer_provider_is_refused(ledger: Ledger) -> None:
    ledger.claim(intent())
    query(ledger, f"UPDATE {VERSION_TABLE} SET version_num = ?", "9999_from_the_future")

    with second_ledger(ledger) as other, pytest.raises(LedgerError, match="upgrade") as raised:
        other.migrate()

    assert "9999_from_the_future" in str(raised.value)
    assert status(ledger) == SENDING  # refused without touching anything
    assert query(ledger, f"SELECT version_num FROM {VERSION_TABLE}") == [("9999_from_the_future",)]


def test_a_newer_mark_in_the_version_table_of_releases_before_alembic_is_refused(ledger: Ledger) -> None:
    query(
        ledger,
        "INSERT INTO feishu_hire_ledger_schema (version, migrated_at) VALUES (?, ?)",
        PRE_ALEMBIC_REFUSAL + 1,
        "2030-01-01T00:00:00.000+00:00",
    )
    with second_ledger(ledger) as other, pytest.raises(LedgerError, match="upgrade") as raised:
        other.migrate()
    assert f"schema version {PRE_ALEMBIC_REFUSAL + 1}" in str(raised.value)


def test_workers_migrating_a_fresh_ledger_at_once_all_succeed(
    ledger: Ledger, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    connect = ledger_connection(request, ledger.dialect, tmp_path / "fresh.db")
    start = threading.Barrier(4)

    def worker_starts(try_number: int) -> None:
        with Ledger(connect, ledger.dialect) as worker:
            start.wait(timeout=10)
            worker.migrate()
            worker.claim(intent(str(7_412_589_630_258_760_000 + try_number), try_number=try_number))

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(worker_starts, range(4)))

    with Ledger(connect, ledger.dialect) as fresh:
        assert len(fresh.rows(statuses=(SENDING,))) == 4
        assert query(fresh, "SELECT DISTINCT version FROM feishu_hire_ledger_schema") == [(PRE_ALEMBIC_REFUSAL,)]
        assert query(fresh, f"SELECT version_num FROM {VERSION_TABLE}") == [(head(),)]


# -- concurrency --------------------------------------------------------------------------------------


def test_eight_threads_claiming_one_order_id_send_it_as_one_row(ledger: Ledger) -> None:
    start = threading.Barrier(8)

    def claim(try_number: int) -> Claim:
        start.wait(timeout=10)
        return ledger.claim(intent(try_number=try_number))

    with ThreadPoolExecutor(max_workers=8) as pool:
        claims = list(pool.map(claim, range(1, 9)))  # re-raises any thread's exception

    assert query(ledger, "SELECT count(*) FROM feishu_hire_withdrawal") == [(1,)]
    assert attempt_count(ledger) == 8
    assert sorted(try_number for try_number, _, _ in attempts(ledger)) == list(range(1, 9))
    assert len({claim.attempt_id for claim in claims}) == 8
    assert [claim.uncertain for claim in claims].count(False) == 1  # only the very first send is known to be alone
    row = ledger.get(ORDER)
    assert row is not None and (row.status, row.sends, row.referral_account_id) == (SENDING, 8, ACCOUNT)


def test_two_processes_interleaving_claims_and_payments_never_lose_or_duplicate_a_row(
    ledger: Ledger, request: pytest.FixtureRequest
) -> None:
    orders = [str(7_412_589_630_258_750_000 + n) for n in range(50)]
    expected = {
        order_id: withdrawal(order_id, trans_time=TRANS_TIME + n, cash={"CNY": Decimal(f"{n}.{n:02d}")})
        for n, order_id in enumerate(orders)
    }
    start = threading.Barrier(2)
    with second_ledger(ledger) as other:

        def work(process: Ledger, order_ids: list[str], try_number: int) -> int:
            start.wait(timeout=10)
            sent = 0
            for order_id in order_ids:
                claim = process.claim(intent(order_id, try_number=try_number))
                if claim.paid is None:
                    sent += 1
                    process.record_paid(claim, expected[order_id])
                else:
                    assert claim.paid == expected[order_id]
            return sent

        with ThreadPoolExecutor(max_workers=2) as pool:
            first = pool.submit(work, ledger, orders, 1)
            second = pool.submit(work, other, orders, 2)
            sent = first.result(timeout=60) + second.result(timeout=60)

    rows = ledger.rows()
    assert [row.external_order_id for row in rows] == orders
    assert {row.external_order_id: row.withdrawal for row in rows} == expected
    assert all(row.status == PAID for row in rows)
    assert query(ledger, "SELECT count(*) FROM feishu_hire_withdrawal_cash") == [(50,)]
    assert query(ledger, "SELECT count(*) FROM feishu_hire_withdrawal_attempt") == [(sent,)]
    assert sum(row.sends for row in rows) == sent
    assert 50 <= sent <= 100


# -- known gaps: each pins a case where the ledger breaks its own contract (strict: fix, then unmark) ------


def pause_before_updating_a_withdrawal(ledger: Ledger, pause: Callable[[], None]) -> None:
    """Run ``pause`` just before each write to a withdrawal row, inside that write's transaction."""

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().startswith("UPDATE feishu_hire_withdrawal SET"):
            pause()

    event.listen(ledger.engine, "before_cursor_execute", before)


def test_a_claim_racing_a_payment_never_reopens_the_paid_row(ledger: Ledger, request: pytest.FixtureRequest) -> None:
    paid = withdrawal()
    zombie_claim = ledger.claim(intent(try_number=1))
    fired = threading.Event()
    payer_done = threading.Event()

    def zombie_pays_now() -> None:
        if fired.is_set():
            return
        fired.set()
        # The zombie records Feishu's answer between the retry's read of the row and its write.
        payer = threading.Thread(target=lambda: (ledger.record_paid(zombie_claim, paid), payer_done.set()))
        payer.start()
        payer.join(timeout=0.5)  # on a database that locks the row (or the file) it waits for the retry instead

    with second_ledger(ledger) as retry_process:
        pause_before_updating_a_withdrawal(retry_process, zombie_pays_now)
        retry = retry_process.claim(intent(try_number=2))
        assert payer_done.wait(timeout=10)
        if retry.paid is None:
            retry_process.record_paid(retry, paid)  # Feishu replays the same withdrawal for the same order id

    row = ledger.get(ORDER)
    assert row is not None and row.status == PAID and row.withdrawal == paid
    assert cash_row_count(ledger) == len(paid.cash_bonus)


def test_a_refusal_does_not_settle_an_order_id_another_send_is_still_waiting_on(ledger: Ledger) -> None:
    zombie = ledger.claim(intent(try_number=1))
    retry = ledger.claim(intent(try_number=2))  # sent while the zombie's answer is still out

    ledger.record_failure(zombie, code=1002001, msg="refused", log_id=None, retryable=False, reach=Reach.REFUSED)
    ledger.record_failure(retry, code=None, msg="read timed out", log_id=None, retryable=True, reach=Reach.UNKNOWN)

    # The retry's send may have paid: the row must not say "no money moved".
    assert status(ledger) in (SENDING, REVIEW)
    assert not ledger.skip(intent(try_number=3), "nothing to withdraw at the balance check")


def test_record_failure_reports_the_status_the_row_is_left_in(ledger: Ledger) -> None:
    late = ledger.claim(intent(try_number=1))
    ledger.record_paid(ledger.claim(intent(try_number=2)), withdrawal())

    left = ledger.record_failure(
        late, code=1002001, msg="refused", log_id=None, retryable=False, reach=Reach.REFUSED
    ).status

    assert left == status(ledger) == PAID
