"""The per-tunnel driver's decisions, with a scripted stand-in for the IKE core.

What matters here is how `Tunnel` reacts to the core's events: a new IKE_SA_INIT from the
peer's address never replaces a live SA before it authenticated, a failure with a
candidate in flight hands over to the candidate, CHILD_SAs land in the SAD, and failures of
an initiating tunnel are retried with back-off.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from dataclasses import replace
from typing import Any

import pytest

from sslvpn.ipsec.esp.sad import Sad
from sslvpn.ipsec.ike import events as ev
from sslvpn.ipsec.ike.constants import EncrId
from sslvpn.ipsec.ike.proposals import Suite
from sslvpn.runtime import ipsec_tunnel
from sslvpn.runtime.ipsec_tunnel import Tunnel
from sslvpn.store.ipsec_queries import TunnelConfig

PEER = "198.18.0.1"


class FakeSa:
    """Records what the driver does; the test scripts the events it emits."""

    made: list[FakeSa] = []

    def __init__(self, config: Any, local: Any, remote: Any, *, initiator: bool,
                 rand: Any) -> None:
        self.initiator = initiator
        self.events: deque[ev.IkeEvent] = deque()
        self.received: list[bytes] = []
        self.outbox: list[tuple[bytes, tuple[str, int]]] = []
        self.deleted = False
        FakeSa.made.append(self)

    def initiate(self, now: float) -> None:
        self.outbox.append((b"init", (PEER, 500)))

    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        self.received.append(data)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple[str, int]]]:
        out, self.outbox = self.outbox, []
        return out

    def next_event(self) -> ev.IkeEvent | None:
        return self.events.popleft() if self.events else None

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        pass

    def delete(self, now: float) -> None:
        self.deleted = True

    def note_inbound_traffic(self, now: float) -> None:
        pass


class FakeSockets:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int], bool]] = []

    def send_ike(self, message: bytes, peer: tuple[str, int], nat_t: bool) -> None:
        self.sent.append((message, peer, nat_t))


def init_request() -> bytes:
    return os.urandom(8) + bytes(8) + bytes((0, 0x20, 34, 0x08)) + struct.pack("!II", 0, 28)


def child(spi_in: int, spi_out: int) -> ev.ChildSaEstablished:
    keys = ev.EspKeys(b"\x01" * 36, b"")
    return ev.ChildSaEstablished(spi_in, spi_out, Suite(EncrId.AES_GCM_16, 256), keys, keys,
                                 (), ())


@pytest.fixture
def tunnel(monkeypatch: pytest.MonkeyPatch) -> Tunnel:
    monkeypatch.setattr(ipsec_tunnel, "IkeSa", FakeSa)
    FakeSa.made = []
    config = TunnelConfig("t1", "vgw", "198.18.0.2", PEER, "psk", "ike", "esp", False, True,
                          None, (("10.2.0.0/24", "10.1.0.0/24"),))
    sad: Sad[Tunnel] = Sad()
    made = Tunnel(config, None, FakeSockets(), sad, local_ike=("198.18.0.2", 500),  # type: ignore[arg-type]
                  ike_port=500, nat_t_port=4500)
    made.start(0.0)
    return made


def core(sa: FakeSa | None) -> object:
    """The fake seen as the driver's IkeSa slot holds it (identity checks only)."""
    return sa


def up(tunnel: Tunnel, spi_in: int = 0x1001, spi_out: int = 0x2001) -> FakeSa:
    first = init_request()
    tunnel.receive_ike(first, (PEER, 500), False, 1.0)
    sa = FakeSa.made[-1]
    sa.events.extend([ev.IkeSaEstablished(b"x" * 8, b"y" * 8, Suite(EncrId.AES_GCM_16, 256),
                                          PEER), child(spi_in, spi_out)])
    tunnel.receive_ike(first[:8] + b"\x00" * 20, (PEER, 4500), True, 1.1)
    assert tunnel.state == "up" and tunnel.sa is core(sa)
    return sa


def test_waiting_tunnel_answers_the_peer_and_installs_its_child_sa(tunnel: Tunnel) -> None:
    assert tunnel.state == "connecting" and tunnel.sa is None
    sa = up(tunnel)
    assert not sa.initiator and sa.received[1][:4] == b"\x00\x00\x00\x00"  # marker put back
    status = tunnel.status()
    assert (status.spi_in, status.spi_out) == ("00001001", "00002001")
    assert tunnel.seal(b"\x45" + bytes(19)) is not None


def test_unauthenticated_init_does_not_replace_a_live_sa(tunnel: Tunnel) -> None:
    live = up(tunnel)
    for _ in range(5):
        tunnel.receive_ike(init_request(), (PEER, 500), False, 2.0)
    candidate = FakeSa.made[-1]
    assert tunnel.sa is core(live) and tunnel.candidate is core(candidate) and tunnel.state == "up"
    candidate.events.append(ev.AuthenticationFailed("AUTH did not verify"))
    tunnel.receive_ike(b"\x00" * 28, (PEER, 500), False, 2.1)
    assert tunnel.sa is core(live) and tunnel.candidate is None
    assert tunnel.status().spi_out == "00002001"


def test_authenticated_candidate_replaces_the_live_sa(tunnel: Tunnel) -> None:
    live = up(tunnel)
    request = init_request()
    tunnel.receive_ike(request, (PEER, 500), False, 3.0)
    candidate = FakeSa.made[-1]
    candidate.events.append(child(0x1002, 0x2002))
    tunnel.receive_ike(request[:8] + bytes(20), (PEER, 4500), True, 3.1)
    assert tunnel.sa is core(candidate) and live.deleted
    assert tunnel.status().spi_in == "00001002"
    assert tunnel._sad.remove(0x1001) is None  # the old SA's ESP is gone


def test_a_dead_live_sa_hands_over_to_a_candidate_in_flight(tunnel: Tunnel) -> None:
    live = up(tunnel)
    tunnel.receive_ike(init_request(), (PEER, 500), False, 4.0)
    candidate = FakeSa.made[-1]
    live.events.append(ev.PeerDead())
    tunnel.handle_timer(5.0)
    assert tunnel.sa is core(candidate) and tunnel.state == "connecting"
    assert tunnel.last_error is not None and "peer dead" in tunnel.last_error


def test_initiating_tunnel_retries_with_back_off(
    tunnel: Tunnel, monkeypatch: pytest.MonkeyPatch
) -> None:
    tunnel.config = replace(tunnel.config, initiate=True)
    scheduled: list[float] = []
    monkeypatch.setattr(tunnel, "_schedule", lambda now: scheduled.append(now))
    tunnel.start(10.0)
    first = FakeSa.made[-1]
    assert first.initiator and tunnel._sockets.sent[-1][0] == b"init"  # type: ignore[attr-defined]
    first.events.append(ev.NoProposalChosen("IKE_SA_INIT", "peer accepted none"))
    tunnel.handle_timer(10.5)
    assert tunnel._retry_at == 12.5 and "no proposal chosen" in (tunnel.last_error or "")
    tunnel.handle_timer(12.5)
    second = FakeSa.made[-1]
    assert second is not first and second.initiator
    second.events.append(ev.AuthenticationFailed("peer rejected our authentication"))
    tunnel.handle_timer(13.0)
    assert tunnel._retry_at == 18.0  # the second delay is longer
