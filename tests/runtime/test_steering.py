"""The steered reuseport group of `serve --workers` (kernel behaviour, on loopback): a
P_DATA_V2 packet reaches socket ``peer-id % N`` from any source port, every other datagram
stays with one socket per 4-tuple, and a worker that exits and starts again (closing and
inheriting its copy of the supervisor's socket) moves no flow."""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Iterator

import pytest

from sslvpn.openvpn.constants import Opcode
from sslvpn.runtime.steering import bind_group, inherit, worker_arguments

HOST = "127.0.0.1"
HARD_RESET = bytes([Opcode.CONTROL_HARD_RESET_CLIENT_V2 << 3]) + bytes(40)


def data_v2(peer_id: int) -> bytes:
    return bytes([Opcode.DATA_V2 << 3]) + peer_id.to_bytes(3, "big") + bytes(28)


@pytest.fixture
def made() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def _client(made: list[socket.socket]) -> socket.socket:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind((HOST, 0))
    made.append(client)
    return client


def _receiver(port: int, client: socket.socket, payload: bytes,
              group: list[socket.socket]) -> int | None:
    """The index of the group's socket that got ``payload`` from ``client`` (None: lost)."""
    client.sendto(payload, (HOST, port))
    ready, _, _ = select.select(group, [], [], 2)
    if not ready:
        return None
    [sock] = ready
    assert sock.recv(100) == payload
    return group.index(sock)


@pytest.mark.parametrize("count", [2, 3])
def test_data_packets_reach_the_socket_of_their_peer_id_lane_from_any_port(
    made: list[socket.socket], count: int,
) -> None:
    group = bind_group(HOST, 0, count)
    made += group
    port = group[0].getsockname()[1]
    for peer_id in range(3 * count):
        # a floating client: every datagram from a new source port
        lanes = {_receiver(port, _client(made), data_v2(peer_id), group) for _ in range(8)}
        assert lanes == {peer_id % count}


def test_other_datagrams_stay_per_4_tuple_and_spread_over_the_group(
    made: list[socket.socket],
) -> None:
    group = bind_group(HOST, 0, 2)
    made += group
    port = group[0].getsockname()[1]
    clients = [_client(made) for _ in range(60)]
    first = [_receiver(port, c, HARD_RESET, group) for c in clients]
    assert min(first.count(0), first.count(1)) > 10  # by the kernel's hash: about half each
    for payload in (HARD_RESET, b"", b"\x48\x00"):  # a short P_DATA_V2 too: by hash
        assert [_receiver(port, c, payload, group) for c in clients] == first


def test_a_worker_restart_moves_no_flow(made: list[socket.socket]) -> None:
    """Worker 0 inherits its socket, exits (its copy closes) and a new worker 0 inherits the
    same socket again: the group, held by the supervisor, keeps its size and order."""
    group = bind_group(HOST, 0, 2)
    made += group
    port = group[0].getsockname()[1]
    clients = [_client(made) for _ in range(60)]
    before = [_receiver(port, c, HARD_RESET, group) for c in clients]
    assert worker_arguments({HOST: group}, 0) == [f"{HOST}={group[0].fileno()}"]
    worker = inherit([f"{HOST}={os.dup(group[0].fileno())}"])  # as a child inherits it
    worker[HOST].close()  # SIGKILL: the kernel closes the worker's descriptors
    restarted = inherit([f"{HOST}={os.dup(group[0].fileno())}"])
    made += restarted.values()
    assert restarted[HOST].getsockname() == (HOST, port)
    assert [_receiver(port, c, HARD_RESET, group) for c in clients] == before
    assert _receiver(port, _client(made), data_v2(4), group) == 0
