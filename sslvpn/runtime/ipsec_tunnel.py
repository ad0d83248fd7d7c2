"""One site-to-site tunnel at run time: its IKE SAs, its ESP SAs and its status.

A `Tunnel` keeps up to three kinds of IKE SA (the IKE core, `IkeSa`) with its peer:

* the *live* SA, authenticated (IKE_AUTH completed); it owns the ESP SAs;
* while it initiates, our own *initiation* in flight, retried with back-off when it fails;
* *half-open* responder SAs for IKE_SA_INIT requests from the peer's address, admitted by
  the service's `InitGate` (COOKIE, throttle) into a bounded `HalfOpenTable`.

Only a completed IKE_AUTH replaces the live SA (the old one gets a DELETE): the SA that
authenticates last wins, which also settles both sides initiating at once. Nothing
unauthenticated (a forged INIT, a failing half-open SA) touches the live SA or our own
initiation. Messages are routed by SPI after a cheap header check and parsed once; every
drop is counted by reason and source (`DropLedger`); an authentication failure is logged
with the peer's address and port and feeds the gate's throttle.

After every input the tunnel sends what the cores queued, dispatches their events and keeps
exactly one timer. CHILD_SA events install and remove ESP SAs (the old inbound SA stays
until its DELETE and ``REKEYED_INBOUND_GRACE`` after, so a rekey loses nothing); a rekey
the peer refuses leaves the SAs in use alone; failures become the tunnel's ``last_error``; a
dead peer (DPD) is handled by the tunnel's ``dpd_action``: ``restart`` initiates a fresh IKE
SA at once (never retransmitting on SPIs the peer may have forgotten), ``clear`` forgets
the SAs and waits for the peer (or, starting on traffic, the next packet), ``none`` only
waits for the peer. An initiation the peer never answered starts again at once (the
retransmission back-off was the wait); one it refused, after a growing delay. The
operator's ``rekey``, ``restart`` and ``down`` act on the running tunnel.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from sslvpn.eventlog import fields
from sslvpn.ipsec.esp.packet import EspCipher, EspKeys, InboundSa, OutboundSa, SequenceExhausted
from sslvpn.ipsec.esp.sad import Sad
from sslvpn.ipsec.ike import events as ev
from sslvpn.ipsec.ike.admission import HalfOpenTable, InitGate, is_initial_request
from sslvpn.ipsec.ike.config import IkeConfig
from sslvpn.ipsec.ike.constants import IntegId
from sslvpn.ipsec.ike.messages import IkeHeader, MalformedMessage, peek_header, pull_message
from sslvpn.ipsec.ike.proposals import Suite
from sslvpn.ipsec.ike.sa import IkeSa, IkeState
from sslvpn.ipsec.tunnel_settings import TunnelSettings
from sslvpn.runtime.control import TunnelStatus
from sslvpn.runtime.drop_ledger import DropLedger
from sslvpn.runtime.ike_udp import NON_ESP_MARKER, Address, IkeSockets
from sslvpn.store.ipsec_queries import TunnelConfig

log = logging.getLogger(__name__)

RETRY_DELAYS = (2.0, 5.0, 10.0, 20.0, 30.0)  # seconds before re-initiating after a failure
# a rekeyed CHILD_SA's inbound half outlives its DELETE this long, so ESP the peer sent on
# it just before (reordered, or queued behind the DELETE) still arrives: strongSwan's
# delete_rekeyed_delay
REKEYED_INBOUND_GRACE = 5.0


_CBC_CIPHERS = {
    IntegId.HMAC_SHA2_256_128: EspCipher.AES_CBC_SHA256,
    IntegId.HMAC_SHA2_384_192: EspCipher.AES_CBC_SHA384,
    IntegId.HMAC_SHA2_512_256: EspCipher.AES_CBC_SHA512,
}


def esp_cipher(suite: Suite) -> EspCipher:
    """Our ESP family for a negotiated CHILD_SA suite (the parser allows nothing else)."""
    return EspCipher.AES_GCM16 if suite.aead else _CBC_CIPHERS[suite.integ]


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
        gate: InitGate,
        local_ike: Address,
        ike_port: int,
        nat_t_port: int,
        drops: DropLedger | None = None,
        esp_drops: DropLedger | None = None,
        rand: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        self.ike_config = ike_config
        self.name = config.name
        self._sockets = sockets
        self._sad = sad
        self._gate = gate
        self._rand = rand
        self._local_ike = local_ike
        self._peer_ike: Address = (config.remote_address, ike_port)
        self.peer_nat_t: Address = (config.remote_address, nat_t_port)
        self.sa: IkeSa | None = None  # live: authenticated
        self.initiating: IkeSa | None = None  # our own IKE_SA_INIT / IKE_AUTH in flight
        self.half_open: HalfOpenTable[IkeSa] = HalfOpenTable(gate)
        self.inits_admitted = 0  # IKE_SA_INIT requests answered in full (one DH each)
        self.drops = DropLedger(with_port=True, parent=drops)  # IKE
        self.esp_drops = DropLedger(with_port=True, parent=esp_drops)  # its ESP and packets
        self.outbound: OutboundSa | None = None
        self._inbound_spis: set[int] = set()
        self._retiring: dict[int, float] = {}  # rekeyed inbound SPI -> when it goes
        self.rekeys: Counter[str] = Counter()  # completed rekeys, "ike" and "child"
        self._current_spi_in: int | None = None
        self._esp_suite: str | None = None  # of the CHILD_SA we send on
        self._state = "down"
        self.last_error: str | None = None
        self.established_at: datetime | None = None
        self.bytes_in = self.bytes_out = self.packets_in = self.packets_out = 0
        self._timer: asyncio.TimerHandle | None = None
        self._failures = 0
        self._retry_at: float | None = None
        self.stopped = False
        self.settings = TunnelSettings(**config.timers)
        self._initiator = config.initiate  # re-initiate on failure (start or DPD restart)
        self._held = False  # taken down by the operator: nothing starts it but the peer
        self._keepalive_mark = (-1, 0.0)  # (packets_out, time) when we last checked

    def __repr__(self) -> str:
        return f"Tunnel({self.name!r}, {self.state})"

    @property
    def state(self) -> str:
        """down, connecting or up; each change is logged (event ``tunnel.state``)."""
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        previous, self._state = self._state, value
        if value != previous:
            log.info("tunnel %s: %s -> %s", self.name, previous, value, extra=fields(
                "tunnel.state", tunnel=self.name, state=value, previous_state=previous))

    # -- control -----------------------------------------------------------------------
    def start(self, now: float) -> None:
        """Bring the tunnel up: initiate, or wait for the peer."""
        self.stopped = False
        if not self.config.policies:
            self.last_error = "no SPD policy: add one with 'sslvpn ipsec policy add'"
            self.stopped = True
            return
        self._initiator = self.config.initiate
        self._held = False
        if self.config.initiate:
            self._initiate(now)
        else:
            self.state = "connecting"

    def on_demand(self, now: float) -> None:
        """A packet for the peer found no SA: a tunnel that starts on traffic starts now."""
        if (self.config.start_action == "trap" and not self.stopped and not self._held
                and self.sa is None and self.initiating is None and self._retry_at is None):
            log.info("tunnel %s: traffic for the peer, initiating", self.name)
            self._initiate(now)

    def reconfigure(self, config: TunnelConfig, ike_config: IkeConfig) -> None:
        """New timers or start action: SAs keep their keys, new timers apply from now on."""
        self.config, self.ike_config = config, ike_config
        self.settings = TunnelSettings(**config.timers)
        for sa in self._all_sas():
            sa.config = ike_config
        if not self._held:
            self._initiator = config.initiate

    def _initiate(self, now: float) -> None:
        self.initiating = IkeSa(self.ike_config, self._local_ike, self._peer_ike,
                                initiator=True, rand=self._rand)
        self.initiating.initiate(now)
        if self.sa is None:
            self.state = "connecting"
        self._retry_at = None
        self._flush(now)

    def stop(self, now: float, reason: str | None = None) -> None:
        """Delete the IKE SA politely (the DELETE goes out) and forget every SA."""
        self.stopped = True
        if self.sa is not None:
            self.sa.delete(now)
            self._send(self.sa, now)
        self._drop_live()
        self.initiating = None
        self.half_open.clear()
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

    def restart(self, now: float) -> None:
        """The operator's restart: DELETE the IKE SA and negotiate a fresh one at once."""
        self._delete_live(now)
        self.initiating = None
        self._initiator, self._held, self._failures = True, False, 0
        log.info("tunnel %s: restarted by the operator", self.name)
        self._initiate(now)

    def terminate(self, now: float) -> None:
        """The operator's down: DELETE the IKE SA; nothing re-initiates it (the peer may),
        unlike `stop` (the admin switch), which also ignores the peer."""
        self._delete_live(now)
        self.initiating = None
        self._retry_at = None
        self._initiator, self._held = False, True
        self.state = "down"
        self.last_error = "taken down by the operator"
        log.info("tunnel %s: taken down by the operator", self.name)
        self._flush(now)

    def _delete_live(self, now: float) -> None:
        if self.sa is not None:
            self.sa.delete(now)
            self._send(self.sa, now)
        self._drop_live()

    # -- inputs ------------------------------------------------------------------------
    def receive_ike(self, message: bytes, peer: Address, nat_t: bool, now: float) -> None:
        """One IKE message from the peer's address (the marker already removed on 4500).

        Cheap checks first: header framing, then the SPIs pick an SA; an unknown SPI is
        dropped unless the message opens a new IKE SA, which the gate must admit.
        """
        if self.stopped:
            self.drops.count("tunnel-down", peer)
            return
        try:
            header = peek_header(message)
        except MalformedMessage as exc:
            self.drops.count(exc.reason, peer)
            return
        sa = self._route(header)
        if sa is not None:
            try:
                parsed = pull_message(message, header)
            except MalformedMessage as exc:
                self.drops.count(exc.reason, peer)
                return
            sa.receive_message(parsed, message, peer, now, nat_t=nat_t)
            self._flush(now, peer)
        elif not nat_t and is_initial_request(header):
            self._admit(message, header, peer, now)
        else:
            self.drops.count("unknown-spi", peer)

    def _route(self, header: IkeHeader) -> IkeSa | None:
        """The SA a message is for, by SPIs (a retransmitted INIT finds its half-open SA)."""
        live = self.sa
        if live is not None:
            spis = live.local_spis
            if header.spi_i in spis or header.spi_r in spis:
                return live
        own = self.initiating
        if own is not None and header.spi_i == own.local_spi:
            return own
        entry = self.half_open.get(header.spi_i)
        return entry.sa if entry is not None else None

    def _admit(self, data: bytes, header: IkeHeader, peer: Address, now: float) -> None:
        """A new IKE_SA_INIT: the gate decides (COOKIE, throttle); admitted ones are kept."""
        try:
            verdict = self._gate.admit(data, header, peer, len(self.half_open), now)
        except MalformedMessage as exc:
            self.drops.count(exc.reason, peer)
            return
        if verdict.answer is not None:
            self._sockets.send_ike(verdict.answer, peer, nat_t=False)
        if verdict.message is None:
            self.drops.count(verdict.drop or "invalid", peer)
            return
        sa = IkeSa(self.ike_config, self._local_ike, peer, initiator=False, rand=self._rand)
        sa.receive_message(verdict.message, data, peer, now, nat_t=False)
        if sa.state is IkeState.AUTH_WAIT:  # answered in full: it now waits for IKE_AUTH
            self.inits_admitted += 1
            evicted = self.half_open.add(header.spi_i, sa, peer)
            if evicted is not None:
                self.drops.count("half-open-evicted", evicted.source)
        self._drain(sa, now, peer)
        self._schedule(now)

    def handle_timer(self, now: float) -> None:
        self._timer = None
        for spi, until in list(self._retiring.items()):
            if now >= until:
                self._forget_inbound(spi)
        if self._retry_at is not None and now >= self._retry_at and not self.stopped:
            self._initiate(now)
            return
        for sa in self._all_sas():
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
    def _all_sas(self) -> list[IkeSa]:
        sas = [entry.sa for entry in self.half_open]
        for sa in (self.initiating, self.sa):
            if sa is not None:
                sas.append(sa)
        return sas

    def _send(self, sa: IkeSa | None, now: float) -> None:
        if sa is None:
            return
        for data, addr in sa.datagrams_to_send(now):
            if data[:4] == NON_ESP_MARKER:  # the core floated to NAT-T: send from 4500
                if sa is self.sa:
                    self.peer_nat_t = addr
                self._sockets.send_ike(data[4:], addr, nat_t=True)
            else:
                self._sockets.send_ike(data, addr, nat_t=False)

    def _flush(self, now: float, source: Address | None = None) -> None:
        for sa in self._all_sas():
            self._drain(sa, now, source)
        self._schedule(now)

    def _drain(self, sa: IkeSa, now: float, source: Address | None) -> None:
        """Send what ``sa`` queued and act on its events (``source``: whose datagram it got)."""
        self._send(sa, now)
        events: list[ev.IkeEvent] = []
        while (event := sa.next_event()) is not None:
            events.append(event)
        if (sa is not self.sa and self._pending(sa)
                and any(isinstance(e, ev.IkeSaEstablished) for e in events)):
            self._promote(sa, now)
        live = sa is self.sa
        for event in events:
            if isinstance(event, ev.MessageDropped):
                if source is not None:
                    self.drops.count(event.kind, source)
            elif live:
                self._on_event(event, now)
            else:
                self._unauthenticated_event(sa, event, now)
        self._send(sa, now)

    def _pending(self, sa: IkeSa) -> bool:
        return sa is self.initiating or self._entry_source(sa) is not None

    def _entry_source(self, sa: IkeSa) -> Address | None:
        """Where the IKE_SA_INIT of half-open ``sa`` came from (None: not half-open)."""
        return next((entry.source for entry in self.half_open if entry.sa is sa), None)

    def _promote(self, sa: IkeSa, now: float) -> None:
        """``sa`` authenticated: it becomes the live SA.

        The old live SA gets one DELETE (it cleans up a peer that raced us; a restarted
        peer ignores it) and is then forgotten, with its ESP SAs.
        """
        if sa is self.initiating:
            self.initiating = None
        else:
            self._forget_half_open(sa)
        old = self.sa
        if old is not None:
            old.delete(now)
            self._send(old, now)
        self._drop_live()
        self.sa = sa
        if sa.encapsulated:
            self.peer_nat_t = sa.remote_addr
        self._retry_at = None
        self._held = False
        self.state = "connecting"

    def _forget_half_open(self, sa: IkeSa) -> None:
        for entry in self.half_open:
            if entry.sa is sa:
                self.half_open.remove(entry.spi_i)

    def _unauthenticated_event(self, sa: IkeSa, event: ev.IkeEvent, now: float) -> None:
        """An event of our initiation, a half-open SA or a stateless answer: it may fail
        itself, never the live SA."""
        if sa is self.initiating:
            if isinstance(event, ev.AuthenticationFailed):
                where = f"{sa.remote_addr[0]}:{sa.remote_addr[1]}"
                self._initiation_failed(f"authentication failed with {where}: {event.reason}",
                                        now)
            elif isinstance(event, ev.NoProposalChosen):
                self._initiation_failed(
                    f"no proposal chosen in {event.exchange}: {event.detail}", now)
            elif isinstance(event, ev.IkeSaClosed):
                self._initiation_failed(f"IKE SA closed: {event.reason}", now,
                                        again_now=event.unanswered)
        elif isinstance(event, ev.AuthenticationFailed):
            self._peer_auth_failed(sa, event.reason, now)
        elif isinstance(event, ev.NoProposalChosen):
            self._note_error(f"no proposal chosen in {event.exchange}: {event.detail}")
        elif isinstance(event, ev.IkeSaClosed):
            self._forget_half_open(sa)

    def _peer_auth_failed(self, sa: IkeSa, reason: str, now: float) -> None:
        """An initiator at the peer's address failed IKE_AUTH: log who, count, throttle."""
        where = f"{sa.remote_addr[0]}:{sa.remote_addr[1]}"
        log.warning("tunnel %s: authentication failed from %s: %s", self.name, where, reason)
        self.drops.count("auth-failed", sa.remote_addr)
        self._gate.throttle.failed(self._entry_source(sa) or sa.remote_addr, now)
        self._note_error(f"authentication failed from {where}: {reason}")

    def _note_error(self, reason: str) -> None:
        """A failed attempt by the peer explains a tunnel that is not up (never one that is)."""
        if self.state != "up":
            self.last_error = reason

    def _initiation_failed(self, reason: str, now: float, *, again_now: bool = False) -> None:
        self.initiating = None
        log.warning("tunnel %s: %s", self.name, reason)
        if self.sa is None:  # else a live SA came up meanwhile: nothing is lost
            self.last_error = reason
            self._retry(now, again_now=again_now)

    def _on_event(self, event: ev.IkeEvent, now: float) -> None:
        """An event of the live SA."""
        if isinstance(event, ev.ChildSaEstablished):
            self._install(event)
        elif isinstance(event, ev.ChildSaDeleted):
            if event.reason == "rekeyed" and event.spi_in in self._inbound_spis:
                self._retiring[event.spi_in] = now + REKEYED_INBOUND_GRACE
            else:
                self._forget_inbound(event.spi_in)
            if self.outbound is not None and self.outbound.spi == event.spi_out:
                self.outbound = None
                self.state = "connecting" if self.sa is not None else "down"
        elif isinstance(event, ev.IkeSaEstablished):
            where = f"{self.sa.remote_addr[0]}:{self.sa.remote_addr[1]}" if self.sa else "?"
            log.info("tunnel %s: IKE SA established with %s at %s", self.name,
                     event.remote_id, where)
        elif isinstance(event, ev.PeerDead):
            self._peer_dead(now)
        elif isinstance(event, ev.NoProposalChosen) and event.exchange == "CREATE_CHILD_SA":
            # a rekey (ours or the peer's) found no common proposal: the SAs in use stay
            self.last_error = f"no proposal chosen in {event.exchange}: {event.detail}"
        elif isinstance(event, ev.NoProposalChosen):
            self._fail(f"no proposal chosen in {event.exchange}: {event.detail}", now)
        elif isinstance(event, ev.IkeSaClosed) and self.sa is not None:
            self._fail(f"IKE SA closed: {event.reason}", now)
        elif isinstance(event, ev.ChildSaFailed):
            self.last_error = f"CHILD_SA failed: {event.reason}"
        elif isinstance(event, ev.IkeRekeyFailed):
            log.warning("tunnel %s: IKE rekey failed, the IKE SA stays: %s", self.name,
                        event.reason)
            self.last_error = f"IKE rekey failed: {event.reason}"
        elif isinstance(event, ev.IkeSaRekeyed):
            self.rekeys["ike"] += 1
            if event.collision:
                self.rekeys["ike-collision"] += 1
                log.info("tunnel %s: IKE SA rekeys crossed; one kept by the lowest nonce",
                         self.name)

    def _forget_inbound(self, spi: int) -> None:
        self._sad.remove(spi)
        self._inbound_spis.discard(spi)
        self._retiring.pop(spi, None)

    def _install(self, event: ev.ChildSaEstablished) -> None:
        if event.rekeyed_from is not None and event.outbound:
            self.rekeys["child"] += 1
        cipher = esp_cipher(event.cipher)
        if event.spi_in not in self._inbound_spis:  # else it now sends too: keep its window
            self._sad.add(InboundSa(event.spi_in, cipher, _keys(event.keys_in)), self)
            self._inbound_spis.add(event.spi_in)
        if not event.outbound:  # the redundant SA of a rekey collision: inbound only
            return
        self._current_spi_in = event.spi_in
        self._esp_suite = event.cipher.name
        self.outbound = OutboundSa(event.spi_out, cipher, _keys(event.keys_out), rand=self._rand)
        if self.state != "up":
            self.established_at = datetime.now(UTC)
        self.state = "up"
        self._failures = 0
        log.info("tunnel %s: CHILD_SA in %08x out %08x (%s)", self.name, event.spi_in,
                 event.spi_out, event.cipher.name)

    def _fail(self, reason: str, now: float) -> None:
        """The live SA is gone; half-open SAs and an initiation in flight carry on (the
        tunnel shows "connecting" only while it initiates itself)."""
        log.warning("tunnel %s: %s", self.name, reason)
        self.last_error = reason
        self._drop_live()
        if self.initiating is None:
            self._retry(now)
        self.state = "connecting" if self.initiating or self._retry_at is not None else "down"

    def _peer_dead(self, now: float) -> None:
        """DPD gave up: act as the tunnel's ``dpd_action`` says."""
        reason = "peer dead (no answer to DPD or requests)"
        log.warning("tunnel %s: %s; dpd action %s", self.name, reason, self.settings.dpd_action)
        self.last_error = reason
        self._drop_live()
        if self.settings.dpd_action == "restart":
            self._initiator = True
            if self.initiating is None:
                self._initiate(now)
            return
        self._initiator = False
        self._held = self.settings.dpd_action == "none"
        self.state = "connecting" if self.initiating is not None else "down"

    def _retry(self, now: float, *, again_now: bool = False) -> None:
        """An initiating tunnel tries again: at once when the peer never answered (the
        retransmissions were the back-off), else after a growing delay."""
        if not self._initiator or self.stopped:
            return
        if again_now:
            self._retry_at = now
            return
        delay = RETRY_DELAYS[min(self._failures, len(RETRY_DELAYS) - 1)]
        self._failures += 1
        self._retry_at = now + delay

    def _drop_live(self) -> None:
        self.sa = None
        self.outbound = None
        for spi in self._inbound_spis:
            self._sad.remove(spi)
        self._inbound_spis.clear()
        self._retiring.clear()

    # -- timer -------------------------------------------------------------------------
    def _schedule(self, now: float) -> None:
        self._cancel_timer()
        timers = [sa.get_timer() for sa in self._all_sas()]
        deadlines = [t for t in (self._retry_at, *timers, *self._retiring.values()) if t]
        if not deadlines or self.stopped:
            return
        loop = asyncio.get_running_loop()
        at = min(deadlines)
        self._timer = loop.call_at(at, lambda: self.handle_timer(loop.time()))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def status(self, now: float) -> TunnelStatus:
        out = self.outbound
        spi_in = self._current_spi_in if out else None
        sa = self.sa
        child = next((c for c in sa.children if int.from_bytes(c.spi_in, "big") == spi_in),
                     None) if sa is not None and spi_in is not None else None
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
            ike_half_open=len(self.half_open),
            ike_half_open_peak=self.half_open.peak,
            ike_inits_admitted=self.inits_admitted,
            ike_drops=dict(self.drops.reasons),
            ike_drop_sources=self.drops.top_sources(),
            esp_drops=dict(self.esp_drops.reasons),
            esp_drop_sources=self.esp_drops.top_sources(),
            rekeys=dict(self.rekeys),
            ike_sas=len(sa.local_spis) if sa is not None else 0,
            settings={"start_action": self.config.start_action, **self.settings.as_dict()},
            ike_rekey_in=_left(sa.ike_rekey_at, now) if sa is not None else None,
            child_rekey_in=_left(child.rekey_at, now) if child is not None else None,
            child_expires_in=_left(child.expire_at, now) if child is not None else None,
            ike_proposal=sa.suite.name if sa is not None and sa.suite else None,
            esp_proposal=self._esp_suite if out else None,
        )


def _left(at: float, now: float) -> float | None:
    """Seconds until ``at`` (None when nothing is planned)."""
    return None if at == float("inf") else round(max(0.0, at - now), 1)
