"""``make demo`` as a newcomer sees it: progress and the money in the terminal, Airflow's own log in a file.

Runs scripts/demo.py itself (its own sandbox, ``airflow dags test`` of the payroll example)
in a temporary folder, on a free port.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_SECRET
from tests.conftest import ROOT, free_port

TASKS = ("preview_payout", "approve_payout", "withdraw_referral_account", "reconcile_with_feishu", "export_payroll")


def test_the_demo_shows_progress_and_the_summary_and_keeps_airflows_log_in_a_file(tmp_path: Path) -> None:
    env = {**os.environ, "FEISHU_HIRE_DEMO_DIR": str(tmp_path), "FEISHU_SANDBOX_PORT": str(free_port())}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")], env=env, capture_output=True, text=True, timeout=600
    )
    shown = done.stdout + done.stderr
    assert done.returncode == 0, shown
    log = tmp_path / "airflow.log"
    assert shown.splitlines()[0] == f"Full Airflow log: {log}"
    # A screenful, not Airflow's hundreds of lines: every task's outcome and the money.
    assert len(shown.splitlines()) < 60, shown
    assert "[DAG TEST]" not in shown and "[info" not in shown
    for task in TASKS:
        assert re.search(rf"^  {task}(\[\d+\])?: success", shown, re.MULTILINE), (task, shown)
    assert "Withdrew referral account 7001000000000000001: points 1200, cash 3000.00 CNY" in shown
    assert "totals match the sandbox balances to the cent" in shown
    # Nothing is lost: the file holds Airflow's whole log, and the reconciliation as a person reads it.
    kept = log.read_text()
    assert len(kept.splitlines()) > 100 and "[DAG TEST] end task task_id=export_payroll" in kept
    assert re.search(r"Feishu agrees with the ledger on the points of 5 referral accounts .* UTC to .* UTC", kept)
    assert "Not compared: cash" in kept
    assert DEFAULT_APP_SECRET not in shown + kept
