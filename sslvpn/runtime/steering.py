"""Which worker of `serve --workers` a UDP datagram reaches: one reuseport group per address,
made and held by the supervisor, steered by a classic BPF program.

The supervisor binds the N sockets of each UDP listen address itself, in worker order, and
passes socket k to worker k (inherited descriptor). Since the supervisor keeps its copies
open, the kernel's group never changes when a worker dies or starts: socket k stays at
index k and the hash that spreads datagrams over the group keeps its size, so no flow moves
(datagrams for a worker being restarted wait in its socket's buffer). The program attached
to the group (``SO_ATTACH_REUSEPORT_CBPF``, Linux 4.5+; the kernel runs it on the UDP
payload) picks socket ``peer-id % N`` for a P_DATA_V2 packet: each worker hands out
peer-ids in its own lane (``GatewayOptions.peer_id_lane``), so a client's data reaches its
worker from any source address or port, also after it floats. Every other datagram (a new
client's handshake, control packets, P_DATA_V1, garbage) gets an index past the group,
which makes the kernel fall back to its hash of the 4-tuple: a fixed group keeps each
4-tuple on one worker. Every worker still runs the stateless first-packet check before any
per-client state.

This replaced a connected socket per UDP session (measured on loopback, kernel 6.18, 16,000
sessions on the port): a datagram that matched no connected socket walked all of them in
the kernel's lookup, 0.5-1 ms each, for every new client's packet, and each session cost a
descriptor. A session that floats still gets one (`sslvpn.runtime.openvpn_udp`): its
control packets (a renegotiation) come from a 4-tuple whose hash may name another worker.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Iterable, Mapping, Sequence

from sslvpn.openvpn.constants import DATA_V2_HEADER_LEN, Opcode
from sslvpn.runtime.openvpn_udp import bind_udp
from sslvpn.runtime.service import unavailable

SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)  # asm-generic
PEER_ID_MASK = 0xFFFFFF
BY_HASH = 0xFFFFFFFF  # an index past the group: the kernel's hash of the 4-tuple decides

# classic BPF opcodes (linux/filter.h, linux/bpf_common.h)
_LD_W_LEN = 0x80  # A = packet length
_LD_B_ABS = 0x30  # A = packet[k]
_LD_W_ABS = 0x20  # A = packet[k:k+4], big-endian
_RSH_K = 0x74
_AND_K = 0x54
_MOD_K = 0x94
_JGE_K = 0x35
_JEQ_K = 0x15
_RET_A = 0x16
_RET_K = 0x06
_INSTRUCTION = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k
_FPROG = struct.Struct("@HP")  # struct sock_fprog (native alignment): len, filter pointer


def lane_program(count: int) -> list[tuple[int, int, int, int]]:
    """The instructions: P_DATA_V2 to socket ``peer-id % count``, the rest by hash."""
    data_v2 = int(Opcode.DATA_V2)
    return [
        (_LD_W_LEN, 0, 0, 0),
        (_JGE_K, 0, 7, DATA_V2_HEADER_LEN),  # shorter than a P_DATA_V2 header: by hash
        (_LD_B_ABS, 0, 0, 0),
        (_RSH_K, 0, 0, 3),  # the opcode: high 5 bits of the first byte
        (_JEQ_K, 0, 4, data_v2),
        (_LD_W_ABS, 0, 0, 0),  # opcode/key-id byte and the 24-bit peer-id
        (_AND_K, 0, 0, PEER_ID_MASK),
        (_MOD_K, 0, 0, count),
        (_RET_A, 0, 0, 0),
        (_RET_K, 0, 0, BY_HASH),
    ]


def attach_lanes(sock: socket.socket, count: int) -> None:
    """Attach `lane_program` to the reuseport group ``sock`` belongs to."""
    code = b"".join(_INSTRUCTION.pack(*op) for op in lane_program(count))
    buffer = ctypes.create_string_buffer(code, len(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF,
                    _FPROG.pack(len(code) // _INSTRUCTION.size, ctypes.addressof(buffer)))


def bind_group(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` sockets on ``host:port``, socket k at index k of a steered group (a port 0
    is chosen by the first)."""
    group: list[socket.socket] = []
    try:
        for _ in range(count):
            group.append(bind_udp(host, port, reuse_port=True))
            port = group[0].getsockname()[1]
        attach_lanes(group[0], count)
    except OSError:
        for sock in group:
            sock.close()
        raise
    return group


def bind_groups(listen: Sequence[str], port: int, count: int) -> dict[str, list[socket.socket]]:
    """The supervisor's groups, one per listen address it could bind (the others said)."""
    groups: dict[str, list[socket.socket]] = {}
    for host in listen:
        try:
            groups[host] = bind_group(host, port, count)
        except OSError as exc:
            unavailable("udp", host, port, exc, listen)
    return groups


def worker_arguments(groups: Mapping[str, list[socket.socket]], index: int) -> list[str]:
    """The ``HOST=FD`` arguments naming worker ``index``'s socket of each group."""
    return [f"{host}={group[index].fileno()}" for host, group in groups.items()]


def inherit(pairs: Iterable[str]) -> dict[str, socket.socket]:
    """The sockets a worker was given, from its ``HOST=FD`` arguments."""
    sockets: dict[str, socket.socket] = {}
    for pair in pairs:
        host, _, fd = pair.rpartition("=")
        sockets[host] = socket.socket(fileno=int(fd))
    return sockets
