"""Settle what the automation cannot: ``python -m airflow_provider_feishu_hire.settlement``.

An order in ``review`` (Feishu's answer did not parse, or a refusal came after a send whose
outcome is unknown) or stuck in ``sending`` is never re-sent or guessed. A person looks at
everything known about it, then records what happened, with evidence; a second person
confirms before it counts. A settled-as-paid order joins the next payroll batch of its
scope. Nothing is deleted: proposals, confirmations and the attempts stay in the ledger.

    python -m airflow_provider_feishu_hire.settlement list
    python -m airflow_provider_feishu_hire.settlement show ORDER_ID
    python -m airflow_provider_feishu_hire.settlement propose ORDER_ID --paid --trans-time MS \\
        --points 25 --cash CNY=10.00 --evidence "Feishu console: withdrawal 25 points + 10.00 CNY" --by alice
    python -m airflow_provider_feishu_hire.settlement propose ORDER_ID --not-paid --evidence "..." --by alice
    python -m airflow_provider_feishu_hire.settlement confirm SETTLEMENT_ID --by bob

It runs where Airflow's connections are (``AIRFLOW_CONN_FEISHU_HIRE_LEDGER`` or the
metadata database): the ledger is ``--ledger-conn-id``, and ``show`` reads the account's
current balance through ``--feishu-hire-conn-id`` when that connection exists. The names
given with ``--by`` are recorded as given: the payouts console in the Airflow UI records
Airflow's logged-in user instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from airflow_provider_feishu_hire.defaults import DEFAULT_FEISHU_HIRE_CONN_ID, DEFAULT_LEDGER_CONN_ID
from airflow_provider_feishu_hire.ledger import REVIEW, SENDING, Ledger, LedgerError
from airflow_provider_feishu_hire.withdrawal import format_cash


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from airflow_provider_feishu_hire.hooks.ledger import FeishuHireLedgerHook

    hook = FeishuHireLedgerHook(args.ledger_conn_id)
    try:
        ledger = hook.ledger
        if args.command == "list":
            _list(ledger)
        elif args.command == "show":
            _show(ledger, args.order_id, args.feishu_hire_conn_id)
        elif args.command == "propose":
            proposal = ledger.propose_settlement(
                args.order_id,
                paid=args.paid,
                evidence=args.evidence,
                proposed_by=args.by,
                trans_time=args.trans_time,
                point_bonus=args.points,
                cash_bonus=dict(args.cash or []),
            )
            print(
                f"Settlement {proposal.id} of order {proposal.external_order_id} proposed by {proposal.proposed_by}: "
                f"{'paid' if proposal.paid else 'not paid'}. Another person confirms it with: "
                f"python -m airflow_provider_feishu_hire.settlement confirm {proposal.id} --by NAME"
            )
        else:
            row = ledger.confirm_settlement(args.settlement_id, args.by)
            print(f"Order {row.external_order_id} is now {row.status}: {row.error_msg}")
    except LedgerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        hook.close()
    return 0


def _list(ledger: Ledger) -> None:
    """Orders waiting for a person: in review, or sending (stuck if no send can still answer)."""
    rows = ledger.rows(statuses=(REVIEW, SENDING))
    if not rows:
        print("Nothing to settle.")
    for row in rows:
        print(f"{row.external_order_id}  {row.status:<8} account {row.referral_account_id}  {row.describe_problem()}")


def _show(ledger: Ledger, order_id: str, feishu_hire_conn_id: str) -> None:
    row = ledger.get(order_id)
    if row is None:
        raise LedgerError(f"the ledger holds no order {order_id}")
    print(f"Order {row.external_order_id}: account {row.referral_account_id}, {row.status}")
    print(f"  sent by DAG {row.dag_id}, run {row.run_id}, task {row.task_id}; {row.sends} sends")
    if row.error_msg:
        print(f"  last: {row.error_code or ''} {row.error_msg} (log_id {row.log_id or 'none'})")
    if row.raw_answer:
        print(f"  Feishu's raw answer, as kept: {row.raw_answer}")
    for attempt in ledger.attempts(order_id):
        print(
            "  attempt: try {try_number} of {task_id} in {run_id}, {started_at} to {finished_at}: {outcome} "
            "{error_code} {error_msg}".format(**{k: "" if v is None else v for k, v in attempt.items()})
        )
    for settlement in ledger.settlements(order_id):
        state = f"confirmed by {settlement.confirmed_by}" if settlement.confirmed_by else "waiting for a second person"
        amounts = (
            f"paid {settlement.point_bonus} points, cash {format_cash(settlement.cash_bonus) or 'none'}"
            if settlement.paid
            else "not paid"
        )
        print(f"  settlement {settlement.id} by {settlement.proposed_by}: {amounts}; {settlement.evidence} ({state})")
    print(f"  Feishu's balance now: {_balance_now(feishu_hire_conn_id, row.referral_account_id)}")


def _balance_now(feishu_hire_conn_id: str, account_id: str) -> str:
    """The account's current balance at Feishu, or why it could not be read (the command still shows the rest)."""
    try:
        from airflow_provider_feishu_hire.balance import parse_account_assets
        from airflow_provider_feishu_hire.hooks.feishu_hire import FeishuHireHook

        with FeishuHireHook(feishu_hire_conn_id=feishu_hire_conn_id).client as client:
            balance = parse_account_assets(account_id, client.get_account_assets(account_id))
    except Exception as exc:  # a missing connection, Feishu refusing: shown, not fatal
        return f"not read ({type(exc).__name__}: {exc})"
    return f"{balance.point_bonus} points, cash {format_cash(balance.cash_bonus) or 'none'}"


def _cash(text: str) -> tuple[str, Decimal]:
    currency, _, amount = text.partition("=")
    try:
        value = Decimal(amount)
    except InvalidOperation:
        value = Decimal("NaN")
    if not currency.strip() or not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"--cash {text!r}: give CURRENCY=AMOUNT, such as CNY=10.00")
    return currency.strip().upper(), value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m airflow_provider_feishu_hire.settlement", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--ledger-conn-id", default=DEFAULT_LEDGER_CONN_ID)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="orders waiting for a person")
    show = commands.add_parser("show", help="everything known about an order")
    show.add_argument("order_id")
    show.add_argument("--feishu-hire-conn-id", default=DEFAULT_FEISHU_HIRE_CONN_ID)
    propose = commands.add_parser("propose", help="record what happened to an order, with evidence")
    propose.add_argument("order_id")
    outcome = propose.add_mutually_exclusive_group(required=True)
    outcome.add_argument("--paid", action="store_true", help="Feishu paid it (give --trans-time, --points, --cash)")
    outcome.add_argument("--not-paid", dest="paid", action="store_false", help="Feishu moved no money for it")
    propose.add_argument("--trans-time", type=int, help="Feishu's trans_time, milliseconds since the epoch")
    propose.add_argument("--points", type=int, help="points paid")
    propose.add_argument("--cash", type=_cash, action="append", help="cash paid, CURRENCY=AMOUNT; repeat per currency")
    propose.add_argument("--evidence", required=True, help="what shows the outcome: Feishu's record, a log_id")
    propose.add_argument("--by", required=True, help="who proposes this settlement")
    confirm = commands.add_parser("confirm", help="confirm another person's settlement")
    confirm.add_argument("settlement_id", type=int)
    confirm.add_argument("--by", required=True, help="who confirms (not the proposer)")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
