"""``make airflow-celery``: Airflow with CeleryExecutor and two workers, each as if on a machine of its own.

A real distributed deployment in separate processes: PostgreSQL (Airflow's metadata
database and, in a database of its own, the provider's payout ledger), Redis as the
Celery broker, Airflow's api-server, scheduler, dag-processor and triggerer, and two
Celery workers. Each worker has its own ``AIRFLOW_HOME``, ``TMPDIR``, working directory,
copy of the DAG files and log-server port, and reports its own name as
``task_instance.hostname``: the only state the workers share is the ledger (and the task
logs, as remote logging would share them), so anything the provider keeps on a worker's
disk by mistake shows up as a payment lost or made twice.

The stack runs the provider installed as a package, not the editable checkout, in a
virtualenv of its own (``.venv-celery``), built on first use and refreshed when the
provider's source changes: what is tested is what users install.

``tests/test_distributed.py`` drives :class:`CeleryStack` (kills a task's process, a
worker, a worker's main process...); ``python scripts/celery_stack.py`` starts the same stack
with the Feishu sandbox and the example DAGs for a person to click through, prints the
URL and the login, and stops everything on Ctrl-C.

Top-level imports are the standard library only: the workers import this module for
:func:`worker_hostname`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STACK_VENV = ROOT / ".venv-celery"
# celery 5.7.0 breaks the celery provider 3.26 ("cannot import name 'retry' from
# 'celery.backends.database'"). The postgres provider brings psycopg2 for the ledger.
STACK_PINS = ("apache-airflow-providers-celery==3.26.0", "celery>=5.5,<5.7", "apache-airflow-providers-postgres>=6.0")
EXAMPLE_DAGS = ("example_feishu_referral_payroll", "example_feishu_referral_batch_payroll")
APP_ID = "cli_sandbox_app"
APP_SECRET = "sandbox-app-secret-not-for-production"
FINISHED = ("success", "failed")


def worker_hostname() -> str:
    """The workers' ``[core] hostname_callable``: each reports its own name, as separate machines would.

    Both workers run on this one machine, so the default (the FQDN) would not tell them apart.
    """
    return os.environ["CELERY_STACK_WORKER"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the stack's own Python ------------------------------------------------------------------


def _provider_digest() -> str:
    """A digest of what goes into the provider's wheel: a change means reinstalling it."""
    digest = hashlib.sha256()
    files = [ROOT / "pyproject.toml", *sorted((ROOT / "airflow_provider_feishu_hire").rglob("*"))]
    for path in files:
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def stack_python(airflow_version: str | None = None, venv: Path = STACK_VENV) -> Path:
    """The stack's interpreter: a virtualenv with Airflow, the celery provider and this provider as a package.

    Built once (about two minutes) with the same Airflow as the calling interpreter; the
    provider alone is reinstalled (seconds) when its source changed. It is built from a
    copy of the source so that setuptools' ``build/`` never lands in (or leaks stale
    modules from) the work tree.
    """
    version = airflow_version or metadata.version("apache-airflow")
    requirements = [f"apache-airflow=={version}", *STACK_PINS]
    stamp = venv / ".installed.json"
    installed = json.loads(stamp.read_text()) if stamp.exists() else {}
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if installed.get("requirements") != requirements or not python.exists():
        shutil.rmtree(venv, ignore_errors=True)
        print(f"Building {venv} (Airflow {version}, Celery, the provider as a package)...", flush=True)
        _run_quietly([sys.executable, "-m", "venv", str(venv)])
        (venv / ".gitignore").write_text("*\n")  # as Python 3.13's venv does: never committed
        _run_quietly([*pip, *requirements])
        installed = {"requirements": requirements}
    digest = _provider_digest()
    if installed.get("provider") != digest:
        with tempfile.TemporaryDirectory(prefix="feishu-provider-src-") as source:
            for name in ("pyproject.toml", "README.md"):
                shutil.copy(ROOT / name, source)
            shutil.copytree(
                ROOT / "airflow_provider_feishu_hire",
                Path(source) / "airflow_provider_feishu_hire",
                ignore=shutil.ignore_patterns("__pycache__"),
            )
            _run_quietly([*pip, "--no-deps", "--force-reinstall", source])
        stamp.write_text(json.dumps({**installed, "provider": digest}))
    return python


def _run_quietly(command: list[str]) -> None:
    """Run an install step; its output only when it fails (pip's warnings would drown the test report)."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-5000:]}{done.stderr[-5000:]}")


# -- the servers under Airflow ----------------------------------------------------------------


class Postgres:
    """A throw-away PostgreSQL cluster on a free port (Debian's binaries; as ``postgres`` when we are root)."""

    def __init__(self, directory: Path, env: Mapping[str, str]) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not found:
            raise FileNotFoundError("PostgreSQL is not installed (Debian's postgresql)")
        self.bindir = found[-1].parent
        self.directory = directory
        self.port = free_port()
        self.env = dict(env)
        self.prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=120, env=self.env)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args[:1])} failed: {done.stdout}{done.stderr}")

    def start(self, *databases: str) -> None:
        self.directory.mkdir(parents=True)
        if self.prefix:
            shutil.chown(self.directory, "postgres", "postgres")
        data = str(self.directory / "data")
        self._run(str(self.bindir / "initdb"), "-D", data, "-A", "trust", "-U", "postgres")
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        )
        log = str(self.directory / "postgres.log")
        self._run(str(self.bindir / "pg_ctl"), "-D", data, "-o", options, "-l", log, "-w", "start")
        for name in databases:
            self._run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)

    def stop(self) -> None:
        if (self.directory / "data" / "postmaster.pid").exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.directory / "data"), "-m", "immediate", "-w", "stop")

    def uri(self, database: str, scheme: str = "postgresql") -> str:
        return f"{scheme}://postgres@127.0.0.1:{self.port}/{database}"


# -- the stack ------------------------------------------------------------------------------


class CeleryStack:
    """PostgreSQL, Redis, Airflow's api-server, scheduler, dag-processor, triggerer and N Celery workers.

    Every process starts a session of its own. Airflow puts each task process in a
    process group of its own (so killing a worker's group would miss it) but never in a
    session of its own, so the session is what finds every process a worker started,
    orphans included: :meth:`kill_worker` and :meth:`stop` end them by it.

    ``sandbox_url`` points ``feishu_hire_default`` at a Feishu sandbox the caller runs (a
    test's in-process one); without it the stack starts one with the demo accounts and
    Feishu's rate limits (``sandbox_args`` are more command-line options for it).

    Timings are tuned for failures to be handled in seconds: a task nobody heartbeats
    for is failed after 20 s, its retry starts 2 s later.
    """

    def __init__(
        self,
        *,
        sandbox_url: str | None = None,
        sandbox_args: Iterable[str] = (),
        workers: int = 2,
        concurrency: int = 2,
        api_port: int | None = None,
        python: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.python = python
        self.sandbox_url = sandbox_url
        self.sandbox_args = list(sandbox_args)
        self.workers = workers
        self.concurrency = concurrency
        self.api_port = api_port or free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.extra_env = dict(extra_env or {})
        self.worker_log_ports = {number: free_port() for number in range(1, workers + 1)}
        self.root = Path(tempfile.mkdtemp(prefix="feishu-celery-stack-"))
        self.root.chmod(0o755)  # PostgreSQL runs as its own user under it
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.sessions: dict[int, str] = {}  # every session started (restarted workers too) -> its process name
        self.postgres: Postgres | None = None
        self.env: dict[str, str] = {}
        self._token: str | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> CeleryStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 240) -> CeleryStack:
        """Start everything; return once Airflow is healthy, every worker is ready and the examples are parsed."""
        deadline = time.monotonic() + timeout
        self.python = self.python or stack_python()
        base = dict(os.environ)
        for name in ("PYTHONPATH", "VIRTUAL_ENV"):  # the caller's (say the editable .venv's) must not leak in
            base.pop(name, None)
        self.postgres = Postgres(self.root / "postgres", base)
        self.postgres.start("airflow", "ledger")
        redis_port = free_port()
        self._spawn(
            "redis",
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", str(self.root)],
            base,
        )  # fmt: skip
        if self.sandbox_url is None:
            sandbox_port = free_port()
            self.sandbox_url = f"http://127.0.0.1:{sandbox_port}"
            self._spawn(
                "sandbox",
                [str(self.python), "-m", "airflow_provider_feishu_hire.sandbox", "--port", str(sandbox_port),
                 *self.sandbox_args],
                base,
            )  # fmt: skip
        self.env = self._airflow_env(base, redis_port)
        self._airflow("db", "migrate")
        self._spawn("api-server", self._airflow_cmd("api-server", "--host", "127.0.0.1", "--port", str(self.api_port)))
        for component in ("scheduler", "dag-processor", "triggerer"):
            self._spawn(component, self._airflow_cmd(component))
        for number in range(1, self.workers + 1):
            self.start_worker(number)
        self._wait_until_healthy(deadline)
        for number in range(1, self.workers + 1):
            self._wait_for_worker(number, deadline)
        self.wait_for_dags(EXAMPLE_DAGS, timeout=max(10.0, deadline - time.monotonic()))
        return self

    def stop(self, grace: float = 10) -> None:
        """SIGTERM every session, SIGKILL what is left after ``grace`` seconds; stop PostgreSQL; remove the files."""
        for session in self.sessions:
            _signal_session(session, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(_session_pids(session) for session in self.sessions) and time.monotonic() < deadline:
            time.sleep(0.2)
        for session in self.sessions:
            _signal_session(session, signal.SIGKILL)
        for process in self.processes.values():
            process.wait()
        if self.postgres:
            try:
                self.postgres.stop()
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                print(f"PostgreSQL did not stop cleanly: {error}", file=sys.stderr)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- processes ----------------------------------------------------------------------------

    @property
    def ledger_uri(self) -> str:
        """The payout ledger's database (``feishu_hire_ledger``), in the same PostgreSQL as Airflow's."""
        assert self.postgres is not None
        return self.postgres.uri("ledger")

    def _airflow_env(self, base: dict[str, str], redis_port: int) -> dict[str, str]:
        assert self.postgres is not None and self.python is not None
        home, dags = self.root / "airflow", self.root / "dags"
        for folder in (home, dags, self.root / "logs"):
            folder.mkdir()
        for dag_file in (ROOT / "example_dags").glob("*.py"):
            shutil.copy(dag_file, dags)
        return {
            **base,
            "PATH": f"{self.python.parent}{os.pathsep}{base.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            # Every process must agree on these three, or tokens and secrets do not travel.
            "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(64),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.postgres.uri("airflow", "postgresql+psycopg2"),
            "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": self.postgres.uri("airflow", "db+postgresql"),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.concurrency),
            # The task logs in one folder, as remote logging would keep them: the UI shows every
            # try's log whichever worker ran it. The provider never reads them.
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.root / "logs"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.worker_log_ports[1]),  # each worker: its own
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            # Failures handled in seconds, not minutes: a task nobody heartbeats for fails after
            # 20 s (checked every 2 s), a retry waits 2 s, a message a dead worker took is
            # re-queued after 60 s, and new DAG files are seen within 5 s.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "60",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "10",
            "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW_CONN_FEISHU_HIRE_DEFAULT": json.dumps(
                {
                    "conn_type": "feishu_hire",
                    "host": self.sandbox_url,
                    "login": APP_ID,
                    "password": APP_SECRET,
                    "port": urllib.parse.urlsplit(self.sandbox_url).port,
                }
            ),
            "AIRFLOW_CONN_FEISHU_HIRE_LEDGER": self.postgres.uri("ledger"),
            **self.extra_env,
        }

    def _airflow_cmd(self, *args: str) -> list[str]:
        return [str(self.python), "-m", "airflow", *args]

    def _airflow(self, *args: str) -> None:
        done = subprocess.run(
            self._airflow_cmd(*args), env=self.env, cwd=self.root, capture_output=True, text=True, timeout=300
        )
        if done.returncode:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")

    def _spawn(
        self, name: str, command: list[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        with (self.root / f"{name}.out").open("ab") as output:
            process = subprocess.Popen(
                command,
                env=dict(env or self.env),
                cwd=cwd or self.root,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes[name] = process
        self.sessions[process.pid] = name
        return process

    def output(self, name: str, tail: int = 4000) -> str:
        """The end of a process's output (``worker1``, ``scheduler``...), for failure messages."""
        path = self.root / f"{name}.out"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    # -- workers ------------------------------------------------------------------------------

    def start_worker(self, number: int) -> subprocess.Popen[bytes]:
        """Worker ``number`` with its own AIRFLOW_HOME, TMPDIR, working directory and DAG files, as on a machine."""
        machine = self.root / f"worker{number}"
        for folder in ("home", "tmp", "dags"):
            (machine / folder).mkdir(parents=True, exist_ok=True)
        for dag_file in (self.root / "dags").glob("*.py"):
            shutil.copy(dag_file, machine / "dags")
        name = f"worker{number}"
        env = {
            **self.env,
            "AIRFLOW_HOME": str(machine / "home"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(machine / "dags"),
            "TMPDIR": str(machine / "tmp"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.worker_log_ports[number]),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "celery_stack.worker_hostname",
            "PYTHONPATH": str(Path(__file__).resolve().parent),  # for worker_hostname only
            "CELERY_STACK_WORKER": name,
        }
        (self.root / f"{name}.out").unlink(missing_ok=True)  # a restarted worker's "ready" must be its own
        command = self._airflow_cmd(
            "celery", "worker", "--concurrency", str(self.concurrency), "--celery-hostname", f"{name}@%h"
        )
        return self._spawn(name, command, env, cwd=machine)

    def kill_worker(self, number: int) -> list[int]:
        """SIGKILL worker ``number`` and every process it started, task processes included: its machine died."""
        leader = self.processes[f"worker{number}"]
        killed = _signal_session(leader.pid, signal.SIGKILL)
        leader.wait()
        return killed

    def kill_worker_main_process(self, number: int) -> None:
        """SIGKILL only the Celery main process of worker ``number``.

        Its pool processes, which supervise the tasks and send their heartbeats, die with it
        (billiard sets PDEATHSIG); the task processes, in process groups of their own, run on
        as orphans that nobody heartbeats for: after the heartbeat timeout Airflow retries
        them elsewhere while they are still running.
        """
        leader = self.processes[f"worker{number}"]
        os.kill(leader.pid, signal.SIGKILL)
        leader.wait()

    def restart_worker(self, number: int, timeout: float = 120) -> None:
        """Start worker ``number`` again (after it was killed) and wait until it takes tasks."""
        self.start_worker(number)
        self._wait_for_worker(number, time.monotonic() + timeout)

    def worker_of(self, pid: int) -> str | None:
        """The worker (``worker1``...) whose session a process belongs to, orphans of a killed worker included."""
        try:
            return self.sessions.get(os.getsid(pid))
        except ProcessLookupError:
            return None

    def task_pid(self, ti_id: str) -> int | None:
        """The process running a task try: Airflow titles it ``airflow worker -- <task instance id>``."""
        title = f"airflow worker -- {ti_id}".encode()
        for pid in _pids():
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == title:
                    return pid
            except OSError:
                pass
        return None

    # -- readiness ----------------------------------------------------------------------------

    def _wait_until_healthy(self, deadline: float) -> None:
        while True:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited during start-up ({process.returncode}):\n{self.output(name)}")
            try:
                health = self._request("GET", "/api/v2/monitor/health", auth=False)
                if all(part.get("status") == "healthy" for part in health.values()):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Airflow was not healthy at {self.url}:\n{self.output('scheduler')}")
            time.sleep(0.5)

    def _wait_for_worker(self, number: int, deadline: float) -> None:
        """Until Celery logs ``worker<number>@<host> ready.``: from then on it consumes tasks."""
        name = f"worker{number}"
        ready = re.compile(rf"\b{name}@\S+ ready\.")
        while not ready.search(self.output(name, tail=1_000_000)):
            if self.processes[name].poll() is not None:
                raise RuntimeError(f"{name} exited:\n{self.output(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} was not ready:\n{self.output(name)}")
            time.sleep(0.5)

    def wait_for_dags(self, dag_ids: Iterable[str], timeout: float = 60) -> None:
        """Until the dag-processor has parsed them: triggering a DAG fails before."""
        deadline = time.monotonic() + timeout
        for dag_id in dag_ids:
            while True:
                try:
                    self._request("GET", f"/api/v2/dags/{dag_id}")
                    break
                except urllib.error.HTTPError as error:
                    if error.code != 404 or time.monotonic() > deadline:
                        raise RuntimeError(f"{dag_id} was not parsed:\n{self.output('dag-processor')}") from None
                time.sleep(0.5)

    # -- the REST API -------------------------------------------------------------------------

    @property
    def login(self) -> tuple[str, str]:
        """The simple auth manager's user and the password it generated into the api-server's AIRFLOW_HOME."""
        generated = Path(self.env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
        return "admin", json.loads(generated.read_text())["admin"]

    def _request(self, method: str, path: str, body: object = None, *, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth:
            if self._token is None:
                user, password = self.login
                answer = self._request("POST", "/auth/token", {"username": user, "password": password}, auth=False)
                self._token = answer["access_token"]
            headers["Authorization"] = f"Bearer {self._token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read() or b"null")

    def trigger(self, dag_id: str, conf: Mapping[str, Any]) -> str:
        """Trigger a DAG run through the REST API; returns its run id."""
        answer = self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": dict(conf)})
        return str(answer["dag_run_id"])

    def state(self, dag_id: str, run_id: str) -> str:
        return str(self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{_quote(run_id)}")["state"])

    def wait(self, dag_id: str, run_id: str, timeout: float = 180) -> str:
        """Until the run has finished or ``timeout`` passed; returns its state."""
        deadline = time.monotonic() + timeout
        while (state := self.state(dag_id, run_id)) not in FINISHED and time.monotonic() < deadline:
            time.sleep(1)
        return state

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The run's task instances (their latest tries): state, try_number, hostname (the worker), id..."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{_quote(run_id)}/taskInstances?limit=1000"
        return list(self._request("GET", path)["task_instances"])

    def tries(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict[str, Any]]:
        """Every try of one task instance, finished or not, each with the worker (``hostname``) that ran it."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{_quote(run_id)}/taskInstances/{task_id}/{map_index}/tries?limit=100"
        return list(self._request("GET", path)["task_instances"])

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
        """A task's return value."""
        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{_quote(run_id)}/taskInstances/{task_id}/xcomEntries/return_value"
            f"?map_index={map_index}&deserialize=true"
        )
        return self._request("GET", path)["value"]


def _quote(run_id: str) -> str:
    return urllib.parse.quote(run_id, safe="")


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _session_pids(session: int) -> list[int]:
    """The live processes of a session (zombies are dead already: only their parent's wait() is missing)."""
    found = []
    for pid in _pids():
        try:
            if os.getsid(pid) == session and pid != os.getpid() and not _zombie(pid):
                found.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    return found


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True  # gone


def _signal_session(session: int, sig: int) -> list[int]:
    """Signal every process of a session; returns their pids."""
    pids = _session_pids(session)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return pids


def main() -> None:
    stack = CeleryStack(api_port=int(os.environ.get("AIRFLOW_PORT", "8080")))
    # A plain `kill` must stop every process of the stack too, not orphan them.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        started = time.monotonic()
        stack.start()
        user, password = stack.login
        print(
            f"\nAirflow with CeleryExecutor and {stack.workers} workers is up ({time.monotonic() - started:.0f}s):"
            f" {stack.url}\n"
            f"Login: {user} / {password}  (the simple auth manager's, generated into "
            f"{stack.env['AIRFLOW_HOME']}/simple_auth_manager_passwords.json.generated)\n"
            f"Feishu sandbox: {stack.sandbox_url}  (feishu_hire_default points at it)\n"
            f"Payout ledger: {stack.ledger_uri}  (feishu_hire_ledger)\n"
            f"Each process's output: {stack.root}/<name>.out\n"
            "Trigger example_feishu_referral_payroll: each task's Hostname says which worker ran it.\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nStopping the stack...", flush=True)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
