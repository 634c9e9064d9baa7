"""A local Feishu that behaves like the real API for the endpoints this provider uses.

``python -m airflow_provider_feishu_hire.sandbox`` runs it; tests start it in-process.
"""

from airflow_provider_feishu_hire.sandbox.server import (
    DEFAULT_APP_ID,
    DEFAULT_APP_SECRET,
    FAULT_KINDS,
    MALFORMED_VARIANTS,
    Account,
    Fault,
    FeishuSandbox,
    UnknownAccount,
    demo_accounts,
)

__all__ = [
    "DEFAULT_APP_ID",
    "DEFAULT_APP_SECRET",
    "FAULT_KINDS",
    "MALFORMED_VARIANTS",
    "Account",
    "Fault",
    "FeishuSandbox",
    "UnknownAccount",
    "demo_accounts",
]
