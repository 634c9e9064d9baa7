"""A withdrawal's statuses and how each outcome moves them: the whole state machine, as one table.

One row per ``external_order_id``. Its ``status`` only moves forward:

- ``skipped``: a balance check found nothing to withdraw; nothing was sent under this id;
- ``needs_approval``: nothing sent: the balance is more than the run's approval covers;
- ``sending``: written *before* a withdrawal goes out and kept until Feishu's answer is
  recorded; also after a transient failure, since Feishu may have committed. A row in this
  state is never settled by a zero balance, only by sending the same id again;
- ``paid``: Feishu's answer (``trans_time``, points, every cash currency). Final;
- ``rejected``: Feishu refused, and no send under this id can have moved money;
- ``review``: money may have moved but the ledger cannot say how much (an answer that does
  not parse, or a refusal after a send whose outcome is unknown). Final for automation: a
  person settles it, nothing is re-sent.

:data:`TRANSITIONS` says, for every status and every :class:`Outcome`, the status a row is
left in; ``None`` means the ledger refuses the step (it raises, and the row is unchanged).
The withdrawal methods (``withdrawals.py``) classify what happened into an outcome and
write what this table says; README's state-machine table is this one.
"""

from __future__ import annotations

from enum import Enum

from airflow_provider_feishu_hire.exceptions import Reach

SKIPPED, SENDING, PAID, REJECTED, REVIEW = "skipped", "sending", "paid", "rejected", "review"
NEEDS_APPROVAL = "needs_approval"
STATUSES = (SKIPPED, NEEDS_APPROVAL, SENDING, PAID, REJECTED, REVIEW)
OPEN_STATUSES = (SENDING, REVIEW)  # money may have moved and payroll cannot show it yet
# No send of the order id can have moved money: never sent, or every send refused. A balance read
# may settle these again (skipped, rejected, needs approval); any other status only a send settles.
UNSENT_STATUSES = (SKIPPED, REJECTED, NEEDS_APPROVAL)
UNSENT = "unsent"  # an attempt's outcome only: refused before it reached Feishu (429, token)


class Outcome(str, Enum):
    """What happened to an order id, as the state machine tells outcomes apart."""

    SEND = "a try sends it"
    EMPTY_BALANCE = "balance check: nothing to withdraw"
    BALANCE_REFUSED = "balance read refused"
    OVER_APPROVAL = "balance above the run's approval"
    PAID = "Feishu's answer: paid"
    UNREADABLE = "an answer that does not parse"
    TRANSIENT = "no answer (timeout, 5xx): Feishu may have committed"
    REFUSED = "refused, and no send of it can have moved money"
    REFUSED_WHILE_IN_FLIGHT = "refused while another send of it still waits for its answer"
    REFUSED_AFTER_UNKNOWN = "refused after a send whose outcome is unknown"
    NOT_REACHED_AFTER_SEND = "never reached Feishu (login refused), after an earlier send"
    SETTLED_PAID = "two people settle it as paid"
    SETTLED_NOT_PAID = "two people settle it as not paid"


On = Outcome  # short, so that the table below fits
# One row per outcome, one column per status (STATUSES' order): the status a row is left in.
_REFUSED = None
_TABLE: dict[Outcome, tuple[str | None, ...]] = {
    #                            skipped         needs_approval  sending   paid  rejected        review
    On.SEND:                     (SENDING,        SENDING,        SENDING,  PAID, SENDING,        _REFUSED),
    On.EMPTY_BALANCE:            (SKIPPED,        SKIPPED,        SENDING,  PAID, SKIPPED,        REVIEW),
    On.BALANCE_REFUSED:          (REJECTED,       REJECTED,       SENDING,  PAID, REJECTED,       REVIEW),
    On.OVER_APPROVAL:            (NEEDS_APPROVAL, NEEDS_APPROVAL, SENDING,  PAID, NEEDS_APPROVAL, REVIEW),
    On.PAID:                     (PAID,           PAID,           PAID,     PAID, PAID,           REVIEW),
    On.UNREADABLE:               (REVIEW,         REVIEW,         REVIEW,   PAID, REVIEW,         REVIEW),
    On.TRANSIENT:                (SKIPPED,        NEEDS_APPROVAL, SENDING,  PAID, REJECTED,       REVIEW),
    On.REFUSED:                  (SKIPPED,        NEEDS_APPROVAL, REJECTED, PAID, REJECTED,       REVIEW),
    On.REFUSED_WHILE_IN_FLIGHT:  (SKIPPED,        NEEDS_APPROVAL, SENDING,  PAID, REJECTED,       REVIEW),
    On.REFUSED_AFTER_UNKNOWN:    (SKIPPED,        NEEDS_APPROVAL, REVIEW,   PAID, REJECTED,       REVIEW),
    On.NOT_REACHED_AFTER_SEND:   (SKIPPED,        NEEDS_APPROVAL, SENDING,  PAID, REJECTED,       REVIEW),
    On.SETTLED_PAID:             (_REFUSED,       _REFUSED,       PAID,     _REFUSED, _REFUSED,   PAID),
    On.SETTLED_NOT_PAID:         (_REFUSED,       _REFUSED,       REJECTED, _REFUSED, _REFUSED,   REJECTED),
}  # fmt: skip
TRANSITIONS: dict[tuple[str, Outcome], str | None] = {
    (status, outcome): after for outcome, row in _TABLE.items() for status, after in zip(STATUSES, row, strict=True)
}


def next_status(status: str, outcome: Outcome) -> str | None:
    """The status a row in ``status`` is left in by ``outcome``; None when the ledger refuses the step."""
    return TRANSITIONS[(status, outcome)]


def failure_outcome(*, retryable: bool, reach: Reach, in_flight: bool, unknown: bool) -> Outcome:
    """Classify a failed send of a ``sending`` row.

    ``reach``: how far the call got, as the client decided it (:class:`Reach`); one that never
    got to the withdraw endpoint (its login failed) proves nothing about earlier sends and
    moves nothing to review. ``in_flight``: another send of the order id may still be waiting
    for its answer; ``unknown``: an earlier send of it (another try's) ended without a known
    outcome.
    """
    if retryable:
        return Outcome.TRANSIENT
    unknown = unknown or reach.may_have_acted
    if not reach.reached_endpoint:
        return Outcome.NOT_REACHED_AFTER_SEND if in_flight or unknown else Outcome.REFUSED
    if in_flight:
        return Outcome.REFUSED_WHILE_IN_FLIGHT
    return Outcome.REFUSED_AFTER_UNKNOWN if unknown else Outcome.REFUSED


def markdown_table() -> str:
    """TRANSITIONS as the README shows it: one line per outcome, one column per status."""
    lines = ["| outcome | " + " | ".join(f"`{status}`" for status in STATUSES) + " |", "|---" * 7 + "|"]
    for outcome, row in _TABLE.items():
        cells = " | ".join("*refused*" if after is None else after for after in row)
        lines.append(f"| {outcome.value} | {cells} |")
    return "\n".join(lines)
