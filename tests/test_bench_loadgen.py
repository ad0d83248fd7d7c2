"""The load generator's accounting: each simulated session counts once, lateness is timed."""

from __future__ import annotations

import os
import socket
from collections import deque
from typing import cast

from bench.loadgen import Swarm, share_up_after, udp_rcvbuf_errors
from sslvpn.openvpn.client import ClientSession
from sslvpn.openvpn.events import Event, SessionClosed, SessionEstablished

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
