"""Hand-over between workers: a floated client's datagram reaches the worker of its session.

Each worker pins its UDP sessions with connected sockets (`sslvpn.runtime.openvpn_udp`), but
a client that floats (NAT rebinding, a new network: a new source address or port) sends
from a 4-tuple that no pin matches, and the reuseport group's hash may give it to another
worker. So every worker hands out peer-ids in its own lane (``peer_id % count == index``,
`Gateway` does it from ``GatewayOptions.peer_id_lane``), and a worker that receives a
P_DATA_V2 packet whose peer-id is in another worker's lane passes it, with the client's
address, to that worker over a unix datagram socket in the data folder (0600, root only):
there it is offered to the session as any floating packet is, and if it authenticates, the
session floats and is pinned at its new address, so the next datagrams go straight to it.
Only the few datagrams before the new pin cost a hand-over; nothing is handed over for a
peer-id of the worker itself (an unknown one of its own is dropped as before). A worker that
is not running (being restarted) loses the datagram, as a dead server would; the client
retries.

The message: a 2-byte length, a JSON header ``[local host, client host, client port]``,
then the datagram. What a worker receives is checked and bounded before use; a malformed
message is counted and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

MAX_MESSAGE = 65535 + 512  # one datagram and its header
_LENGTH = struct.Struct("!H")

Address = tuple[str, int] | tuple[str, int, int, int]
Deliver = Callable[[str, bytes, Address], None]  # (local host, datagram, client address)


def socket_path(folder: Path, index: int) -> Path:
    """Where worker ``index`` receives the datagrams handed to it."""
    return folder / f"handover-w{index}.sock"


def encode(local_host: str, address: Address, data: bytes) -> bytes:
    header = json.dumps([local_host, address[0], address[1]]).encode()
    return _LENGTH.pack(len(header)) + header + data


def decode(message: bytes) -> tuple[str, Address, bytes] | None:
    """(local host, client address, datagram), or None when ``message`` is malformed."""
    if len(message) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack_from(message)
    try:
        local, host, port = json.loads(message[_LENGTH.size:_LENGTH.size + size])
    except (ValueError, TypeError):
        return None
    if not (isinstance(local, str) and isinstance(host, str) and type(port) is int
            and 0 < port < 65536):
        return None
    address: Address = (host, port, 0, 0) if ":" in host else (host, port)
    return local, address, message[_LENGTH.size + size:]


class Handover:
    """Worker ``index`` of ``count``: hands datagrams of other lanes over, receives its own."""

    def __init__(self, folder: Path, index: int, count: int) -> None:
        self.folder = folder
        self.index = index
        self.count = count
        self.counts: Counter[str] = Counter()  # "sent", "received", "lost", "malformed"
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def owner(self, peer_id: int) -> int:
        """The worker whose lane ``peer_id`` is in."""
        return peer_id % self.count

    def start(self, deliver: Deliver) -> None:
        """Receive what the other workers hand over, calling ``deliver`` for each."""
        path = socket_path(self.folder, self.index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a killed run of this worker
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(str(path))
            os.chmod(path, 0o600)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable, deliver)

    def close(self) -> None:
        if self._sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        with contextlib.suppress(FileNotFoundError):
            socket_path(self.folder, self.index).unlink()

    def hand(self, peer_id: int, local_host: str, data: bytes, address: Address) -> bool:
        """Pass a datagram to the worker owning ``peer_id``; False when it is this one's."""
        owner = self.owner(peer_id)
        if owner == self.index or self._sock is None:
            return False
        try:
            self._sock.sendto(encode(local_host, address, data),
                              str(socket_path(self.folder, owner)))
        except OSError:  # the owner is being restarted, or its queue is full
            self.counts["lost"] += 1
        else:
            self.counts["sent"] += 1
        return True

    def _readable(self, deliver: Deliver) -> None:
        assert self._sock is not None  # noqa: S101 (reading implies started)
        for _ in range(64):
            try:
                message = self._sock.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.counts["malformed"] += 1
                continue
            decoded = decode(message)
            if decoded is None:
                self.counts["malformed"] += 1
                continue
            self.counts["received"] += 1
            local, address, data = decoded
            deliver(local, data, address)
