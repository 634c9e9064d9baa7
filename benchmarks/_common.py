"""Helpers shared by the benchmark scripts: a sandbox in its own process, a self-signed certificate."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def self_signed_certificate(folder: Path) -> tuple[str, str]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


@contextmanager
def sandbox_process(accounts: list[dict] | None = None, *args: str) -> Iterator[str]:
    """Run the sandbox in its own process, so its work never counts against the process measured."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "airflow_provider_feishu_hire.sandbox", "--port", str(port := free_port())]
        if accounts is not None:
            path = Path(folder) / "accounts.json"
            path.write_text(json.dumps({"accounts": accounts}))
            command += ["--accounts", str(path)]
        process = subprocess.Popen([*command, *args], stdout=subprocess.DEVNULL)
        scheme = "https" if "--tls-cert" in args else "http"
        url = f"{scheme}://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                        break
                except OSError:
                    time.sleep(0.05)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=10)


def sandbox_state(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/_sandbox/state", timeout=30) as answer:
        return json.loads(answer.read())["data"]
