"""``make demo``: run the payroll example DAG against the bundled sandbox, then show the ledger and the payroll.

The payout ledger is the embedded SQLite file of the demo's Airflow home; the payroll CSV
is made from it. Everything it writes stays under ``.demo/`` in the project
(``FEISHU_HIRE_DEMO_DIR`` chooses another folder).

Airflow logs a few hundred lines for one ``airflow dags test``; a person wants to see the
run move and then the money. So the whole log goes to ``airflow.log`` in that folder, its
path is printed first, and the terminal shows one line per finished task, then the summary.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import IO

from airflow_provider_feishu_hire.withdrawal import plural

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("FEISHU_HIRE_DEMO_DIR") or ROOT / ".demo")
LOG = WORK / "airflow.log"
DAG_ID = "example_feishu_referral_payroll"
PORT = int(os.environ.get("FEISHU_SANDBOX_PORT", "8765"))


def sandbox_state(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/_sandbox/state", timeout=2) as answer:
        return json.loads(answer.read())["data"]


# `airflow dags test` names the task it starts, then logs each state the task reaches; what
# the provider's operators log in between says what the task did.
_STARTING = re.compile(r"\[DAG TEST\] starting task_id=(\S+) map_index=(-?\d+)")
_STATE = re.compile(r"Task instance state updated .*new_state=(\w+)")
_SAID = re.compile(r"\[(?:info|warning)\s*\] (.*?)\s+\[airflow\.task\.operators\.airflow_provider_feishu_hire\.")


def run_logged(command: list[str], env: dict[str, str], log: IO[str]) -> int:
    """Run ``command`` with all its output in ``log``; print one line per task state reached. Returns the exit code.

    The line gives the task, its state and the last thing the provider logged for it
    ("Withdrew referral account …"), so the terminal shows what moved without Airflow's noise.
    """
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    task, said = None, ""
    for line in process.stdout:
        log.write(line)
        if started := _STARTING.search(line):
            name, index = started.groups()
            task, said = (name if index == "-1" else f"{name}[{index}]"), ""
        elif said_now := _SAID.search(line):
            said = said_now.group(1)
        elif (reached := _STATE.search(line)) and task:
            print(f"  {task}: {reached.group(1)}" + (f" - {said}" if said else ""), flush=True)
    return process.wait()


def wait_for(url: str, process: subprocess.Popen) -> dict:
    for _ in range(100):
        if process.poll() is not None:
            sys.exit(f"the sandbox did not start (is port {PORT} taken? set FEISHU_SANDBOX_PORT)")
        try:
            return sandbox_state(url)
        except OSError:
            time.sleep(0.1)
    sys.exit("the sandbox did not answer within 10 seconds")


def expected_totals(accounts: dict) -> dict[tuple[str, str], Decimal]:
    """What the DAG's default account list (every enabled sandbox account) holds before the run."""
    totals: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for account in accounts.values():
        if account["status"] != 1:
            continue
        totals[("points", "")] += account["point_bonus"]
        for cash in account["cash_bonus"]:
            totals[("cash", cash["currency_type"])] += Decimal(str(cash["amount"]))
    return {key: value for key, value in totals.items() if value}


def show_ledger(path: Path, since: float) -> None:
    """The ledger rows this run wrote: one per withdrawal, with its status and what Feishu paid."""
    since_iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since - 1))
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT w.referral_account_id, w.external_order_id, w.status, w.point_bonus, "
            "group_concat(c.amount || ' ' || c.currency_type, ', ') FROM feishu_hire_withdrawal w "
            "LEFT JOIN feishu_hire_withdrawal_cash c USING (external_order_id) "
            "WHERE w.requested_at >= ? GROUP BY w.external_order_id ORDER BY w.referral_account_id",
            (since_iso,),
        ).fetchall()
    print(f"\nLedger {path} (feishu_hire_withdrawal, this run):\n")
    print(f"  {'account':<20} {'external_order_id':<20} {'status':<8} {'points':>6}  cash")
    for account, order, status, points, cash in rows:
        print(f"  {account:<20} {order:<20} {status:<8} {points if points is not None else '':>6}  {cash or ''}")


def main() -> None:
    from airflow_provider_feishu_hire.sandbox import DEFAULT_APP_ID, DEFAULT_APP_SECRET

    url = f"http://127.0.0.1:{PORT}"
    output_dir = WORK / "payroll"
    started = time.time()
    WORK.mkdir(parents=True, exist_ok=True)
    print(f"Full Airflow log: {LOG}", flush=True)
    with LOG.open("w") as log:
        sandbox = subprocess.Popen(
            [sys.executable, "-m", "airflow_provider_feishu_hire.sandbox", "--port", str(PORT)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            before = wait_for(url, sandbox)["accounts"]
            env = {
                **os.environ,
                "AIRFLOW_HOME": str(WORK / "airflow_home"),
                "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "example_dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW_CONN_FEISHU_HIRE_DEFAULT": json.dumps(
                    {
                        "conn_type": "feishu_hire",
                        "host": url,
                        "login": DEFAULT_APP_ID,
                        "password": DEFAULT_APP_SECRET,
                    }
                ),
            }
            airflow = [sys.executable, "-m", "airflow"]
            print("Preparing Airflow's database...", flush=True)
            if run_logged([*airflow, "db", "migrate"], env, log):
                sys.exit(f"airflow db migrate failed: see {LOG}")
            # Unattended: `airflow dags test` has no one to approve; `make airflow` shows the approval.
            conf = json.dumps({"output_dir": str(output_dir), "require_approval": False})
            print(f"Running {DAG_ID} against the sandbox (approval off: nobody is here to approve):", flush=True)
            if run_logged([*airflow, "dags", "test", DAG_ID, "--conf", conf], env, log):
                sys.exit(f"the DAG run failed: see {LOG}")
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=10)

    show_ledger(WORK / "airflow_home" / "feishu_hire_ledger.db", started)
    written = [p for p in output_dir.glob(f"{DAG_ID}/payroll_*.csv") if p.stat().st_mtime >= started]
    if not written:
        sys.exit(f"the DAG run wrote no payroll CSV into {output_dir}")
    path = max(written, key=lambda p: p.stat().st_mtime)
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    paid: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for row in rows:
        paid[(row["bonus_type"], row["currency"])] += Decimal(row["amount"])
    expected = expected_totals(before)

    print(f"\nPayroll CSV, made from the ledger: {path}\n")
    print(path.read_text())
    for (kind, currency), amount in sorted(paid.items()):
        print(f"  total {kind} {currency}".rstrip() + f": {amount}")
    if dict(paid) != expected:
        sys.exit(f"the CSV does not match the sandbox balances: expected {expected}")
    print(f"\n{plural(len(rows), 'row')}; totals match the sandbox balances to the cent.")


if __name__ == "__main__":
    main()
