"""State and plumbing shared by the IKE SA's handshake and established-phase exchanges.

``SaBase`` holds everything an ``IkeSa`` remembers (contexts, CHILD_SAs, queues, timers,
outbox, events) and the few primitives every exchange uses: send a request (window of
one, with retransmission), send or replay a response, drop and count, close.
``handshake.py`` and ``exchanges.py`` add the exchanges; ``sa.py`` adds the public surface.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import Enum

from . import constants as c
from .child import ChildSa
from .config import IkeConfig
from .crypto import DhExchange, KemExchange, Rand, natd_hash
from .events import (
    AuthenticationFailed,
    ChildSaDeleted,
    ChildSaFailed,
    IkeEvent,
    IkeSaClosed,
    MessageDropped,
    NoProposalChosen,
)
from .messages import NotifyPayload, Payload
from .proposals import Suite
from .window import ZERO_SPI, IkeContext, PendingRequest, RequestState

Address = tuple[str, int]


class LocalProtocolError(RuntimeError):
    """The caller used the IKE SA wrongly (e.g. ``initiate`` on a responder)."""


class Drop(Exception):
    """Internal: abandon processing of one peer message and count it as dropped.

    ``kind`` is the counter the runtime files it under (``MessageDropped.kind``).
    """

    def __init__(self, reason: str, kind: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


class IkeState(Enum):
    INITIAL = "initial"
    INIT_SENT = "init-sent"
    AUTH_SENT = "auth-sent"
    AUTH_WAIT = "auth-wait"  # responder: INIT answered, waiting for IKE_AUTH
    ESTABLISHED = "established"
    CLOSED = "closed"


@dataclass
class NewIke:
    """An IKE SA that a rekey is creating (RFC 7296 §2.18): settled by CREATE_CHILD_SA, keyed
    once every key exchange is done, the additional ones in IKE_FOLLOWUP_KE (RFC 9370)."""

    ctx: IkeContext
    suite: Suite
    ni: bytes = field(repr=False)  # the nonces of the exchange's initiator and responder
    nr: bytes = field(repr=False)
    secrets: list[bytes] = field(repr=False)  # SK(0), SK(1), ... so far
    todo: list[c.DhGroup]  # additional key exchanges still to run
    link: bytes = b""  # the ADDITIONAL_KEY_EXCHANGE data the next IKE_FOLLOWUP_KE carries
    kem: KemExchange | None = None  # our half of the running one (rekey initiator)
    collided: bool = False  # the peer's rekey crossed ours: settled by the lowest nonce

    @property
    def lower_nonce(self) -> bytes:
        """What RFC 7296 §2.8.2 compares when two rekeys collide."""
        return min(self.ni, self.nr)


class SaBase:
    """Everything one IKE SA remembers, plus the primitives its exchanges share."""

    def __init__(
        self,
        config: IkeConfig,
        local_addr: Address,
        remote_addr: Address,
        *,
        initiator: bool,
        rand: Rand,
    ) -> None:
        self.config = config
        self.local_addr = local_addr
        self.remote_addr = remote_addr
        self.is_initiator = initiator
        self._rand = rand
        self._ctx = IkeContext(rand(8) if initiator else ZERO_SPI, ZERO_SPI, initiator)
        self._old_ctx: IkeContext | None = None
        # IKE rekeys (ike_rekey.py): ours after its CREATE_CHILD_SA, the peer's that we
        # answered, and the redundant SA of a settled collision until its DELETE
        self._rekeying: NewIke | None = None
        self._passive: NewIke | None = None
        self._redundant_ctx: IkeContext | None = None
        self._redundant_until: float | None = None
        self.state = IkeState.INITIAL
        self.close_reason: str | None = None
        self.last_error: str | None = None  # latest negotiation failure, for tunnel status
        self.encapsulated = False  # floated to 4500: IKE and ESP go in UDP with the marker
        self.behind_nat = False  # our NATD_D did not match: the runtime sends keepalives
        self.children: list[ChildSa] = []
        self.dropped: Counter[str] = Counter()
        self.fragmentation = False  # both sides sent IKEV2_FRAGMENTATION_SUPPORTED
        self._events: deque[IkeEvent] = deque()
        self._outbox: list[tuple[bytes, Address]] = []
        self._queue: deque[tuple[str, ChildSa | None]] = deque()
        self._last_received = 0.0
        self._dpd_queued = False
        self._half_open_deadline: float | None = None
        self._ike_rekey_at = float("inf")
        self._child_group: int | None = None  # DH group a peer asked for (INVALID_KE)
        # IKE_SA_INIT material, kept until IKE_AUTH completes (AUTH signs these bytes)
        self._ni = b""
        self._nr = b""
        self._dh: DhExchange | None = None
        self._ke_group = 0
        self._cookie = b""
        self._init_request = b""
        self._init_response = b""
        # RFC 9370/9242: additional key exchanges still to run in IKE_INTERMEDIATE, our KEM
        # half (initiator), and IntAuth_i/IntAuth_r so far (AUTH covers them)
        self._addke_todo: list[c.DhGroup] = []
        self._kem: KemExchange | None = None
        self._int_auth_i = b""
        self._int_auth_r = b""
        self._auth_mid = 1  # message ID of IKE_AUTH, which AUTH covers after intermediates

    def _contexts(self) -> list[IkeContext]:
        """Every IKE SA context in use: current, old (being deleted), redundant, and the
        peer's rekeyed one once it has keys."""
        found = [self._ctx, self._old_ctx, self._redundant_ctx]
        if self._passive is not None and self._passive.ctx.keys is not None:
            found.append(self._passive.ctx)
        return [ctx for ctx in found if ctx is not None]

    # -- events and drops ------------------------------------------------------------------

    def _emit(self, event: IkeEvent) -> None:
        if isinstance(event, NoProposalChosen):
            self.last_error = f"no proposal chosen in {event.exchange}: {event.detail}"
        elif isinstance(event, ChildSaFailed | AuthenticationFailed):
            self.last_error = event.reason
        self._events.append(event)

    def _drop(self, reason: str, kind: str) -> None:
        self.dropped[reason] += 1
        self._emit(MessageDropped(reason, kind))

    # -- sending ------------------------------------------------------------------------------

    def _send_raw(self, data: bytes) -> None:
        prefix = c.NON_ESP_MARKER if self.encapsulated else b""
        self._outbox.append((prefix + data, self.remote_addr))

    def _send_request(
        self,
        ctx: IkeContext,
        exchange: int,
        payloads: list[Payload],
        purpose: str,
        now: float,
        state: RequestState | None = None,
    ) -> None:
        """Send a request on ``ctx`` (whose window must be free) and arm retransmission."""
        message_id = ctx.next_request_id
        data = ctx.encode(exchange, message_id, False, payloads)
        ctx.pending = PendingRequest(
            message_id,
            exchange,
            data,
            purpose,
            state or RequestState(),
            tries=0,
            next_send=now + self._backoff(0),
            sent_at=now,
            wire=self._wire(ctx, data, exchange, message_id, False, payloads),
        )
        ctx.next_request_id += 1
        for datagram in ctx.pending.wire:
            self._send_raw(datagram)

    def _respond(
        self, ctx: IkeContext, exchange: int, message_id: int, payloads: list[Payload]
    ) -> None:
        """Answer a request and cache the bytes for retransmitted copies of it."""
        data = ctx.encode(exchange, message_id, True, payloads)
        ctx.peer_next_id = message_id + 1
        ctx.cached_response = (message_id, data)
        ctx.cached_wire = self._wire(ctx, data, exchange, message_id, True, payloads)
        self._send_cached(ctx)

    def _send_cached(self, ctx: IkeContext) -> None:
        """Our last response again (all its fragments), for a retransmitted request."""
        for datagram in ctx.cached_wire:
            self._send_raw(datagram)

    def _wire(self, ctx: IkeContext, data: bytes, exchange: int, message_id: int,
              response: bool, payloads: list[Payload]) -> list[bytes]:
        """The datagrams of one message: SKF fragments when both sides support them and
        it is too large for one (RFC 7383 §2.5; never IKE_SA_INIT, nor IKE_INTERMEDIATE,
        whose IntAuth we compute over the unfragmented message), else itself."""
        if (not self.fragmentation or len(data) <= self.config.fragment_size
                or exchange in (c.ExchangeType.IKE_SA_INIT,
                                 c.ExchangeType.IKE_INTERMEDIATE)):
            return [data]
        try:
            return ctx.encode_fragments(exchange, message_id, response, payloads,
                                        self.config.fragment_size)
        except ValueError:  # more than MAX_FRAGMENTS at a small size: whole, as without
            return [data]  # RFC 7383, rather than no message at all

    def _backoff(self, tries: int) -> float:
        """The wait after the ``tries``-th resend: strongSwan's 4 s x 1.8^n, capped by
        ``retransmit_limit`` so a peer that comes back is heard from soon."""
        config = self.config
        delay: float = config.retransmit_base * config.retransmit_factor**tries
        return min(delay, config.retransmit_limit) if config.retransmit_limit else delay

    def _retransmit(self, ctx: IkeContext, pending: PendingRequest, now: float) -> bool:
        """Resend with back-off. False once all tries are spent."""
        if pending.tries >= self.config.retransmit_tries:
            return False
        for datagram in pending.wire:
            self._send_raw(datagram)
        pending.tries += 1
        pending.next_send = now + self._backoff(pending.tries)
        return True

    def _give_up_at(self, pending: PendingRequest) -> float:
        """When an unanswered request on an established SA means a dead peer (DPD timeout),
        so liveness is not left to the whole retransmission schedule."""
        timeout = self.config.dpd_timeout
        if not timeout or self.state is not IkeState.ESTABLISHED:
            return float("inf")
        return pending.sent_at + timeout

    # -- helpers ---------------------------------------------------------------------------

    def _natd(self, spi_r: bytes, addr: Address, fake: bool) -> bytes:
        """NAT_DETECTION hash; ``fake`` hashes an address that is nobody's (forces NAT-T)."""
        if fake:
            return natd_hash(self._ctx.spi_i, spi_r, bytes(4), 0)
        ip = ipaddress.ip_address(addr[0]).packed
        return natd_hash(self._ctx.spi_i, spi_r, ip, addr[1])

    def _new_dh(self, group: int) -> DhExchange:
        return DhExchange(c.DhGroup(group), self._rand)

    def _nonce(self) -> bytes:
        return self._rand(c.NONCE_LENGTH)

    @staticmethod
    def _error_notify(payloads: list[Payload]) -> int | None:
        """The first error notify type (< 16384) in a message, if any (RFC 7296 §3.10.1)."""
        for p in payloads:
            if isinstance(p, NotifyPayload) and p.notify_type < c.ERROR_NOTIFY_LIMIT:
                return p.notify_type
        return None

    @staticmethod
    def _notify_name(value: int) -> str:
        try:
            return c.NotifyType(value).name
        except ValueError:
            return str(value)

    # -- teardown --------------------------------------------------------------------------

    def _remove_child(self, child: ChildSa, reason: str) -> None:
        if child in self.children:
            self.children.remove(child)
            successor = child.successor
            if successor is not None and successor.held and successor in self.children:
                successor.held = False  # send on it from now on, before the old one goes
                self._emit(successor.established(child.spi_in, True))
            self._emit(
                ChildSaDeleted(
                    int.from_bytes(child.spi_in, "big"),
                    int.from_bytes(child.spi_out, "big"),
                    reason,
                )
            )

    def _close(self, reason: str, *, unanswered: bool = False) -> None:
        """Forget the IKE SA and all CHILD_SAs locally (after DELETE, failure or timeout)."""
        if self.state is IkeState.CLOSED:
            return
        for child in list(self.children):
            self._remove_child(child, reason)
        self.state = IkeState.CLOSED
        self.close_reason = reason
        self._ctx.pending = None
        self._old_ctx = self._redundant_ctx = self._redundant_until = None
        self._rekeying = self._passive = None
        self._queue.clear()
        self._half_open_deadline = None
        self._dh = None
        self._emit(IkeSaClosed(reason, unanswered))
