"""One driver per protocol session: feeds it input, then sends, dispatches and re-arms.

The cores are sans-I/O (ARCHITECTURE "Protocol cores"); this is the loop around one of them.
After every input (a datagram or TCP frame, a timer, a tunnel packet to send, a policy
decision) the driver transmits everything the core queued, hands every event to the owner,
and keeps exactly one loop timer armed at ``core.get_timer()``. Time is the event loop's
monotonic clock. A handler may call back into the driver (``accept`` from a ``PeerVerified``
handler): the pump is not re-entered, it simply runs again until the core is quiet. The
decision may as well come later, from a task (the gateway asks the store off the loop);
the core keeps the handshake waiting until then.

Hot path: a core with the fast path (``open_data``/``seal_data``, as ``Endpoint`` has) hands
tunnel packets over directly, without an event object or an output queue: an opened packet
goes to ``on_packet``, a sealed one to ``transmit``; whenever the core declines (control,
pings, drops, key changes) the driver falls back to the full input-then-pump cycle. Tunnel
traffic only ever moves the core's deadlines later (keepalive and ping-restart), so after
pure data traffic the armed timer is kept instead of asking ``get_timer()`` and re-arming per
packet; a timer that fires early just re-arms. Any control packet, other event or timer
re-arms from ``get_timer()``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from sslvpn.openvpn.constants import DATA_OPCODES
from sslvpn.openvpn.events import Event, SessionClosed, TunnelPacket
from sslvpn.openvpn.push import PushConfig

log = logging.getLogger(__name__)


class SessionCore(Protocol):
    """The surface every server-role session core offers (ARCHITECTURE "Protocol cores")."""

    last_received: float  # when the peer was last heard from authentically

    def receive_datagram(self, data: bytes, now: float) -> None: ...

    def handle_timer(self, now: float) -> None: ...

    def send_packet(self, ip_packet: bytes, now: float) -> None: ...

    def accept(self, push_config: PushConfig, now: float | None = None) -> None: ...

    def reject(self, reason: str, now: float | None = None, *,
               retry_after: int | None = None) -> None: ...

    def close(self) -> None: ...

    def datagrams_to_send(self, now: float) -> list[bytes]: ...

    def get_timer(self) -> float | None: ...

    def next_event(self) -> Event | None: ...


Transmit = Callable[[bytes], None]
PacketSink = Callable[[bytes], None]
_DATA = frozenset(int(op) for op in DATA_OPCODES)
EventHandler = Callable[["SessionDriver", Event], None]
FastPath = Callable[[bytes, float], bytes | None]  # Endpoint.open_data / Endpoint.seal_data


class SessionDriver:
    """Pumps one session core; ``closed`` turns true once it reported ``SessionClosed``."""

    __slots__ = ("core", "_transmit", "_on_event", "_on_packet", "_open", "_seal", "_loop",
                 "_timer", "_deadline", "_pumping", "_again", "closed", "now")

    def __init__(
        self,
        core: SessionCore,
        *,
        transmit: Transmit,
        on_event: EventHandler,
        on_packet: PacketSink | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.core = core
        self._transmit = transmit
        self._on_event = on_event
        self._on_packet = on_packet or (lambda packet: on_event(self, TunnelPacket(packet)))
        self._open: FastPath | None = getattr(core, "open_data", None)
        self._seal: FastPath | None = getattr(core, "seal_data", None)
        self._loop = loop or asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._pumping = False
        self._again = False
        self.closed = False
        self.now = self._loop.time()

    # -- inputs ------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """A datagram (UDP) or a whole frame (TCP) from the peer."""
        if self.closed:
            return
        self.now = now = self._loop.time()
        if self._open is not None:  # it hands anything but a plain data packet on itself
            plain = self._open(data, now)
            if plain is not None:
                self._on_packet(plain)
                return
        else:
            self.core.receive_datagram(data, now)
        self.pump(rearm=not data or (data[0] >> 3) not in _DATA)

    def send_packet(self, ip_packet: bytes) -> None:
        """A tunnel packet for the peer (the hot path from the TUN)."""
        if self.closed:
            return
        self.now = now = self._loop.time()
        if self._seal is not None:
            datagram = self._seal(ip_packet, now)
            if datagram is not None:
                self._transmit(datagram)
                return
        self.core.send_packet(ip_packet, now)
        self.pump(rearm=False)

    def accept(self, push_config: PushConfig) -> None:
        """The owner's decision, which may come long after ``PeerVerified`` (a store call)."""
        if not self.closed:
            self.now = now = self._loop.time()
            self.core.accept(push_config, now)
            self.pump()

    def reject(self, reason: str, *, retry_after: int | None = None) -> None:
        """Refuse the peer; with ``retry_after`` (seconds) only for now."""
        if not self.closed:
            self.now = now = self._loop.time()
            self.core.reject(reason, now, retry_after=retry_after)
            self.pump()

    def close(self) -> None:
        """Ask the core to end the session politely (it queues the explicit exit)."""
        if not self.closed:
            self.core.close()
            self.pump()

    def stop(self) -> None:
        """Forget the session without telling the peer (transport gone); cancels the timer."""
        self.closed = True
        self._cancel_timer()

    # -- the pump ----------------------------------------------------------------------
    def pump(self, *, rearm: bool = True) -> None:
        """Send what the core queued, dispatch its events, keep one timer."""
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        try:
            while True:
                self._again = False
                core = self.core
                for datagram in core.datagrams_to_send(self.now):
                    if not rearm and (datagram[0] >> 3) not in _DATA:
                        rearm = True
                    self._transmit(datagram)
                event = core.next_event()
                while event is not None:
                    if type(event) is not TunnelPacket:
                        rearm = True
                        if type(event) is SessionClosed:
                            self.closed = True
                    self._on_event(self, event)
                    event = core.next_event()
                if not self._again:
                    break
                rearm = True
        finally:
            self._pumping = False
        if self.closed:
            self._cancel_timer()
        elif rearm or self._deadline is None:
            self._arm(self.core.get_timer())

    def _arm(self, deadline: float | None) -> None:
        if deadline == self._deadline:
            return
        self._cancel_timer()
        self._deadline = deadline
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._fire)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline = None

    def _fire(self) -> None:
        self._timer = None
        self._deadline = None
        if self.closed:
            return
        self.now = now = self._loop.time()
        self.core.handle_timer(now)
        self.pump()
