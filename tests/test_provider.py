"""Airflow discovers the provider, its connection form and its hook, with no warnings, on every tested version."""

from __future__ import annotations

import ast
import json
import logging
import subprocess
import sys
import warnings
from importlib import resources

import pytest

from airflow_provider_feishu_hire.get_provider_info import get_provider_info

pytestmark = pytest.mark.lowest  # also run on the lowest supported Airflow (Makefile: pytest-lowest)

HOOK = "airflow_provider_feishu_hire.hooks.feishu_hire.FeishuHireHook"


def test_provider_info_fits_this_airflows_schema() -> None:
    import jsonschema

    schema = json.loads(resources.files("airflow").joinpath("provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_providers_manager_loads_the_connection_form_without_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from airflow.providers_manager import ProvidersManager

    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manager = ProvidersManager()
        manager.initialize_providers_hooks()
        hook = manager.hooks["feishu_hire"]
        behaviour = manager.field_behaviours["feishu_hire"]
        widgets = {name for name in manager.connection_form_widgets if name.startswith("extra__feishu_hire__")}

    assert manager.providers["airflow-provider-feishu-hire"].data["package-name"] == "airflow-provider-feishu-hire"
    assert hook is not None and hook.hook_class_name == HOOK and hook.hook_name == "Feishu Hire"
    assert behaviour["relabeling"] == {"login": "App ID", "password": "App Secret", "host": "API base URL"}
    # Port is shown: Airflow 3.3.2's list tests a portless connection with port 0 and refuses it.
    assert {"schema", "extra"} <= set(behaviour["hidden_fields"]) and "port" not in behaviour["hidden_fields"]
    assert widgets == {
        f"extra__feishu_hire__{name}"
        for name in (
            "app_type",
            "tenant_key",
            "app_ticket_variable",
            "timeout",
            "max_attempts",
            "backoff_base",
            "backoff_max",
            "retry_budget",
            "withdraw_rate_limit",
            "assets_rate_limit",
            "shared_pace",
        )
    }
    app_type = manager.connection_form_widgets["extra__feishu_hire__app_type"].field["schema"]
    assert (app_type["enum"], app_type["default"]) == (["custom", "isv"], "custom")
    messages = [r.getMessage() for r in caplog.records] + [str(w.message) for w in caught]
    assert [m for m in messages if "feishu" in m.lower()] == []


def test_airflow_cli_lists_the_provider() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "get", "airflow-provider-feishu-hire", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "airflow-provider-feishu-hire" in done.stdout
    assert "warning" not in done.stderr.lower()


def test_importing_the_operator_does_not_load_the_http_stack() -> None:
    """DAG files import the operators and the sensor on every parse; the hook, the trigger and requests wait."""
    probe = (
        "import sys, airflow_provider_feishu_hire.operators.referral_account\n"
        "print(sorted(m for m in sys.modules if m.startswith('airflow_provider_feishu_hire')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.strip().splitlines()[-1]
    assert "airflow_provider_feishu_hire.withdrawal" in loaded  # the probe did import the operator
    assert "client" not in loaded and "hooks" not in loaded

    probe = probe.replace("operators.referral_account", "operators.payroll")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    modules = set(ast.literal_eval(done.stdout.strip().splitlines()[-1]))
    assert "airflow_provider_feishu_hire.operators.payroll" in modules
    heavy = {"client", "hooks.feishu_hire", "hooks.ledger", "payroll", "payout"}
    assert not modules & {f"airflow_provider_feishu_hire.{name}" for name in heavy}

    probe = probe.replace("operators.payroll", "sensors.referral_account")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    modules = set(ast.literal_eval(done.stdout.strip().splitlines()[-1]))
    assert "airflow_provider_feishu_hire.sensors.referral_account" in modules
    heavy = {"client", "hooks.feishu_hire", "triggers.referral_account"}
    assert not modules & {f"airflow_provider_feishu_hire.{name}" for name in heavy}
