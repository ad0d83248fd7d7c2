"""The sd_notify protocol as systemd sees it: a datagram socket the test listens on stands in
for the service manager (NOTIFY_SOCKET), and the real libsystemd (cysystemd) sends to it."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sslvpn.runtime.systemd import notify_systemd, watchdog_interval


class Manager:
    """The service manager's end of NOTIFY_SOCKET: every message with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(5)
        self.heard: list[tuple[float, str]] = []

    def next(self) -> str:
        message = self.sock.recv(4096).decode()
        self.heard.append((time.monotonic(), message))
        return message

    async def expect(self, wanted: str) -> float:
        """Wait (off the loop, bounded) for ``wanted``; when it arrived."""
        while await asyncio.to_thread(self.next) != wanted:
            pass
        return self.heard[-1][0]


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Manager]:
    path = tmp_path / "notify"
    listening = Manager(path)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    yield listening
    listening.sock.close()


async def test_ready_then_pings_from_the_loop_then_stopping(manager: Manager) -> None:
    task = asyncio.create_task(notify_systemd("serving OpenVPN clients"))
    assert await manager.expect("READY=1")
    assert await asyncio.to_thread(manager.next) == "STATUS=serving OpenVPN clients"
    first = await manager.expect("WATCHDOG=1")
    await manager.expect("WATCHDOG=1")
    time.sleep(0.6)  # a wedged loop (a long call on it): no ping meanwhile
    resumed = await manager.expect("WATCHDOG=1")
    pings = [at for at, message in manager.heard if message == "WATCHDOG=1"]
    assert max(b - a for a, b in zip(pings, pings[1:], strict=False)) >= 0.6
    assert resumed - first >= 0.6
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(manager.next) == "STOPPING=1"


def test_the_interval_is_half_of_what_systemd_asked_for_this_process() -> None:
    me = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({}) is None
