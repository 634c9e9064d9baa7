"""What a payout is about to pay, for the person who approves it. No Airflow here.

Withdraw takes an account's whole balance at the moment it runs, so the preview is what
the balances were when it was read: bonuses confirmed after it are paid too. It reads
each account at the client's balance pace (Feishu allows 10 a second).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow_provider_feishu_hire.balance import Balance, parse_account_assets
from airflow_provider_feishu_hire.exceptions import FeishuAPIError
from airflow_provider_feishu_hire.withdrawal import CASH, POINTS, UnreadableAnswer, format_cash, format_money, plural

if TYPE_CHECKING:
    from airflow_provider_feishu_hire.client import FeishuClient

LARGEST_SHOWN = 5
NAMED_IN_SUBJECT = 5


@dataclass
class PayoutPreview:
    """Totals of the balances a payout would withdraw, the largest ones, and the accounts it cannot pay."""

    accounts: int = 0
    payable: list[Balance] = field(default_factory=list)
    not_payable: dict[str, str] = field(default_factory=dict)  # account id -> why

    @property
    def point_bonus(self) -> int:
        return sum(b.point_bonus for b in self.payable)

    @property
    def cash_bonus(self) -> dict[str, Decimal]:
        totals: dict[str, Decimal] = {}
        for balance in self.payable:
            for currency, amount in balance.cash_bonus.items():
                totals[currency] = totals.get(currency, Decimal(0)) + amount
        return dict(sorted(totals.items()))

    def largest(self) -> dict[str, list[Balance]]:
        """The biggest payouts in each unit on its own: points, then each currency.

        Points and cash, and cash in two currencies, have no exchange rate between them
        here, so no single order of "largest" would be honest: an account paid 0.10 CNY and
        80 points is neither above nor below one paid 450 points. Each unit is therefore
        ranked by itself, largest first (ties by account id), and an account large in any
        unit is shown to the approver.
        """
        units = {"points": [b for b in self.payable if b.point_bonus]}
        units.update(
            {currency: [b for b in self.payable if b.cash_bonus.get(currency)] for currency in self.cash_bonus}
        )

        def amount(balance: Balance, unit: str) -> Decimal:
            return Decimal(balance.point_bonus) if unit == "points" else balance.cash_bonus[unit]

        return {
            unit: sorted(found, key=lambda b: (-amount(b, unit), b.referral_account_id))[:LARGEST_SHOWN]
            for unit, found in units.items()
            if found
        }

    def headline(self) -> str:
        """The approval's subject: the numbers first, then who will not be paid, by id."""
        cash = format_cash(self.cash_bonus)
        question = (
            f"Pay {plural(len(self.payable), 'referral account')}: {plural(self.point_bonus, 'point')}"
            f"{', ' + cash if cash else ''}?"
        )
        if not self.not_payable:
            return question
        named = sorted(self.not_payable)
        listed = ", ".join(named[:NAMED_IN_SUBJECT]) + (
            f" and {len(named) - NAMED_IN_SUBJECT} more" if len(named) > NAMED_IN_SUBJECT else ""
        )
        return f"{question} Cannot pay {plural(len(named), 'account')}: {listed}"

    def nothing_to_pay(self) -> str | None:
        """Why there is nothing to approve, or None when some account has a balance to pay."""
        if self.payable:
            return None
        empty = self.accounts - len(self.not_payable)
        parts = [f"{account} ({why})" for account, why in sorted(self.not_payable.items())]
        if empty:
            parts.append(f"{plural(empty, 'account')} with a zero balance")
        return "Nothing to pay, so no one was asked to approve: " + "; ".join(parts)

    def markdown(self) -> str:
        """The approval's body: totals, the largest payouts, who cannot be paid, and what approving means."""
        lines = [
            f"**{plural(len(self.payable), 'account')}** with a balance of the {self.accounts} listed; "
            f"**{plural(self.point_bonus, 'point')}**",
        ]
        lines += [f"- **{format_money(amount)} {currency}**" for currency, amount in self.cash_bonus.items()]
        for unit, balances in self.largest().items():
            lines += ["", f"| Largest in {unit} | Points | Cash |", "|---|---:|---:|"]
            lines += [
                f"| {b.referral_account_id} | {b.point_bonus} | " + (format_cash(b.cash_bonus) or "—") + " |"
                for b in balances
            ]
        if self.not_payable:
            lines += ["", f"**{plural(len(self.not_payable), 'account')} cannot be paid:**"]
            lines += [f"- {account}: {why}" for account, why in sorted(self.not_payable.items())]
        lines += [
            "",
            "Withdrawal takes each account's whole balance when it runs: a bonus confirmed after this "
            "preview is paid too. The amounts paid are in the ledger and the payroll.",
        ]
        return "\n".join(lines)

    def as_xcom(self) -> dict[str, Any]:
        """JSON-safe: cash as decimal strings, never floats."""
        return {
            "accounts": self.accounts,
            "payable": len(self.payable),
            "point_bonus": self.point_bonus,
            "cash_bonus": {currency: format_money(amount) for currency, amount in self.cash_bonus.items()},
            "largest": {unit: [b.as_xcom() for b in balances] for unit, balances in self.largest().items()},
            "not_payable": dict(sorted(self.not_payable.items())),
            "nothing_to_pay": self.nothing_to_pay(),
            "subject": self.headline(),
            "markdown": self.markdown(),
        }


def preview_payout(client: FeishuClient, account_ids: Sequence[str], bonus_types: Sequence[int]) -> PayoutPreview:
    """Read every account's balance (of the kinds to be withdrawn) once, at the balance pace.

    An account Feishu refuses (unknown, no scope) or reports deactivated is listed as not
    payable; a transient error raises, so the task's retry reads again.
    """
    unique = list(dict.fromkeys(account_ids))  # an account listed twice is withdrawn once
    preview = PayoutPreview(accounts=len(unique))
    for account_id in unique:
        try:
            balance = parse_account_assets(account_id, client.get_account_assets(account_id))
        except FeishuAPIError as err:
            if err.retryable:
                raise
            preview.not_payable[account_id] = f"Feishu error {err.code}: {err.msg}"
            continue
        except UnreadableAnswer as exc:
            preview.not_payable[account_id] = f"balance unreadable: {exc}"
            continue
        if not balance.enabled:
            preview.not_payable[account_id] = "deactivated"
            continue
        kept = Balance(
            account_id,
            True,
            balance.point_bonus if POINTS in bonus_types else 0,
            dict(balance.cash_bonus) if CASH in bonus_types else {},
        )
        if kept.point_bonus or any(kept.cash_bonus.values()):
            preview.payable.append(kept)
    return preview
