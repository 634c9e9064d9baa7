"""A local Feishu that behaves like the real API for the endpoints this provider uses.

``python -m airflow_provider_feishu_hire.sandbox`` runs it; tests start it in-process. It
serves Feishu's event long connection too (``POST /callback/ws/endpoint``, then a WebSocket).
"""

from airflow_provider_feishu_hire.sandbox.server import (
    ASSETS_UPDATE,
    COUNTERS,
    DEFAULT_APP_ID,
    DEFAULT_APP_SECRET,
    DEFAULT_TENANT_KEY,
    DEFAULT_VERIFICATION_TOKEN,
    ENDPOINTS,
    FAULT_KINDS,
    MALFORMED_VARIANTS,
    Account,
    Fault,
    FeishuSandbox,
    Referrer,
    UnknownAccount,
    demo_accounts,
)

__all__ = [
    "ASSETS_UPDATE",
    "COUNTERS",
    "DEFAULT_APP_ID",
    "DEFAULT_APP_SECRET",
    "DEFAULT_TENANT_KEY",
    "DEFAULT_VERIFICATION_TOKEN",
    "ENDPOINTS",
    "FAULT_KINDS",
    "MALFORMED_VARIANTS",
    "Account",
    "Fault",
    "FeishuSandbox",
    "Referrer",
    "UnknownAccount",
    "demo_accounts",
]
