"""``make airflow``: a local Airflow with this provider, the example DAGs and the Feishu sandbox.

``feishu_hire_default`` points at the sandbox, connection testing is on, and the URL and
login are printed. The API server listens on 127.0.0.1 only: the login is printed in the
clear, and Airflow's own default (0.0.0.0) would offer it to the whole network;
``AIRFLOW_HOST=0.0.0.0`` (or one of the machine's addresses) opens it on purpose.
Ctrl-C stops Airflow and the sandbox. Everything it writes stays under ``.airflow/`` in
the project (or the home given to :class:`LocalAirflow`). The browser test starts the
same thing on free ports.
"""

from __future__ import annotations

import configparser
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cryptography.fernet import Fernet

from airflow_provider_feishu_hire.defaults import DEFAULT_FEISHU_HIRE_CONN_ID

ROOT = Path(__file__).resolve().parent.parent
APP_ID = "cli_sandbox_app"
APP_SECRET = "sandbox-app-secret-not-for-production"
ADMIN = "admin"  # triggers runs, manages connections
APPROVER = "approver"  # Airflow's "user" role: may answer a run's approval, not change connections


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalAirflow:
    """Airflow standalone in ``home``, its settings in ``home/airflow.cfg``.

    The settings live in the config file, not only in this process's environment, so every
    ``airflow`` command run with ``AIRFLOW_HOME`` set to ``home`` (``airflow connections
    test``, ``airflow dags trigger``) sees what the UI sees. The payout ledger and the
    payroll CSVs beside it are under ``home`` too.
    """

    def __init__(
        self,
        home: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        sandbox_port: int = 8765,
        free_log_ports: bool = False,
    ) -> None:
        self.home = home
        self.host = host
        # Every address (0.0.0.0, ::) includes loopback; a single other address does not.
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        self.sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        self.settings: dict[str, dict[str, str]] = {
            "core": {
                "dags_folder": str(ROOT / "example_dags"),
                "load_examples": "False",
                "dags_are_paused_at_creation": "False",
                "test_connection": "Enabled",
                "parallelism": "4",  # LocalExecutor starts one process per slot
                # A payout needs two people: whoever triggers a run cannot approve it.
                "simple_auth_manager_users": f"{ADMIN}:admin,{APPROVER}:user",
            },
            "api": {"host": host, "port": str(port), "base_url": self.url},
        }
        if free_log_ports:
            self.settings["logging"] = {
                "worker_log_server_port": str(free_port()),
                "trigger_log_server_port": str(free_port()),
            }
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),  # standalone starts `airflow ...`
            "AIRFLOW_HOME": str(home),
        }
        self._sandbox: subprocess.Popen[bytes] | None = None
        self._airflow: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        """Merge :attr:`settings` into ``home/airflow.cfg``, keeping everything else already there.

        A new file also gets the two secrets Airflow would generate for itself: the Fernet
        key that encrypts stored connections, and the secret every component signs its API
        tokens with (one per home, so they survive a restart).
        """
        path = self.home / "airflow.cfg"
        config = configparser.ConfigParser(interpolation=None)  # Airflow's log formats hold % signs
        config.read(path)
        generated = {
            ("core", "fernet_key"): lambda: Fernet.generate_key().decode(),
            ("api_auth", "jwt_secret"): lambda: secrets.token_urlsafe(32),
        }
        for (section, option), make in generated.items():
            if not config.get(section, option, fallback=""):
                config.read_dict({section: {option: make()}})
        config.read_dict(self.settings)
        self.home.mkdir(parents=True, exist_ok=True)
        with path.open("w") as handle:
            config.write(handle)
        path.chmod(0o600)  # it holds the Fernet key

    def airflow(self, *args: str) -> None:
        subprocess.run([sys.executable, "-m", "airflow", *args], env=self.env, check=True, stdout=subprocess.DEVNULL)

    def start(self, log: Path | None = None) -> None:
        self.write_config()
        port = self.sandbox_url.rsplit(":", 1)[1]
        self._sandbox = subprocess.Popen(
            [sys.executable, "-m", "airflow_provider_feishu_hire.sandbox", "--port", port], stdout=subprocess.DEVNULL
        )
        self.airflow("db", "migrate")
        subprocess.run(
            [sys.executable, "-m", "airflow", "connections", "delete", DEFAULT_FEISHU_HIRE_CONN_ID],
            env=self.env,
            capture_output=True,
        )
        conn = {
            "conn_type": "feishu_hire",
            "host": self.sandbox_url,
            "login": APP_ID,
            "password": APP_SECRET,
            # Airflow 3.3.2's connection list tests a connection that has no port with port 0,
            # then refuses it ("host or port differs from the stored connection"); the form
            # shows Port for that reason, and this connection fills it in as a person would.
            "port": int(port),
        }
        self.airflow("connections", "add", DEFAULT_FEISHU_HIRE_CONN_ID, "--conn-json", json.dumps(conn))
        output = log.open("wb") if log else None
        self._airflow = subprocess.Popen(
            [sys.executable, "-m", "airflow", "standalone"],
            env=self.env,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            start_new_session=True,  # one signal stops the api-server, scheduler, dag-processor and triggerer
        )
        self._wait_until_healthy()

    def _wait_until_healthy(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._airflow is not None
            if self._airflow.poll() is not None:
                raise RuntimeError("airflow standalone exited during start-up")
            try:
                with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=2) as answer:
                    health = json.loads(answer.read())
                if all(part.get("status") == "healthy" for part in health.values()):
                    return
            except OSError:
                pass
            time.sleep(1)
        raise RuntimeError(f"Airflow was not healthy at {self.url} within {timeout:.0f}s")

    @property
    def login(self) -> tuple[str, str]:
        return ADMIN, self.password(ADMIN)

    @property
    def approver(self) -> tuple[str, str]:
        return APPROVER, self.password(APPROVER)

    def password(self, user: str) -> str:
        """The password Airflow's simple auth manager generated for ``user`` on first start."""
        passwords = json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())
        return str(passwords[user])

    def stop(self) -> None:
        if self._airflow:
            _stop_group(self._airflow)
        if self._sandbox and self._sandbox.poll() is None:
            self._sandbox.terminate()
            self._sandbox.wait(timeout=10)


def _stop_group(leader: subprocess.Popen[bytes], grace: float = 30) -> None:
    """SIGTERM the whole process group, wait until every member is gone, then SIGKILL what is left.

    Waiting for `airflow standalone` alone is not enough: its scheduler can outlive it
    and keep a test run's output open.
    """

    def group_alive() -> bool:
        leader.poll()  # reap the leader, or it counts as a member forever
        try:
            os.killpg(leader.pid, 0)
        except ProcessLookupError:
            return False
        return True

    if not group_alive():
        return
    os.killpg(leader.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while group_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    if group_alive():
        os.killpg(leader.pid, signal.SIGKILL)
    leader.wait()


def main() -> None:
    local = LocalAirflow(
        ROOT / ".airflow",
        host=os.environ.get("AIRFLOW_HOST") or "127.0.0.1",
        port=int(os.environ.get("AIRFLOW_PORT", "8080")),
        sandbox_port=int(os.environ.get("FEISHU_SANDBOX_PORT", "8765")),
    )
    # A plain `kill` must stop Airflow's process group and the sandbox too, not orphan them.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        local.start(log=ROOT / ".airflow" / "standalone.log")
        (user, password), (approver, approver_password) = local.login, local.approver
        reach = (
            "Only this machine can reach it; AIRFLOW_HOST=0.0.0.0 make airflow opens it to the network."
            if local.host == "127.0.0.1"
            else f"It listens on {local.host}: other machines can reach it (and its login)."
        )
        print(
            f"\nAirflow is up: {local.url}  (login: {user} / {password}; to approve a payout someone else "
            f"triggered: {approver} / {approver_password})\n"
            f"{reach}\n"
            f"Feishu sandbox: {local.sandbox_url}  (feishu_hire_default points at it)\n"
            f"Logs: {ROOT / '.airflow' / 'standalone.log'}\n"
            "Trigger example_feishu_referral_payroll, or test feishu_hire_default under Admin > Connections.\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nStopping Airflow and the sandbox...", flush=True)
    finally:
        local.stop()


if __name__ == "__main__":
    main()
