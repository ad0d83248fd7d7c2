"""The control socket: a client in another thread drives the gateway's registry; and
`ThreadSafeControl`, the same for a thread in the gateway's own process (the portal's)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sslvpn.runtime.control import SessionInfo, ThreadSafeControl, TrafficSample, TunnelStatus
from sslvpn.runtime.control_server import ControlClient, ControlError, ControlServer
from sslvpn.runtime.gateway import Gateway, GatewayOptions
from sslvpn.runtime.tun import MemoryTun
from tests.runtime.fakes import VERIFY, FakeCore, MemoryPolicy, decided, ipv4


async def test_sessions_kick_and_traffic_over_the_socket(tmp_path: Path) -> None:
    policy = MemoryPolicy()
    policy.add("a1", "alice")
    policy.add("b2", "bob")
    gateway = Gateway(
        MemoryTun(),
        GatewayOptions(pool=ipaddress.IPv4Network("10.8.0.0/24"),
                       vpc_networks=(ipaddress.ip_network("10.10.0.0/24"),)),
        policy,
    )
    await gateway.start()
    cores = []
    for serial in ("a1", "b2"):
        core = FakeCore()
        client = gateway.new_session(core, transmit=lambda _d: None, protocol="tcp",
                                     real_address="198.18.0.2:4000", on_closed=lambda: None)
        assert client.driver is not None
        client.driver.feed(VERIFY + serial.encode())
        await decided(core)
        client.driver.feed(ipv4(str(ipaddress.ip_address(client.vpn_text)), "10.10.0.10"))
        cores.append(core)
    server = ControlServer(gateway, tmp_path / "control.sock")
    await server.start()
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "control.sock").st_mode) == 0o600
        remote = ControlClient(tmp_path / "control.sock")
        sessions = await asyncio.to_thread(remote.list_sessions)
        assert [(s.user, s.vpn_address, s.protocol) for s in sessions] == [
            ("alice", "10.8.0.2", "tcp"), ("bob", "10.8.0.3", "tcp")]
        assert sessions[0].connected_at.tzinfo is not None
        traffic = await asyncio.to_thread(remote.traffic)
        assert traffic.bytes_in == 2 * 24
        assert await asyncio.to_thread(remote.kick, sessions[0].session_id) is True
        assert await asyncio.to_thread(remote.kick, "nope") is False
        assert cores[0].closed
        assert await asyncio.to_thread(remote.kick_user, "bob") == 1
        assert await asyncio.to_thread(remote.kick_certificate, "a1") == 0
        assert await asyncio.to_thread(remote.tunnel_status) == []
        with pytest.raises(ControlError, match="no IPsec service"):
            await asyncio.to_thread(remote.tunnel_action, "t1", "restart")
        asked: list[tuple[str, str]] = []

        def act(name: str, action: str) -> str:
            if action == "bogus":
                raise ValueError(f"unknown tunnel action {action!r}")
            asked.append((name, action))
            return f"tunnel {name}: done"

        gateway.tunnel_action_handler = act
        assert await asyncio.to_thread(remote.tunnel_action, "t1", "rekey-ike") == "tunnel t1: done"
        with pytest.raises(ControlError, match="unknown tunnel action 'bogus'"):
            await asyncio.to_thread(remote.tunnel_action, "t1", "bogus")
        assert asked == [("t1", "rekey-ike")]
        assert await asyncio.to_thread(remote.list_sessions) == []
    finally:
        await server.close()
    assert not (tmp_path / "control.sock").exists()


def test_no_gateway_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="no gateway running"):
        ControlClient(tmp_path / "control.sock").list_sessions()


async def test_bad_requests_are_answered_not_crashed(tmp_path: Path) -> None:
    server = ControlServer(
        Gateway(MemoryTun(), GatewayOptions(pool=ipaddress.IPv4Network("10.8.0.0/24"),
                                            vpc_networks=()), MemoryPolicy()),
        tmp_path / "c.sock",
    )
    await server.start()
    try:
        for line in (b"not json\n", b'{"op": "explode"}\n', b'{"op": "kick"}\n'):
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "c.sock"))
            writer.write(line)
            answer = await reader.readline()
            writer.close()
            assert b'"ok": false' in answer
    finally:
        await server.close()


class _Recording:
    """A GatewayControl that records the thread each call ran on."""

    def __init__(self) -> None:
        self.threads: list[int] = []
        self.kicked: list[str] = []

    def list_sessions(self) -> list[SessionInfo]:
        self.threads.append(threading.get_ident())
        return []

    def kick(self, session_id: str, reason: str = "kicked by admin") -> bool:
        self.kicked.append(session_id)
        return True

    def kick_certificate(self, serial: str, reason: str = "certificate revoked") -> int:
        return 0

    def traffic(self) -> TrafficSample:
        return TrafficSample(at=datetime.now(UTC), bytes_in=0, bytes_out=0)

    def tunnel_status(self) -> list[TunnelStatus]:
        return []

    def tunnel_action(self, name: str, action: str) -> str:
        return f"{action} {name}"


async def test_another_threads_calls_run_on_the_gateways_loop_within_a_timeout() -> None:
    gateway = _Recording()
    control = ThreadSafeControl(gateway, asyncio.get_running_loop(), timeout=0.2)
    assert await asyncio.to_thread(control.list_sessions) == []
    assert await asyncio.to_thread(control.tunnel_action, "t1", "down") == "down t1"
    assert control.list_sessions() == []  # from the loop itself: at once, not a deadlock
    assert gateway.threads == [threading.get_ident()] * 2
    asked = threading.Event()

    def ask() -> None:
        try:
            with pytest.raises(TimeoutError):
                control.kick("s1")
        finally:
            asked.set()

    asker = threading.Thread(target=ask)
    asker.start()
    assert asked.wait(10)  # blocks this loop, as a stuck gateway would: the call times out
    asker.join()
    await asyncio.sleep(0)  # the loop is free again; the abandoned call never runs late
    assert gateway.kicked == []
