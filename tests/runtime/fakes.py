"""Doubles for gateway tests: a scriptable session core and an in-memory policy."""

from __future__ import annotations

import asyncio
import collections
import ipaddress
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sslvpn.net.access import AccessPolicy
from sslvpn.openvpn.events import (
    Event,
    PeerVerified,
    SessionClosed,
    SessionEstablished,
    TunnelPacket,
)
from sslvpn.openvpn.key_method import parse_peer_info
from sslvpn.openvpn.push import PushConfig
from sslvpn.runtime.policy import (
    Authorization,
    LeaseStored,
    Record,
    SessionCounted,
    SessionEnded,
    SessionOpened,
    TrafficCounted,
)

VERIFY = b"verify:"  # a datagram "verify:<serial hex>" makes the core report PeerVerified
DEFAULT_PEER_INFO = "IV_VER=2.6.14\n"  # what it reports unless "\n<peer-info>" follows


@dataclass(frozen=True)
class FakeCertificate:
    serial_number: int


class FakeCore:
    """A session core whose inputs are plain: ``verify:<serial>`` or an IP packet."""

    def __init__(self) -> None:
        self.events: collections.deque[Event] = collections.deque()
        self.outbox: list[bytes] = []
        self.accepted: PushConfig | None = None
        self.rejected: str | None = None
        self.retry_after: int | None = None
        self.closed = False
        self.timer: float | None = None
        self.timer_fired: list[float] = []
        self.last_received = 0.0

    def receive_datagram(self, data: bytes, now: float) -> None:
        if data.startswith(VERIFY):
            serial, _, peer_info = data[len(VERIFY):].decode().partition("\n")
            cert: Any = FakeCertificate(int(serial, 16))
            self.events.append(PeerVerified(cert, parse_peer_info(peer_info or DEFAULT_PEER_INFO),
                                            tls_group="X25519MLKEM768"))
        else:
            self.events.append(TunnelPacket(data))

    def handle_timer(self, now: float) -> None:
        self.timer_fired.append(now)
        self.timer = None

    def send_packet(self, ip_packet: bytes, now: float) -> None:
        self.outbox.append(b"D" + ip_packet)

    def accept(self, push_config: PushConfig, now: float | None = None) -> None:
        self.accepted = push_config
        self.outbox.append(b"PUSH_REPLY")
        self.events.append(SessionEstablished("AES-256-GCM", "prf", push_config.peer_id, "1.3"))

    def reject(self, reason: str, now: float | None = None, *,
               retry_after: int | None = None) -> None:
        self.rejected = reason
        self.retry_after = retry_after
        self.outbox.append(b"AUTH_FAILED," + reason.encode())
        self.events.append(SessionClosed("auth failed"))

    def close(self) -> None:
        self.closed = True
        self.outbox.append(b"EXIT")
        self.events.append(SessionClosed("closed locally"))

    def datagrams_to_send(self, now: float) -> list[bytes]:
        out, self.outbox = self.outbox, []
        return out

    def get_timer(self) -> float | None:
        return self.timer

    def next_event(self) -> Event | None:
        return self.events.popleft() if self.events else None


async def decided(core: FakeCore) -> None:
    """Wait (bounded) until the gateway answered the core's ``PeerVerified``: the policy is
    asked in a task, so the answer comes at the earliest one loop round later."""
    async with asyncio.timeout(5):
        while core.accepted is None and core.rejected is None and not core.closed:
            await asyncio.sleep(0)


class MemoryPolicy:
    """The store's answers, kept in dicts; ``record`` applies accounting like the store."""

    def __init__(self) -> None:
        self.certs: dict[str, tuple[str, str]] = {}  # serial -> (user, status)
        self.disabled: set[str] = set()
        self.leases: dict[str, str] = {}
        self.opened: list[SessionOpened] = []
        self.closed: list[SessionEnded] = []
        self.counters: list[SessionCounted] = []
        self.traffic: list[TrafficCounted] = []
        self.end_requests: dict[str, str] = {}  # session id -> reason (a kick via the store)
        self.access = AccessPolicy()  # bump ``access.revision`` when changing it

    def add(self, serial: str, user: str, status: str = "valid") -> None:
        self.certs[serial] = (user, status)

    async def authorize(self, serial: str, credentials: object = None) -> Authorization:
        return self.standing(serial)

    def admitted_now(self, serial: str) -> Authorization | None:
        return None  # no snapshot: every handshake waits for `authorize`

    def forget(self, *, serials: Collection[str] = (), user: str | None = None) -> None:
        pass

    async def refresh_admissions(self) -> None:
        pass

    def standing(self, serial: str) -> Authorization:
        if serial not in self.certs:
            return Authorization("", "", "certificate unknown")
        user, status = self.certs[serial]
        refusal = None
        if status != "valid":
            refusal = f"certificate {status}"
        elif user in self.disabled:
            refusal = "user disabled"
        return Authorization(user, "laptop", refusal)

    async def unauthorized(self, serials: Collection[str]) -> dict[str, str]:
        result = {}
        for serial in serials:
            refusal = self.standing(serial).refusal
            if refusal is not None:
                result[serial] = refusal
        return result

    async def ended_elsewhere(self, session_ids: Collection[str]) -> dict[str, str]:
        return {sid: why for sid, why in self.end_requests.items() if sid in session_ids}

    async def stored_leases(self) -> dict[str, str]:
        return dict(self.leases)

    async def access_policy(self, known: int | None) -> AccessPolicy | None:
        return None if known == self.access.revision else self.access

    def record(self, records: Sequence[Record]) -> None:
        for record in records:
            if isinstance(record, LeaseStored):
                self.leases = {s: a for s, a in self.leases.items() if a != record.address}
                self.leases[record.serial] = record.address
            elif isinstance(record, SessionOpened):
                self.opened.append(record)
            elif isinstance(record, SessionCounted):
                self.counters.append(record)
            elif isinstance(record, TrafficCounted):
                self.traffic.append(record)
            else:
                self.closed.append(record)


def ipv4(src: str, dst: str, payload: bytes = b"ping") -> bytes:
    """A minimal IPv4 packet (header fields the gateway reads are right)."""
    header = bytearray(20)
    header[0] = 0x45
    header[2:4] = (20 + len(payload)).to_bytes(2, "big")
    header[8] = 64
    header[9] = 1
    header[12:16] = ipaddress.ip_address(src).packed
    header[16:20] = ipaddress.ip_address(dst).packed
    return bytes(header) + payload


def ipv6(src: str, dst: str, payload: bytes = b"ping6") -> bytes:
    """A minimal IPv6 packet."""
    header = bytearray(40)
    header[0] = 0x60
    header[4:6] = len(payload).to_bytes(2, "big")
    header[6] = 58
    header[7] = 64
    header[8:24] = ipaddress.ip_address(src).packed
    header[24:40] = ipaddress.ip_address(dst).packed
    return bytes(header) + payload
