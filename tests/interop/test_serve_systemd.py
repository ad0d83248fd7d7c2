"""`sslvpn serve` as systemd runs it: the test is the service manager at NOTIFY_SOCKET.

The gateway, started in its namespace with NOTIFY_SOCKET and WATCHDOG_USEC set, must say
READY=1 only once it listens, ping the watchdog at half the interval while it runs, and
say STOPPING=1 on SIGTERM before it exits cleanly. Namespaces use the prefix ``m1s``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.conftest import Topology, build_topology
from tests.netns import wait_until

pytestmark = pytest.mark.interop

WATCHDOG_USEC = 1_000_000  # a ping every 0.5 s


class Manager:
    """Every message the gateway sends to NOTIFY_SOCKET: when, what, and whether the
    gateway's log said it listens by then."""

    def __init__(self, path: Path, gateway_log: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self._log = gateway_log
        self.heard: list[tuple[float, str, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            text = self._log.read_text() if self._log.exists() else ""
            listening = "listening on udp" in text and "listening on tcp" in text
            self.heard.append((time.monotonic(), message, listening))

    def messages(self) -> list[str]:
        return [message for _, message, _ in self.heard]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Topology, Manager]]:
    work = tmp_path_factory.mktemp("m1s-systemd")
    manager = Manager(work / "notify", work / "gateway.log")
    env = {"NOTIFY_SOCKET": str(work / "notify"), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    try:
        with build_topology(work, prefix="m1s", serve_args=("--no-portal",),
                            serve_env=env) as topo:
            yield topo, manager
    finally:
        manager.close()


def test_ready_once_listening_then_watchdog_then_stopping(
        managed: tuple[Topology, Manager]) -> None:
    topo, manager = managed
    assert wait_until(lambda: "READY=1" in manager.messages(), 20), manager.heard
    [(ready_at, _, listening)] = [h for h in manager.heard if h[1] == "READY=1"]
    assert listening  # not before clients can connect
    assert "STATUS=serving OpenVPN clients" in manager.messages()
    assert wait_until(lambda: manager.messages().count("WATCHDOG=1") >= 3, 5), manager.heard
    pings = [at for at, message, _ in manager.heard if message == "WATCHDOG=1"]
    assert pings[0] - ready_at < 1.0 and pings[2] - pings[0] < 2.0
    assert topo.gateway is not None
    assert topo.lab.stop(topo.gateway) == 0  # SIGTERM: a clean stop
    assert wait_until(lambda: "STOPPING=1" in manager.messages(), 5), manager.heard
