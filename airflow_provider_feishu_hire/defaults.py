"""The names and amounts every part of the provider shares, each defined once.

Standard library only: every operator module imports it, so every DAG file parse does.
"""

from __future__ import annotations

from decimal import Decimal

DEFAULT_FEISHU_HIRE_CONN_ID = "feishu_hire_default"  # the Feishu Hire connection every operator uses by default
DEFAULT_LEDGER_CONN_ID = "feishu_hire_ledger"  # the payout ledger's database, shared by every worker
CENT = Decimal("0.01")  # Feishu counts cash in cents: every amount has two decimal places at most
