"""``make airflow`` keeps its UI on this machine: the API server it starts answers on loopback only.

It prints its login in the clear, so the UI must not answer on the machine's network
addresses unless the user asks (``AIRFLOW_HOST``). Checked against the real ``airflow
standalone`` that scripts/local_airflow.py starts, by connecting to each of the machine's
non-loopback IPv4 addresses.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LocalAirflow, free_port


def non_loopback_addresses() -> list[str]:
    """This machine's IPv4 addresses other than 127.0.0.0/8: from ``ip -4 addr``, else the routing table's choice."""
    found: set[str] = set()
    if shutil.which("ip"):
        listing = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
        for line in listing.splitlines():
            fields = line.split()
            if "inet" in fields:
                found.add(fields[fields.index("inet") + 1].split("/")[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # UDP connect sends nothing; it only picks the outgoing address
            found.add(probe.getsockname()[0])
        except OSError:
            pass
    return sorted(a for a in found if not ipaddress.ip_address(a).is_loopback and a != "0.0.0.0")


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAirflow]:
    home = tmp_path_factory.mktemp("local_airflow")
    local = LocalAirflow(home, port=free_port(), sandbox_port=free_port(), free_log_ports=True)
    try:
        local.start(log=home / "standalone.log")
        yield local
    finally:
        local.stop()


def test_the_api_server_is_not_reachable_from_the_network(airflow: LocalAirflow) -> None:
    addresses = non_loopback_addresses()
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address to try the API server on")
    port = int(airflow.url.rsplit(":", 1)[1])
    with urllib.request.urlopen(f"{airflow.url}/api/v2/monitor/health", timeout=10) as answer:
        assert json.loads(answer.read())["metadatabase"]["status"] == "healthy"  # it is up, on loopback
    reachable = [address for address in addresses if answers(address, port)]
    assert reachable == [], f"the API server with the printed login answers on {reachable}:{port}"


def test_a_user_can_open_it_on_purpose(tmp_path: Path) -> None:
    """``AIRFLOW_HOST`` reaches the config without starting anything; the URL printed stays one that works."""
    everywhere = LocalAirflow(tmp_path, host="0.0.0.0", port=18080)
    everywhere.write_config()
    assert "host = 0.0.0.0" in (tmp_path / "airflow.cfg").read_text()
    assert everywhere.url == "http://127.0.0.1:18080"
