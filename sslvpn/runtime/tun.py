"""The TUN device edge: packets between the kernel and the gateway, real or in memory.

``LinuxTun`` opens a kernel TUN device through python-pytun (no packet-info header, with the
virtio-net header), reads it from the event loop in batches (one packet when woken after an
idle spell: no failing second read for a lone packet; if more wait, the loop calls again)
and writes without blocking (a full device drops, it never queues without bound); every
``FLUSH_EVERY`` packets read, the
sessions' queued output is sent, so a client gets bursts it can absorb; ``bursting`` tells
them that hand-on is coming, so they schedule no flush of their own. Writes are batched:
packets written during one round of loop callbacks (a burst of datagrams from a client) are
flushed right after it, with neighbouring segments of one TCP flow merged into GSO super
packets (``gro``), so the kernel forwards one packet where it would have forwarded dozens.
A reader that will call ``flush`` itself when its burst ends says so with ``hold``: its
writes then schedule no loop callback (one callback less, and no extra loop round, per
packet of an idle tunnel).
A device deleted under the running gateway (``ip link delete``) leaves the file descriptor
detached: every read and write then fails with EBADFD and the descriptor polls readable
forever. ``LinuxTun`` notices it on the first such error, stops reading, and tells
``on_lost``; ``reopen`` creates the device again under the same name and reads it, so the
sessions above never notice more than the packets dropped meanwhile.
``MemoryTun`` has the same surface for tests: ``inject`` plays the kernel handing the gateway
a burst of packets, ``written`` collects what the gateway handed back, ``lose`` plays the
device being deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from sslvpn.runtime.gro import VNET_HDR_LEN, VNET_NONE, coalesce

log = logging.getLogger(__name__)

PacketSink = Callable[[bytes], None]
BatchEnd = Callable[[], None]
LostHandler = Callable[[OSError], None]

READ_BATCH = 64  # packets read per readiness callback before yielding to other work
IDLE_GAP = 0.001  # seconds between readiness callbacks after which one packet is read
FLUSH_EVERY = 16  # packets per burst handed on at once: bounds the bursts clients receive
READ_SIZE = 65535 + VNET_HDR_LEN
WRITE_BATCH = 256  # packets held for one flush at most; more flush at once
# what a read or write of a device that is no longer there fails with (EBADFD: detached)
IFF_UP = 0x1  # <linux/if.h>: the interface is administratively up
DEVICE_GONE = frozenset({errno.EBADFD, errno.EBADF, errno.ENODEV, errno.ENXIO, errno.EIO})


class Tun(Protocol):
    """What the gateway needs from a TUN device."""

    name: str
    drops: int
    bursting: bool  # a read burst is being handed on: on_batch_end runs when it ends
    lost: bool  # the device was deleted under us; writes are dropped until ``reopen``
    on_lost: LostHandler | None  # called once when the device is found gone

    def start(self, on_packet: PacketSink, on_batch_end: BatchEnd | None = None) -> None: ...

    def reopen(self) -> None: ...

    def up(self) -> bool:
        """The device is there and administratively up (a cheap read, from any thread)."""
        ...

    def hold(self) -> None: ...

    def write(self, packet: bytes) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class LinuxTun:
    """A kernel TUN device (IFF_TUN | IFF_NO_PI | IFF_VNET_HDR), read through the event loop."""

    def __init__(self, name: str = "sslvpn%d", *, mtu: int = 1500) -> None:
        self._mtu = mtu
        self.drops = 0
        self.bursting = False
        self.lost = False
        self.on_lost: LostHandler | None = None
        self._open(name)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._readers: tuple[PacketSink, BatchEnd | None] | None = None
        self._pending: list[bytes] = []
        self._held = False  # a reader promised the next flush()

    def _open(self, name: str) -> None:
        import pytun  # imported here so MemoryTun users need no kernel support

        self._device = pytun.TunTapDevice(
            name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI | pytun.IFF_VNET_HDR
        )
        self._device.mtu = self._mtu
        self.name: str = self._device.name
        self._fd: int = self._device.fileno()
        os.set_blocking(self._fd, False)

    def start(self, on_packet: PacketSink, on_batch_end: BatchEnd | None = None) -> None:
        """Hand every packet the kernel routes into the device to ``on_packet``.

        ``on_batch_end`` runs after each burst of reads, so whoever queued output for the
        burst sends it at once instead of one loop round later.
        """
        self._loop = asyncio.get_running_loop()
        self._readers = (on_packet, on_batch_end)
        self._loop.add_reader(self._fd, self._reader(self._fd, on_packet, on_batch_end))

    def up(self) -> bool:
        try:  # the kernel's view (in the process's network namespace), not what we assume
            flags = int(Path(f"/sys/class/net/{self.name}/flags").read_text(), 16)
        except (OSError, ValueError):
            return False
        return not self.lost and bool(flags & IFF_UP)

    def reopen(self) -> None:
        """Create the lost device again under its name and read it as before (its
        addresses and routes are the caller's to put back)."""
        if not self.lost:
            return
        self._open(self.name)
        self.lost = False
        if self._loop is not None and self._readers is not None:
            self._loop.add_reader(self._fd, self._reader(self._fd, *self._readers))

    def _reader(self, fd: int, on_packet: PacketSink,
                on_batch_end: BatchEnd | None) -> Callable[[], None]:
        """The readiness callback of ``fd`` (bound once: it runs per burst of packets)."""

        def read_burst(count: int) -> bool:
            """Up to ``count`` packets; True when the device may hold more."""
            for _ in range(count):
                try:
                    data = os.read(fd, READ_SIZE)
                except (BlockingIOError, InterruptedError):
                    return False
                except OSError as exc:
                    if exc.errno in DEVICE_GONE:
                        self._lose(exc)
                    else:
                        self.drops += 1
                    return False
                if len(data) <= VNET_HDR_LEN or data[1]:  # GSO: we enable no offloads
                    self.drops += 1
                    continue
                on_packet(data[VNET_HDR_LEN:])
            return True

        last_read = 0.0

        def readable() -> None:
            nonlocal last_read
            now = time.monotonic()
            busy = now - last_read < IDLE_GAP
            last_read = now
            count = FLUSH_EVERY if busy else 1
            if on_batch_end is None:
                read_burst(count)
                return
            for _ in range(READ_BATCH // FLUSH_EVERY if busy else 1):
                self.bursting = True
                try:
                    more = read_burst(count)
                finally:
                    self.bursting = False
                on_batch_end()
                if not more:
                    return

        return readable

    def hold(self) -> None:
        """The caller flushes when its burst ends: writes until then schedule nothing."""
        self._held = True

    def write(self, packet: bytes) -> None:
        """Give a packet to the kernel once this round of loop callbacks is over."""
        pending = self._pending
        pending.append(packet)
        if len(pending) == 1 and not self._held and self._loop is not None:
            self._loop.call_soon(self.flush)
        elif len(pending) >= WRITE_BATCH or self._loop is None:
            self.flush()

    def flush(self) -> None:
        """Write what is pending, merged where possible; a full device counts drops."""
        self._held = False
        packets = self._pending
        if len(packets) == 1:  # nothing to merge (an idle tunnel): the short way
            self._pending = []
            self._writev([VNET_NONE, packets[0]])
        elif packets:
            self._pending = []
            coalesce(packets, self._writev)

    def _writev(self, parts: list[bytes | memoryview]) -> None:
        try:
            os.writev(self._fd, parts)
        except OSError as exc:
            self.drops += 1
            if exc.errno in DEVICE_GONE:
                self._lose(exc)

    def _lose(self, error: OSError) -> None:
        """The device is gone: stop polling its descriptor (it would poll ready forever),
        close it, and say so once."""
        if self.lost:
            return
        self.lost = True
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        with contextlib.suppress(OSError):
            self._device.close()
        self._fd = -1  # writes fail (counted as drops) until reopen
        if self.on_lost is not None:
            self.on_lost(error)
        else:
            log.error("TUN device %s is gone (%s)", self.name, error.strerror or error)

    def close(self) -> None:
        """Stop reading and destroy the device (the kernel removes its routes with it)."""
        self.flush()
        self.on_lost = None  # closing is not losing
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
            self._loop = None
        with contextlib.suppress(OSError):
            self._device.close()


class MemoryTun:
    """A TUN double: ``inject`` is the kernel sending, ``written`` what the gateway wrote."""

    def __init__(self, name: str = "memtun0") -> None:
        self.name = name
        self.drops = 0
        self.bursting = False
        self.lost = False
        self.on_lost: LostHandler | None = None
        self.reopened = 0
        self.written: list[bytes] = []
        self.closed = False
        self._on_packet: PacketSink | None = None
        self._on_batch_end: BatchEnd | None = None
        self._changed = asyncio.Event()

    def start(self, on_packet: PacketSink, on_batch_end: BatchEnd | None = None) -> None:
        self._on_packet = on_packet
        self._on_batch_end = on_batch_end

    def inject(self, *packets: bytes) -> None:
        """Deliver ``packets`` to the gateway as one burst of reads from the kernel."""
        if self._on_packet is None:
            raise RuntimeError("MemoryTun not started")
        self.bursting = self._on_batch_end is not None
        try:
            for packet in packets:
                self._on_packet(packet)
        finally:
            self.bursting = False
        if self._on_batch_end is not None:
            self._on_batch_end()

    def lose(self) -> None:
        """Play the device being deleted: writes are dropped until ``reopen``."""
        self.lost = True
        if self.on_lost is not None:
            self.on_lost(OSError(errno.EBADFD, os.strerror(errno.EBADFD)))

    def up(self) -> bool:
        return not (self.lost or self.closed)

    def reopen(self) -> None:
        self.lost = False
        self.reopened += 1

    def hold(self) -> None:
        """Nothing is held back in memory, so there is nothing to promise."""

    def write(self, packet: bytes) -> None:
        if self.lost:
            self.drops += 1
            return
        self.written.append(packet)
        self._changed.set()

    def flush(self) -> None:
        """Nothing is held back in memory."""

    def close(self) -> None:
        self.closed = True
        self._on_packet = None

    async def wait_written(self, predicate: Callable[[bytes], bool], timeout: float = 5.0) -> bytes:
        """The first written packet matching ``predicate``, waiting at most ``timeout``."""
        async with asyncio.timeout(timeout):
            while True:
                for packet in self.written:
                    if predicate(packet):
                        return packet
                self._changed.clear()
                await self._changed.wait()
