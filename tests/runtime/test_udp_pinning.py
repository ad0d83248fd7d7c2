"""Pinning a client to its worker (kernel behaviour the workers rely on, on loopback): a
session's pin socket receives its client's datagrams whatever the reuseport group does, and
never joins the group, so new clients are still spread over the workers' listeners."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest

from sslvpn.runtime.openvpn_udp import bind_udp, pin_socket

HOST = "127.0.0.1"


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def _clients(count: int, made: list[socket.socket]) -> list[socket.socket]:
    for _ in range(count):
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind((HOST, 0))
        made.append(client)
    return made[-count:]


def _receivers(port: int, clients: list[socket.socket],
               candidates: list[socket.socket]) -> list[socket.socket | None]:
    """Which candidate socket gets each client's datagram (None: none within 2 s)."""
    for client in clients:
        client.sendto(b"x", (HOST, port))
    got: dict[int, socket.socket] = {}
    while len(got) < len(clients):
        ready, _, _ = select.select(candidates, [], [], 2)
        if not ready:
            break
        for sock in ready:
            _, address = sock.recvfrom(16)
            got[address[1]] = sock
    return [got.get(client.getsockname()[1]) for client in clients]


def test_pinned_clients_stay_and_new_ones_still_spread_when_a_worker_restarts(
    sockets: list[socket.socket],
) -> None:
    first = bind_udp(HOST, 0, reuse_port=True)
    port = first.getsockname()[1]
    group = [first, bind_udp(HOST, port, reuse_port=True)]
    sockets += group
    pinned = _clients(50, sockets)
    pins = [pin_socket((HOST, port), c.getsockname(), socket.AF_INET) for c in pinned]
    sockets += pins
    # the first-joined listener's worker restarts: the group changes under everyone
    group[0].close()
    group[0] = bind_udp(HOST, port, reuse_port=True)
    sockets.append(group[0])
    assert _receivers(port, pinned, group + pins) == pins
    fresh = _receivers(port, _clients(200, sockets), group + pins)
    assert all(sock in group for sock in fresh)
    assert min(fresh.count(group[0]), fresh.count(group[1])) > 50  # about half each
