"""Provider metadata read by Airflow's ProvidersManager, including the connection form as data."""

from __future__ import annotations

from typing import Any

from airflow_provider_feishu_hire import __version__


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-feishu-hire",
        "name": "Feishu Hire",
        "description": "Feishu Hire (飞书招聘) referral accounts: withdraw balances exactly once, export to payroll.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Feishu Hire",
                "external-doc-url": "https://open.feishu.cn/document/server-docs/hire-v1/referral_account/withdraw",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Feishu Hire",
                "python-modules": ["airflow_provider_feishu_hire.hooks.feishu_hire"],
            }
        ],
        "operators": [
            {
                "integration-name": "Feishu Hire",
                "python-modules": [
                    "airflow_provider_feishu_hire.operators.referral_account",
                    "airflow_provider_feishu_hire.operators.payroll",
                    "airflow_provider_feishu_hire.operators.reconciliation",
                    "airflow_provider_feishu_hire.operators.approval",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": "Feishu Hire",
                "python-modules": ["airflow_provider_feishu_hire.sensors.referral_account"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Feishu Hire",
                "python-modules": [
                    "airflow_provider_feishu_hire.triggers.referral_account",
                    "airflow_provider_feishu_hire.triggers.events",
                ],
            }
        ],
        "connection-types": [
            {
                "connection-type": "feishu_hire",
                "hook-class-name": "airflow_provider_feishu_hire.hooks.feishu_hire.FeishuHireHook",
                "hook-name": "Feishu Hire",
                # Port stays in the form: Airflow 3.3.2's connection list tests a connection that
                # has no port with port 0 and refuses it (Bad Request). A stored port avoids that;
                # the hook adds it to a base URL that names no port of its own.
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "extra"],
                    "relabeling": {"login": "App ID", "password": "App Secret", "host": "API base URL"},
                    "placeholders": {
                        "login": "cli_a1b2c3d4e5f6g7h8",
                        "password": "App Secret from the app's Credentials page",
                        "host": "https://open.feishu.cn (Feishu, default) or https://open.larksuite.com (Lark)",
                        "port": "443 (needed by Test on Airflow 3.3.2)",
                    },
                },
                "conn-fields": {
                    "app_type": {
                        "label": "App type",
                        "description": "custom: a self-built app of your own tenant (the default). isv: a store "
                        "app acting in a customer's tenant; it also needs the tenant key and the app_ticket Variable.",
                        "schema": {"type": ["string", "null"], "default": "custom", "enum": ["custom", "isv"]},
                    },
                    "tenant_key": {
                        "label": "Tenant key (store apps)",
                        "description": "The customer tenant's tenant_key, as Feishu sends it in the app's events "
                        "(header.tenant_key) once the customer has installed the app.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "app_ticket_variable": {
                        "label": "app_ticket Variable (store apps)",
                        "description": "Name of the Airflow Variable holding the latest app_ticket. Feishu pushes a "
                        "new ticket to the app's event subscription about hourly (the app_ticket event): store it "
                        "there. Read at every token fetch. Default feishu_hire_app_ticket.",
                        "schema": {"type": ["string", "null"], "default": "feishu_hire_app_ticket"},
                    },
                    "timeout": {
                        "label": "Request timeout (seconds)",
                        "description": "How long one HTTP request may wait for Feishu before it is retried.",
                        "schema": {"type": ["number", "null"], "default": 10, "minimum": 1},
                    },
                    "max_attempts": {
                        "label": "Attempts per call",
                        "description": "Tries of one call on transient errors (5xx, 429, timeouts); a withdrawal "
                        "sends the same external_order_id every time.",
                        "schema": {"type": ["integer", "null"], "default": 5, "minimum": 1},
                    },
                    "backoff_base": {
                        "label": "First backoff (seconds)",
                        "description": "Wait before the first retry; it doubles, with jitter, on each further retry.",
                        "schema": {"type": ["number", "null"], "default": 0.5, "minimum": 0},
                    },
                    "backoff_max": {
                        "label": "Longest backoff (seconds)",
                        "schema": {"type": ["number", "null"], "default": 8, "minimum": 0},
                    },
                    "withdraw_rate_limit": {
                        "label": "Withdrawals per minute",
                        "description": "Client-side pace of this app; Feishu allows 100. 0 turns pacing off.",
                        "schema": {"type": ["number", "null"], "default": 100, "minimum": 0},
                    },
                    "assets_rate_limit": {
                        "label": "Balance reads per second",
                        "description": "Pace of get_account_assets pre-checks; Feishu allows 10. 0 turns pacing off.",
                        "schema": {"type": ["number", "null"], "default": 10, "minimum": 0},
                    },
                    "shared_pace": {
                        "label": "One pace for all workers",
                        "description": "Reserve every call's slot in the payout ledger's database, so that all "
                        "tasks and workers of this app together keep Feishu's limits. Off: each task paces itself.",
                        "schema": {"type": ["boolean", "null"], "default": True},
                    },
                    "retry_budget": {
                        "label": "Retry budget (seconds)",
                        "description": "Total time one call may spend retrying, waits included.",
                        "schema": {"type": ["number", "null"], "default": 45, "minimum": 0},
                    },
                },
            }
        ],
    }
