"""The load generator's accounting: each simulated session counts once, lateness is timed;
its clients come from several source addresses."""

from __future__ import annotations

import os
import socket
from collections import deque
from pathlib import Path
from typing import cast

from bench.loadgen import Swarm, share_up_after, udp_rcvbuf_errors
from sslvpn.openvpn.client import ClientSession
from sslvpn.openvpn.events import Event, SessionClosed, SessionEstablished
from sslvpn.runtime.admission import HALF_OPEN_PER_ADDRESS
from tests.runtime.loopback import client_config, issue, make_data_folder

UP = SessionEstablished(cipher="AES-256-GCM", key_derivation="tls-ekm", peer_id=0,
                        tls_version="TLSv1.3")


class _Scripted:
    """Stands in for a ClientSession: emits the given events, sends nothing."""

    def __init__(self, *events: Event) -> None:
        self._events = deque(events)

    def datagrams_to_send(self, now: float) -> list[bytes]:
        return []

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        return None


def test_each_session_counts_once_and_closes_after_coming_up_are_lost() -> None:
    swarm = Swarm(("198.18.0.1", 1194), [])
    swarm.sessions = [cast(ClientSession, s) for s in (
        _Scripted(UP, SessionClosed("ping-restart")),  # came up, then lost
        _Scripted(SessionClosed("TLS key negotiation did not finish")),  # failed
        _Scripted(UP, UP),  # a repeated event is still one session
        _Scripted(),  # still in flight
    )]
    swarm.sockets = [cast(socket.socket, None)] * 4  # never used: nothing to send
    for index in range(4):
        swarm._pump(index, 0.0)
    assert (swarm.established, swarm.failed, swarm.lost, swarm.in_flight) == (2, 1, 1, 1)
    assert swarm.failures == {"after up: ping-restart": 1,
                              "TLS key negotiation did not finish": 1}


def test_share_up_after_counts_against_the_stage_size() -> None:
    up_after = [0.1, 0.2, 2.2, 2.3]
    assert share_up_after(up_after, 4, 0.5) == 0.2
    assert share_up_after(up_after, 4, 1.0) == 2.3
    assert share_up_after(up_after, 10, 0.5) is None  # only 4 of 10 came up


def test_rcvbuf_errors_are_read_from_the_process_namespace() -> None:
    assert isinstance(udp_rcvbuf_errors(os.getpid()), int)
    assert udp_rcvbuf_errors(2**22 + 7) is None  # no such process


def test_clients_take_the_source_addresses_in_turn(tmp_path: Path) -> None:
    """The scale stage's wave spreads over its sources, so no source reaches the server's
    budget of clients not yet authenticated (one address was throttled to 16 at a time)."""
    paths, engine = make_data_folder(tmp_path)
    config = client_config(paths, issue(paths, engine, "alice"), v2=False, tcp=False)
    engine.dispose()
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    sources = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
    wave = 2 * HALF_OPEN_PER_ADDRESS
    swarm = Swarm(server.getsockname(), [config] * wave, sources)
    swarm.start(wave)
    try:
        seen = [server.recvfrom(4096)[1][0] for _ in range(wave)]  # each client's reset
    finally:
        server.close()
        for sock in swarm.sockets:
            sock.close()
    assert {host: seen.count(host) for host in sources} == {host: wave // 3 + (i < wave % 3)
                                                           for i, host in enumerate(sources)}
    assert max(seen.count(host) for host in sources) < HALF_OPEN_PER_ADDRESS
