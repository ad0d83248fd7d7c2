"""The per-packet path of an idle tunnel: no loop callbacks for flushes a burst's end does.

A read burst (datagrams or TCP frames from a client, packets from the TUN) sends what it
produced when it ends; scheduling a flush callback as well would cost every packet of an
idle tunnel one more callback and loop round. A socket woken after idling reads one
datagram, not one plus a failing read. And ``run`` serves on uvloop.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sslvpn.runtime import openvpn_udp
from sslvpn.runtime.gateway import Gateway, GatewayOptions
from sslvpn.runtime.openvpn_udp import OpenVpnUdpListener
from sslvpn.runtime.service import run
from sslvpn.runtime.tun import MemoryTun
from tests.runtime.fakes import MemoryPolicy, ipv4
from tests.runtime.loopback import (
    client_config,
    connected,
    issue,
    make_data_folder,
    running_service,
)

VPC_HOST = "10.10.0.10"


class RecordingTun(MemoryTun):
    """A MemoryTun that records the order of hold, write and flush."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def hold(self) -> None:
        self.calls.append("hold")

    def write(self, packet: bytes) -> None:
        self.calls.append("write")
        super().write(packet)

    def flush(self) -> None:
        self.calls.append("flush")


def _spy_call_soon(monkeypatch: pytest.MonkeyPatch) -> list[Callable[..., object]]:
    loop = asyncio.get_running_loop()
    real = loop.call_soon
    scheduled: list[Callable[..., object]] = []

    def call_soon(callback: Callable[..., object], *args: Any, **kwargs: Any) -> asyncio.Handle:
        scheduled.append(callback)
        return real(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon", call_soon)
    return scheduled


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_bursts_flush_at_their_end_without_a_loop_callback(
    tmp_path: Path, tcp: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths, engine = make_data_folder(tmp_path)
    row = issue(paths, engine, "alice")
    tun = RecordingTun()
    async with running_service(paths, engine, tun=tun) as (service, _tun):
        client = await connected(service, client_config(paths, row, v2=False, tcp=tcp))
        owners: list[object] = [tun, *service.udp, *service.tcp,
                                *(c for t in service.tcp for c in t.connections)]
        scheduled = _spy_call_soon(monkeypatch)
        tun.calls.clear()

        outbound = ipv4(client.address, VPC_HOST, b"to the vpc")
        client.send(outbound)
        await tun.wait_written(lambda packet: packet == outbound)
        written = tun.calls.index("write")  # (a burst of handshake ACKs may come first)
        assert tun.calls[written - 1:] == ["hold", "write", "flush"]  # flushed by the reader

        reply = ipv4(VPC_HOST, client.address, b"from the vpc")
        tun.inject(reply)
        assert await client.wait_packet() == reply
        ours = [cb for cb in scheduled if getattr(cb, "__self__", None) in owners]
        assert ours == []
        client.close_transport()
    engine.dispose()


def test_run_serves_on_uvloop() -> None:
    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run(loop_module()).startswith("uvloop")


class _QueuedSocket:
    """A socket holding datagrams; a read beyond them fails as a drained socket does."""

    family = socket.AF_INET

    def __init__(self, *datagrams: bytes) -> None:
        self.queued = list(datagrams)
        self.reads = 0

    def recvfrom(self, _size: int) -> tuple[bytes, tuple[str, int]]:
        self.reads += 1
        if not self.queued:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return self.queued.pop(0), ("192.0.2.1", 1194)


def test_a_socket_woken_after_idling_reads_one_datagram_then_bursts(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter([100.0, 100.0 + openvpn_udp.IDLE_GAP / 2])
    monkeypatch.setattr(openvpn_udp, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    sock = _QueuedSocket(b"a", b"b", b"c")
    gateway = Gateway(MemoryTun(), GatewayOptions(pool=ipaddress.IPv4Network("10.8.0.0/24"),
                                                  vpc_networks=()), MemoryPolicy())
    listener = OpenVpnUdpListener(sock, gateway, acceptor=None, session_factory=None)  # type: ignore[arg-type]
    seen: list[bytes] = []
    listener._unknown = lambda data, _address: seen.append(data)  # type: ignore[method-assign]
    listener._read_burst()
    assert (seen, sock.reads) == ([b"a"], 1)  # a lone packet costs no failing second read
    listener._read_burst()  # called again soon: the socket is busy, read until drained
    assert (seen, sock.reads) == ([b"a", b"b", b"c"], 4)
