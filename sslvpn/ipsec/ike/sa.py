"""The IKE SA state machine (RFC 7296), initiator and responder, sans-I/O.

Surface (one ``IkeSa`` per peer; the runtime drives it):

* inputs: ``receive_datagram(data, addr, now)`` (or ``receive_message`` for a message the
  caller already parsed), ``handle_timer(now)``,
  ``note_inbound_traffic(now)`` (authenticated ESP arrived: DPD need not probe);
* commands: ``initiate(now)``, ``rekey_child(now, spi_in=None)``, ``rekey_ike(now)``,
  ``delete(now)``;
* outputs: ``datagrams_to_send(now) -> [(udp_payload, (ip, port))]``, ``get_timer()``,
  ``next_event()`` (see ``events.py``), plus ``status``, ``local_spis``, ``remote_addr``.

Ports and the non-ESP marker (RFC 3948 §2.2) are handled HERE, not by the runtime:
``receive_datagram`` takes the UDP payload exactly as received on 500 or 4500 (an IKE
message on 4500 starts with four zero bytes; a lone 0xFF keepalive is ignored), and every
datagram to send is a complete UDP payload. Rule for the runtime: a datagram that starts
with ``NON_ESP_MARKER`` leaves from the local 4500 socket, any other from the local 500
socket. ESP itself never passes through here; send it to ``remote_addr``. With
``force_encap`` (the default) we fake our NATD_S hash like strongSwan's ``encap=yes`` and
always float to 4500 after IKE_SA_INIT, because strongSwan's libipsec only does
ESP-in-UDP.

A responder ``IkeSa`` is created by the runtime for an IKE_SA_INIT request that
``admission.InitGate`` admitted; it closes itself after ``half_open_timeout`` if IKE_AUTH
never comes, and ``admission.HalfOpenTable`` bounds how many of them a peer has.
"""

from __future__ import annotations

import os

from . import constants as c
from .base import Address, Drop, IkeState, LocalProtocolError
from .child import ChildState
from .config import IkeConfig
from .constants import ExchangeType, NotifyType, ProtocolId
from .crypto import Rand
from .events import IkeEvent
from .exchanges import EstablishedExchanges
from .fragments import acceptable
from .messages import (
    DeletePayload,
    MalformedMessage,
    Message,
    NotifyPayload,
    Payload,
    SkfPayload,
    pull_message,
    unsupported_critical,
)
from .proposals import Suite
from .window import INCOMPLETE, ZERO_SPI, IkeContext, PendingRequest

__all__ = ["Address", "IkeSa", "IkeState", "LocalProtocolError"]


class IkeSa(EstablishedExchanges):
    """One IKE SA with its CHILD_SAs, from IKE_SA_INIT to DELETE, across rekeys."""

    def __init__(
        self,
        config: IkeConfig,
        local_addr: Address,
        remote_addr: Address,
        *,
        initiator: bool,
        rand: Rand = os.urandom,
    ) -> None:
        super().__init__(config, local_addr, remote_addr, initiator=initiator, rand=rand)

    # -- state for the runtime ---------------------------------------------------------

    @property
    def local_spi(self) -> bytes:
        return self._ctx.local_spi

    @property
    def local_spis(self) -> frozenset[bytes]:
        """Our IKE SPIs in use (more than one around an IKE rekey): demultiplex IKE on these."""
        return frozenset(ctx.local_spi for ctx in self._contexts()) - {ZERO_SPI}

    @property
    def ike_rekey_at(self) -> float:
        """When this IKE SA starts its rekey (inf: none planned)."""
        return self._ike_rekey_at

    @property
    def suite(self) -> Suite | None:
        """The IKE SA's negotiated algorithms (of the current keys, after a rekey)."""
        return self._ctx.suite

    @property
    def half_open(self) -> bool:
        """A responder without an authenticated peer yet (the runtime bounds these)."""
        return not self.is_initiator and self.state in (IkeState.INITIAL, IkeState.AUTH_WAIT)

    @property
    def status(self) -> str:
        """One line for the portal's tunnel status."""
        if self.state is IkeState.CLOSED:
            return f"closed: {self.close_reason}"
        if self.state is IkeState.ESTABLISHED:
            suite = self.suite.name if self.suite else "?"
            line = f"established ({suite}, {len(self.children)} CHILD_SA)"
            if not self.children and self.last_error:
                line += f"; {self.last_error}"
            return line
        return "connecting"

    # -- commands ----------------------------------------------------------------------

    def initiate(self, now: float) -> None:
        """Start IKE_SA_INIT (initiator only)."""
        if not self.is_initiator or self.state is not IkeState.INITIAL:
            raise LocalProtocolError("initiate() needs a fresh initiator IkeSa")
        self._start_init(now)

    def rekey_child(self, now: float, spi_in: int | None = None) -> None:
        """Rekey one installed CHILD_SA (the first one when ``spi_in`` is None)."""
        self._require_established()
        child = next(
            (
                ch
                for ch in self.children
                if ch.state is ChildState.INSTALLED
                and (spi_in is None or int.from_bytes(ch.spi_in, "big") == spi_in)
            ),
            None,
        )
        if child is None:
            raise LocalProtocolError("no installed CHILD_SA to rekey")
        child.state = ChildState.REKEYING
        self._queue.append(("rekey_child", child))
        self._pump(now)

    def rekey_ike(self, now: float) -> None:
        """Rekey the IKE SA now (CHILD_SAs move to the new one unchanged)."""
        self._require_established()
        self._ike_rekey_at = float("inf")
        self._queue.append(("rekey_ike", None))
        self._pump(now)

    def delete(self, now: float) -> None:
        """Politely delete the IKE SA (and with it every CHILD_SA)."""
        if self.state is not IkeState.ESTABLISHED:
            self._close("deleted locally")
            return
        self._queue.appendleft(("delete_ike", None))
        self._pump(now)

    def _require_established(self) -> None:
        if self.state is not IkeState.ESTABLISHED:
            raise LocalProtocolError("the IKE SA is not established")

    # -- inputs ------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Feed one UDP payload from ``addr``; never raises on peer input."""
        if data == c.NAT_KEEPALIVE:
            return
        marker = data[:4] == c.NON_ESP_MARKER
        if marker:
            data = data[4:]
        try:
            message = pull_message(data)
        except MalformedMessage as exc:
            self._drop("malformed message", exc.reason)
            return
        self.receive_message(message, data, addr, now, nat_t=marker)

    def receive_message(
        self, message: Message, data: bytes, addr: Address, now: float, *, nat_t: bool
    ) -> None:
        """Feed one IKE message the caller already parsed (``data`` without the marker;
        ``nat_t``: it came on 4500), so a datagram is parsed once; never raises."""
        try:
            if self.state is IkeState.CLOSED:
                self._replay_after_close(message)
            else:
                self._dispatch(message, data, addr, nat_t, now)
        except Drop as drop:
            self._drop(drop.reason, drop.kind)
        except ValueError as exc:  # MalformedMessage, CryptoError, bad peer values
            self._drop("malformed message", getattr(exc, "reason", "malformed"))
        self._pump(now)

    def note_inbound_traffic(self, now: float) -> None:
        """Authenticated ESP arrived: the peer is alive, DPD may wait."""
        self._last_received = max(self._last_received, now)

    def handle_timer(self, now: float) -> None:
        """Retransmit, expire half-open state, start due rekeys/DPD (call at ``get_timer()``)."""
        for ctx in self._contexts():
            pending = ctx.pending
            if pending is None:
                continue
            timed_out = now >= self._give_up_at(pending)
            if timed_out or now >= pending.next_send:
                if timed_out or not self._retransmit(ctx, pending, now):
                    ctx.pending = None
                    self._gave_up(ctx, pending)
        if self._half_open_deadline is not None and now >= self._half_open_deadline:
            self._close("half-open IKE SA timed out")
        if self._redundant_ctx is not None and now >= (self._redundant_until or 0.0):
            self._forget_context(self._redundant_ctx)
        if self.state is IkeState.ESTABLISHED:
            self._established_timer(now)
        self._pump(now)

    # -- outputs -----------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """UDP payloads queued since the last call, with their destination (see module doc)."""
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> IkeEvent | None:
        """The oldest undelivered event, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """The next time ``handle_timer`` has work, or None when nothing is scheduled."""
        times = [
            min(ctx.pending.next_send, self._give_up_at(ctx.pending))
            for ctx in self._contexts()
            if ctx.pending is not None
        ]
        for deadline in (self._half_open_deadline, self._redundant_until):
            if deadline is not None:
                times.append(deadline)
        if self.state is IkeState.ESTABLISHED:
            times += self._established_timers()
        finite = [t for t in times if t != float("inf")]
        return min(finite) if finite else None

    # -- routing -----------------------------------------------------------------------

    def _dispatch(
        self, message: Message, data: bytes, addr: Address, marker: bool, now: float
    ) -> None:
        header = message.header
        if header.exchange == ExchangeType.IKE_SA_INIT:
            self._on_init_message(message, data, addr, now)
            return
        ctx = self._context_for(message)
        if ctx is None:
            raise Drop("unknown IKE SPI", "unknown-spi")
        if header.from_initiator == ctx.initiator:
            raise Drop("message claims our own role")
        if header.is_response:
            if ctx.pending is None or ctx.pending.message_id != header.message_id:
                raise Drop("unexpected response")
        elif header.message_id not in (ctx.peer_next_id, ctx.peer_next_id - 1):
            raise Drop("request outside the message-ID window")
        last = message.payloads[-1] if message.payloads else None
        if isinstance(last, SkfPayload) and (not self.fragmentation or not acceptable(last)):
            raise Drop("IKE fragment not negotiated or out of range", "bad-fragment")
        payloads = ctx.decrypt(data, message)
        if payloads is None:
            raise Drop("integrity check failed", "bad-integrity")
        if payloads is INCOMPLETE:
            self._last_received = max(self._last_received, now)
            return  # a verified fragment, kept until the others arrive
        self._last_received = max(self._last_received, now)
        if (self._passive is not None and ctx is self._passive.ctx
                and not _deletes_ike(payloads)):
            self._adopt_passive(now)  # the peer already uses the SA its rekey created
        if marker and not self.encapsulated:
            self.encapsulated = True
        if self.encapsulated and addr != self.remote_addr:
            self.remote_addr = addr  # NAT rebinding: follow authenticated messages only
        if header.is_response:
            pending = ctx.pending
            ctx.pending = None
            if pending is not None:
                self._on_response(ctx, pending, payloads, now)
            return
        if header.message_id == ctx.peer_next_id - 1:
            if ctx.cached_response is not None and ctx.cached_response[0] == header.message_id:
                self._send_cached(ctx)  # retransmitted request
            return
        critical = unsupported_critical(payloads)
        if critical is not None:  # RFC 7296 §2.5: refuse what we must understand but do not
            self._respond(ctx, header.exchange, header.message_id, [NotifyPayload(
                NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, bytes([critical]))])
            return
        self._on_request(ctx, header.exchange, header.message_id, payloads, now)

    def _replay_after_close(self, message: Message) -> None:
        """A closed SA still repeats its last answer (AUTHENTICATION_FAILED, DELETE ack)
        to a retransmitted request, so the peer learns the outcome even if it was lost."""
        header, ctx = message.header, self._ctx
        cached = ctx.cached_response
        if (cached is None or header.is_response or header.message_id != cached[0]
                or header.exchange == ExchangeType.IKE_SA_INIT or not ctx.matches(header)):
            raise Drop("IKE SA closed", "unknown-spi")
        self._send_cached(ctx)

    def _context_for(self, message: Message) -> IkeContext | None:
        for ctx in self._contexts():
            if ctx.spi_r != ZERO_SPI and ctx.matches(message.header):
                return ctx
        return None

    def _on_response(
        self, ctx: IkeContext, pending: PendingRequest, payloads: list[Payload], now: float
    ) -> None:
        if pending.purpose == "auth":
            self._on_auth_response(ctx, payloads, pending.state.spi, now)
        elif pending.purpose == "intermediate":
            self._on_intermediate_response(ctx, payloads, now)
        elif pending.purpose == "followup_ke":
            self._on_followup_response(ctx, payloads, now)
        else:
            self._on_established_response(ctx, pending, payloads, now)

    def _on_request(
        self, ctx: IkeContext, exchange: int, message_id: int, payloads: list[Payload],
        now: float,
    ) -> None:
        if exchange == ExchangeType.IKE_INTERMEDIATE:
            self._on_intermediate_request(ctx, message_id, payloads)
            return
        if exchange == ExchangeType.IKE_AUTH:
            if self.state is not IkeState.AUTH_WAIT or self._addke_todo:
                raise Drop("IKE_AUTH request out of sequence")
            self._on_auth_request(ctx, message_id, payloads, now)
            return
        if self.state is not IkeState.ESTABLISHED:
            raise Drop(f"exchange {exchange} before the IKE SA is established")
        self._on_established_request(ctx, exchange, message_id, payloads, now)

    def _gave_up(self, ctx: IkeContext, pending: PendingRequest) -> None:
        if ctx is self._old_ctx or ctx is self._redundant_ctx:
            self._forget_context(ctx)  # its DELETE went unanswered: forget it quietly
        elif pending.purpose == "delete_ike":
            self._close("deleted (peer did not confirm)")
        elif self.state is IkeState.ESTABLISHED:
            self._peer_dead()
        else:
            self._close(f"no answer to {ExchangeType(pending.exchange).name}", unanswered=True)


def _deletes_ike(payloads: list[Payload]) -> bool:
    return any(isinstance(p, DeletePayload) and p.protocol == ProtocolId.IKE for p in payloads)
