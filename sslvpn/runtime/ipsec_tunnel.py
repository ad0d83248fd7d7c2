"""One site-to-site tunnel at run time: its IKE SA driver, its ESP SAs and its status.

A `Tunnel` owns one live `IkeSa` (the IKE core) and, while that one is up, at most one
*candidate*: a responder SA for a new IKE_SA_INIT from the peer's address (a restarted peer).
The candidate replaces the live SA only once it authenticated, so unauthenticated packets
never tear a working tunnel down.

After every input the tunnel sends what the cores queued, dispatches their events and keeps
exactly one timer. CHILD_SA events install and remove ESP SAs (the old inbound SA stays
until its DELETE, so a rekey loses nothing); failures become the tunnel's ``last_error``; a
dead peer (DPD) or a failed attempt schedules a fresh initiation with back-off when the
tunnel initiates, while a tunnel that waits accepts the peer's next IKE_SA_INIT.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime

from sslvpn.ipsec.esp.packet import EspCipher, EspKeys, InboundSa, OutboundSa, SequenceExhausted
from sslvpn.ipsec.esp.sad import Sad
from sslvpn.ipsec.ike import events as ev
from sslvpn.ipsec.ike.config import IkeConfig
from sslvpn.ipsec.ike.proposals import Suite
from sslvpn.ipsec.ike.sa import IkeSa, is_initial_request
from sslvpn.runtime.control import TunnelStatus
from sslvpn.runtime.ike_udp import NON_ESP_MARKER, Address, IkeSockets
from sslvpn.store.ipsec_queries import TunnelConfig

log = logging.getLogger(__name__)

RETRY_DELAYS = (2.0, 5.0, 10.0, 20.0, 30.0)  # seconds before re-initiating after a failure


def esp_cipher(suite: Suite) -> EspCipher:
    """Our ESP family for a negotiated CHILD_SA suite (the parser allows nothing else)."""
    return EspCipher.AES_GCM16 if suite.aead else EspCipher.AES_CBC_SHA256


def _keys(keys: ev.EspKeys) -> EspKeys:
    return EspKeys(keys.encryption, keys.integrity)


class Tunnel:
    """Driver and data-path state of one tunnel; the service feeds it datagrams and packets."""

    def __init__(
        self,
        config: TunnelConfig,
        ike_config: IkeConfig,
        sockets: IkeSockets,
        sad: Sad[Tunnel],
        *,
        local_ike: Address,
        ike_port: int,
        nat_t_port: int,
        rand: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        self.ike_config = ike_config
        self.name = config.name
        self._sockets = sockets
        self._sad = sad
        self._rand = rand
        self._local_ike = local_ike
        self._peer_ike: Address = (config.remote_address, ike_port)
        self._responder_spi_i: bytes | None = None
        self.candidate: IkeSa | None = None
        self._candidate_spi_i: bytes | None = None
        self.peer_nat_t: Address = (config.remote_address, nat_t_port)
        self.sa: IkeSa | None = None
        self.outbound: OutboundSa | None = None
        self._inbound_spis: set[int] = set()
        self._current_spi_in: int | None = None
        self.state = "down"
        self.last_error: str | None = None
        self.established_at: datetime | None = None
        self.bytes_in = self.bytes_out = self.packets_in = self.packets_out = 0
        self._timer: asyncio.TimerHandle | None = None
        self._failures = 0
        self._retry_at: float | None = None
        self.stopped = False
        self._keepalive_mark = (-1, 0.0)  # (packets_out, time) when we last checked

    def __repr__(self) -> str:
        return f"Tunnel({self.name!r}, {self.state})"

    # -- control -----------------------------------------------------------------------
    def start(self, now: float) -> None:
        """Bring the tunnel up: initiate, or wait for the peer."""
        self.stopped = False
        if not self.config.policies:
            self.last_error = "no SPD policy: add one with 'sslvpn ipsec policy add'"
            self.stopped = True
            return
        if self.config.initiate:
            self._initiate(now)
        else:
            self.state = "connecting"

    def _initiate(self, now: float) -> None:
        self._drop_sa()
        self.sa = IkeSa(self.ike_config, self._local_ike, self._peer_ike, initiator=True,
                        rand=self._rand)
        self.sa.initiate(now)
        self.state = "connecting"
        self._retry_at = None
        self._flush(now)

    def stop(self, now: float, reason: str | None = None) -> None:
        """Delete the IKE SA politely (the DELETE goes out) and forget every ESP SA."""
        self.stopped = True
        if self.sa is not None and self.state == "up":
            self.sa.delete(now)
            self._send(self.sa, now)
        self._drop_sa()
        self.state = "down"
        if reason is not None:
            self.last_error = reason
        self._cancel_timer()

    def rekey_child(self, now: float) -> None:
        if self.sa is not None:
            self.sa.rekey_child(now)
            self._flush(now)

    def rekey_ike(self, now: float) -> None:
        if self.sa is not None:
            self.sa.rekey_ike(now)
            self._flush(now)

    # -- inputs ------------------------------------------------------------------------
    def receive_ike(self, message: bytes, peer: Address, nat_t: bool, now: float) -> None:
        """One IKE message from the peer's address (the marker already removed on 4500)."""
        if self.stopped:
            return
        spi_i = message[:8]
        if (not nat_t and spi_i not in (self._responder_spi_i, self._candidate_spi_i)
                and is_initial_request(message)):
            self._new_responder(spi_i, peer)
        target = self.candidate if spi_i == self._candidate_spi_i else self.sa
        if target is None:
            return
        target.receive_datagram(NON_ESP_MARKER + message if nat_t else message, peer, now)
        self._flush(now)

    def _new_responder(self, spi_i: bytes, peer: Address) -> None:
        """The peer starts a new IKE SA: first contact, a restart, or it won a race."""
        sa = IkeSa(self.ike_config, self._local_ike, peer, initiator=False, rand=self._rand)
        if self.state == "up" and self.sa is not None:
            self.candidate, self._candidate_spi_i = sa, spi_i  # proven before it replaces
            return
        self._drop_sa()
        self._retry_at = None
        self.sa, self._responder_spi_i = sa, spi_i
        self.state = "connecting"

    def _promote(self, now: float) -> None:
        """The candidate authenticated: it becomes the live SA.

        The old SA gets one DELETE (it cleans up a peer that raced us; a restarted peer
        ignores it) and is then forgotten.
        """
        candidate, spi_i, old = self.candidate, self._candidate_spi_i, self.sa
        if old is not None:
            old.delete(now)
            self._send(old, now)
        self._drop_sa()
        self.sa, self._responder_spi_i = candidate, spi_i
        self.state = "connecting"

    def handle_timer(self, now: float) -> None:
        self._timer = None
        if self._retry_at is not None and now >= self._retry_at and not self.stopped:
            self._initiate(now)
            return
        for sa in (self.sa, self.candidate):
            if sa is not None:
                sa.handle_timer(now)
        self._flush(now)

    # -- data path ---------------------------------------------------------------------
    def seal(self, packet: bytes) -> bytes | None:
        """ESP for an inner packet going to the peer, or None (no SA yet, or exhausted)."""
        sa = self.outbound
        if sa is None:
            return None
        try:
            data = sa.seal(packet)
        except SequenceExhausted:  # the IKE core rekeys long before; drop until it has
            return None
        self.packets_out += 1
        self.bytes_out += len(packet)
        return data

    def accepted(self, inner: bytes, now: float) -> None:
        """Count an authentic inner packet; it also proves the peer alive (no DPD needed)."""
        self.packets_in += 1
        self.bytes_in += len(inner)
        if self.sa is not None:
            self.sa.note_inbound_traffic(now)

    def keepalive_due(self, now: float, interval: float) -> bool:
        """Whether nothing went to the peer for ``interval`` s while up (RFC 3948 2.3).

        Keeps a NAT mapping in front of us alive; checked from the service's slow loop so
        the data path pays nothing for it.
        """
        if self.state != "up":
            return False
        packets, since = self._keepalive_mark
        if packets != self.packets_out:
            self._keepalive_mark = (self.packets_out, now)
            return False
        if now - since < interval:
            return False
        self._keepalive_mark = (packets, now)
        return True

    # -- core output -------------------------------------------------------------------
    def _send(self, sa: IkeSa | None, now: float) -> None:
        if sa is None:
            return
        for data, addr in sa.datagrams_to_send(now):
            if data[:4] == NON_ESP_MARKER:  # the core floated to NAT-T: send from 4500
                self.peer_nat_t = addr
                self._sockets.send_ike(data[4:], addr, nat_t=True)
            else:
                self._sockets.send_ike(data, addr, nat_t=False)

    def _flush(self, now: float) -> None:
        for sa in (self.candidate, self.sa):
            if sa is not None:
                self._drain(sa, now)
        self._schedule(now)

    def _drain(self, sa: IkeSa, now: float) -> None:
        self._send(sa, now)
        while (event := sa.next_event()) is not None:
            if sa is self.candidate:
                self._candidate_event(event, now)
            if sa is not self.sa:
                continue  # a dropped or still unproven SA: nothing else to act on
            self._on_event(event, now)
        self._send(sa, now)

    def _candidate_event(self, event: ev.IkeEvent, now: float) -> None:
        if isinstance(event, ev.IkeSaEstablished | ev.ChildSaEstablished):
            self._promote(now)
        elif isinstance(event, ev.AuthenticationFailed | ev.NoProposalChosen | ev.IkeSaClosed):
            log.warning("tunnel %s: new IKE SA from the peer failed: %s", self.name, event)
            self.candidate = self._candidate_spi_i = None

    def _on_event(self, event: ev.IkeEvent, now: float) -> None:
        if isinstance(event, ev.ChildSaEstablished):
            self._install(event)
        elif isinstance(event, ev.ChildSaDeleted):
            self._sad.remove(event.spi_in)
            self._inbound_spis.discard(event.spi_in)
            if self.outbound is not None and self.outbound.spi == event.spi_out:
                self.outbound = None
                self.state = "connecting" if self.sa is not None else "down"
        elif isinstance(event, ev.IkeSaEstablished):
            log.info("tunnel %s: IKE SA established with %s", self.name, event.remote_id)
        elif isinstance(event, ev.PeerDead):
            self._fail("peer dead (no answer to DPD or requests)", now)
        elif isinstance(event, ev.AuthenticationFailed):
            self._fail(f"authentication failed: {event.reason}", now)
        elif isinstance(event, ev.NoProposalChosen):
            self._fail(f"no proposal chosen in {event.exchange}: {event.detail}", now)
        elif isinstance(event, ev.IkeSaClosed):
            self._fail(f"IKE SA closed: {event.reason}", now)
        elif isinstance(event, ev.ChildSaFailed):
            self.last_error = f"CHILD_SA failed: {event.reason}"

    def _install(self, event: ev.ChildSaEstablished) -> None:
        cipher = esp_cipher(event.cipher)
        inbound = InboundSa(event.spi_in, cipher, _keys(event.keys_in))
        self._sad.remove(event.spi_in)
        self._sad.add(inbound, self)
        self._inbound_spis.add(event.spi_in)
        self._current_spi_in = event.spi_in
        self.outbound = OutboundSa(event.spi_out, cipher, _keys(event.keys_out), rand=self._rand)
        if self.state != "up":
            self.established_at = datetime.now(UTC)
        self.state = "up"
        self._failures = 0
        log.info("tunnel %s: CHILD_SA in %08x out %08x (%s)", self.name, event.spi_in,
                 event.spi_out, event.cipher.name)

    def _fail(self, reason: str, now: float) -> None:
        log.warning("tunnel %s: %s", self.name, reason)
        self.last_error = reason
        candidate, spi_i = self.candidate, self._candidate_spi_i
        self._drop_sa()
        if candidate is not None:  # the peer is already starting over: let it finish
            self.sa, self._responder_spi_i = candidate, spi_i
            self.state = "connecting"
            return
        self.state = "down" if not self.config.initiate else "connecting"
        if self.config.initiate and not self.stopped:
            delay = RETRY_DELAYS[min(self._failures, len(RETRY_DELAYS) - 1)]
            self._failures += 1
            self._retry_at = now + delay

    def _drop_sa(self) -> None:
        self.sa = self.candidate = self._candidate_spi_i = None
        self.outbound = None
        for spi in self._inbound_spis:
            self._sad.remove(spi)
        self._inbound_spis.clear()

    # -- timer -------------------------------------------------------------------------
    def _schedule(self, now: float) -> None:
        self._cancel_timer()
        timers = [sa.get_timer() for sa in (self.sa, self.candidate) if sa is not None]
        deadlines = [t for t in (self._retry_at, *timers) if t]
        if not deadlines or self.stopped:
            return
        loop = asyncio.get_running_loop()
        at = min(deadlines)
        self._timer = loop.call_at(at, lambda: self.handle_timer(loop.time()))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def status(self) -> TunnelStatus:
        out = self.outbound
        spi_in = self._current_spi_in if out else None
        return TunnelStatus(
            name=self.name,
            state=self.state,
            last_error=self.last_error,
            established_at=self.established_at if self.state == "up" else None,
            spi_in=f"{spi_in:08x}" if spi_in is not None else None,
            spi_out=f"{out.spi:08x}" if out else None,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            packets_in=self.packets_in,
            packets_out=self.packets_out,
        )
