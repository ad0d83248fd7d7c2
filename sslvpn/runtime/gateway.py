"""The gateway: routing between the TUN and the client sessions, the registry, the policy.

Data path (ARCHITECTURE "The data path"): a packet from the TUN is looked up by destination
among the sessions' tunnel addresses and sealed by that session's driver; a packet from a
session goes to the TUN only when its source is that session's own address (anti-spoofing)
and its destination lies inside the VPC networks (no Internet through the VPN); with
client-to-client on, a packet for another client's address goes straight to that session.
Everything else is a counted drop, never a log line.

Control: on ``PeerVerified`` the policy (the store) decides, in a task: the handshake waits
for the answer, the loop does not (the policy's reads run in store threads, bounded in
time). A refused certificate gets AUTH_FAILED with the reason, an accepted one an address
(its stored lease when free) and a PUSH_REPLY; when the store cannot answer, the client is
told ``AUTH_FAILED,TEMP`` and comes back after ``RETRY_AFTER`` seconds. An answer is applied
only to the session that asked, if it still waits. Admission costs a share of one read (the
handshakes asking together are read together, so a burst is not mistaken for a store that
is away) and does not grow with the number of sessions: the pool keeps the leases in
memory (loaded at start) and the accounting (session opened and ended, counters, leases)
goes to a write-behind queue that a worker thread commits in batches. A sweep every few
seconds (also off the loop) disconnects sessions whose certificate was revoked or whose user
was disabled by any process, and sessions another process asked to end (a kick through the
store, a survivor that took this node for down); the fleet's signal wakes it at once. While
the store is away the sweep skips a round and tunnels run on. The registry implements
``GatewayControl``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sslvpn.eventlog import fields
from sslvpn.net import ippacket
from sslvpn.net.access import AccessPolicy, CompiledRules
from sslvpn.net.ippacket import IPV4_HEADER_MIN
from sslvpn.net.pool import AddressPool, PoolExhausted
from sslvpn.net.routes import RouteTable
from sslvpn.openvpn.events import (
    Event,
    PeerRefused,
    PeerVerified,
    SessionClosed,
    SessionEstablished,
    TunnelPacket,
)
from sslvpn.openvpn.key_method import ClientSoftware, client_software
from sslvpn.openvpn.push import PushConfig
from sslvpn.runtime.admission import Admission, AdmissionLimits, Slot
from sslvpn.runtime.control import (
    GatewayCounters,
    ListenerStatus,
    SessionInfo,
    TrafficSample,
    TunnelStatus,
)
from sslvpn.runtime.driver import SessionCore, SessionDriver, Transmit
from sslvpn.runtime.policy import (
    Authorization,
    LeaseStored,
    Policy,
    SessionCounted,
    SessionEnded,
    SessionOpened,
    TrafficCounted,
)
from sslvpn.runtime.records import RecordWriter
from sslvpn.runtime.tun import Tun
from sslvpn.runtime.vpn_login import Credentials
from sslvpn.store import StoreError

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_PEER_ID = 0xFFFFFE
VPC_MEMO_SIZE = 4096  # destinations whose VPC verdict is remembered (cleared when full)
ACCESS_REFRESH = 2.0  # seconds between two polls of the access policy's revision
RETRY_AFTER = 5  # seconds a client told AUTH_FAILED,TEMP (store unavailable) waits to retry
# seconds the read confirming a snapshot's admission waits: until the handshake's last round
# trip (the client's ACK, our PUSH_REPLY) is over, so that its store thread does not hold
# the interpreter lock while the loop has the PUSH_REPLY to send
CONFIRM_AFTER = 0.1
SHUTDOWN_FLUSH_TIMEOUT = 10.0  # seconds shutdown waits for a failing store to take the records
# why a device's session ends when the same certificate connects again (one session a device)
REPLACED = "replaced by a new connection with the same certificate"
_IPV4_NO_OPTIONS = b"\x45"  # version 4, 20-byte header
HANDSHAKE_RESULTS = ("ok", "auth_failed", "revoked", "expired", "tls_error", "timeout")


def refusal_result(reason: str) -> str:
    """The handshake result a refusal counts as: revoked and expired certificates apart."""
    lowered = reason.lower()
    if "revoked" in lowered:
        return "revoked"
    if "expired" in lowered:
        return "expired"
    return "auth_failed"


@dataclass(frozen=True)
class GatewayOptions:
    """The settings the data path and PUSH_REPLY need (from GatewaySettings)."""

    pool: ipaddress.IPv4Network
    vpc_networks: tuple[IPNetwork, ...]
    pool6: ipaddress.IPv6Network | None = None  # client n of ``pool`` gets host n of it
    dns: tuple[IPAddress, ...] = ()
    domains: tuple[str, ...] = ()
    keepalive_interval: int = 10
    keepalive_timeout: int = 60
    client_to_client: bool = False
    tun_mtu: int = 1500
    sweep_interval: float | None = 2.0  # None: another process sweeps (a worker's supervisor)
    peer_id_lane: tuple[int, int] = (0, 1)  # (index, count): hand out index + k * count
    accounting_interval: float = 60.0
    node_name: str = "default"  # the node whose traffic history this gateway books
    admission: AdmissionLimits = AdmissionLimits()


class ClientSession:
    """One client in the registry: who, from where, which address, how much traffic."""

    __slots__ = ("session_id", "driver", "protocol", "real_address", "peer_id", "user",
                 "serial", "device", "vpn_address", "vpn_text", "connected_at",
                 "last_activity", "bytes_in", "bytes_out", "packets_in", "packets_out",
                 "established", "on_closed", "end_reason", "vpn_address6", "accounted",
                 "tls_group", "slot", "handshake", "core_drops", "software", "access")

    def __init__(self, session_id: str, protocol: str, real_address: str, peer_id: int,
                 on_closed: Callable[[], None]) -> None:
        self.session_id = session_id
        self.driver: SessionDriver | None = None
        self.protocol = protocol
        self.real_address = real_address
        self.peer_id = peer_id
        self.user = ""
        self.serial = ""
        self.device = ""
        self.vpn_address: bytes | None = None
        self.vpn_address6: bytes | None = None
        self.vpn_text = ""
        self.connected_at = datetime.now(UTC)
        self.last_activity = 0.0  # event-loop time
        self.bytes_in = 0  # client -> VPC
        self.bytes_out = 0  # VPC -> client
        self.packets_in = 0
        self.packets_out = 0
        self.established = False
        self.on_closed = on_closed
        self.end_reason: str | None = None  # set when the gateway ends it, wins over the core's
        self.accounted = (0, 0)  # byte totals last written to the store
        self.tls_group: str | None = None  # the control channel's key-exchange group
        self.slot: Slot | None = None  # its place in the listeners' admission
        self.handshake: str | None = None  # its counted outcome (one of HANDSHAKE_RESULTS)
        self.core_drops: collections.Counter[str] | None = None  # its core's, if it counts
        self.software = ClientSoftware()  # what the client said it is (peer-info)
        self.access: CompiledRules | None = None  # its user's rules; None: unrestricted


class Gateway:
    """Routes packets between the TUN and the sessions and keeps the session registry."""

    def __init__(self, tun: Tun, options: GatewayOptions, policy: Policy) -> None:
        self.tun = tun
        self.options = options
        self.policy = policy
        self.pool = AddressPool(options.pool)
        self.vpc: RouteTable[bool] = RouteTable()
        for network in options.vpc_networks:
            self.vpc.add(network, True)
        self._vpc_memo: dict[bytes, bool] = {}  # destination -> inside the VPC
        self.drops: collections.Counter[str] = collections.Counter()
        self.tunnel_status_providers: list[Callable[[], list[TunnelStatus]]] = []
        self.tunnel_action_handler: Callable[[str, str], str] | None = None  # IPsec service
        self.flushers: list[Callable[[], None]] = []  # listeners' queued sends, per TUN burst
        self.admission = Admission(options.admission)  # shared by the OpenVPN listeners
        self.drop_counters: list[collections.Counter[str]] = []  # listeners', for the metrics
        # readiness by name (the service adds its listeners' and the TUN's): cheap reads that
        # a probe may make from another thread
        self.ready_checks: dict[str, Callable[[], bool]] = {}
        self._sessions: dict[str, ClientSession] = {}
        self._by_address: dict[bytes, ClientSession] = {}
        self._by_serial: dict[str, ClientSession] = {}  # admitted sessions
        self._peer_ids = itertools.count()
        self._live_peer_ids: set[int] = set()
        self.records = RecordWriter(lambda batch: self.policy.record(batch))
        self._admissions: dict[str, asyncio.Task[None]] = {}  # session id -> policy question
        self.told_to_retry = 0  # clients answered AUTH_FAILED,TEMP (store unavailable)
        self.handshakes: collections.Counter[str] = collections.Counter()
        self._closed_in = 0
        self._closed_out = 0
        self._closed_packets_in = 0
        self._closed_packets_out = 0
        self._closed_core_drops: collections.Counter[str] = collections.Counter()
        self._booked_tunnels: dict[str, tuple[int, int]] = {}  # traffic history so far
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweep_now = asyncio.Event()
        self.access = AccessPolicy()  # groups and rules, as of ``access.revision``

    # -- wiring ------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the stored leases and start reading the TUN (call from the running loop)."""
        self._loop = asyncio.get_running_loop()
        self.pool.restore_leases(await self.policy.stored_leases())
        self.set_access(await self.policy.access_policy(None) or self.access)
        self.tun.start(self._from_tun, self._flush_listeners)

    def _flush_listeners(self) -> None:
        for flush in self.flushers:
            flush()

    def new_session(
        self,
        core: SessionCore,
        *,
        transmit: Transmit,
        protocol: str,
        real_address: str,
        on_closed: Callable[[], None],
        slot: Slot | None = None,
    ) -> ClientSession:
        """Register a session a listener just created; feed it input through ``.driver``.
        Its admission ``slot`` leaves the half-open count when the session is established
        and is released when it ends."""
        session_id = f"{protocol}-{secrets.token_hex(4)}"
        while session_id in self._sessions:  # 32 random bits do collide among 10,000s
            session_id = f"{protocol}-{secrets.token_hex(4)}"
        client = ClientSession(session_id, protocol, real_address, self._next_peer_id(),
                               on_closed)
        client.slot = slot
        client.driver = SessionDriver(core, transmit=transmit,
                                      on_event=lambda _d, event: self._on_event(client, event),
                                      on_packet=self._client_sink(client))
        client.last_activity = client.driver.now
        client.core_drops = getattr(core, "drops", None)
        self._sessions[session_id] = client
        return client

    def _next_peer_id(self) -> int:
        """A free peer-id in this process's lane (``peer_id % count == index``: a worker's
        own, so another worker can tell whose a floated datagram is)."""
        index, count = self.options.peer_id_lane
        lane_size = (MAX_PEER_ID - index) // count + 1
        for _ in range(lane_size):
            candidate = next(self._peer_ids) % lane_size * count + index
            if candidate not in self._live_peer_ids:
                self._live_peer_ids.add(candidate)
                return candidate
        raise RuntimeError("no free peer-id")

    # -- the data path -----------------------------------------------------------------
    def _from_tun(self, packet: bytes) -> None:
        if len(packet) >= IPV4_HEADER_MIN and packet[0] >> 4 == 4:  # the common case inline
            dst: bytes | None = packet[16:20]
        else:
            dst = ippacket.destination(packet)
        client = self._by_address.get(dst) if dst is not None else None
        if client is None or client.driver is None:
            self.drops["tun-no-session"] += 1
            return
        access = client.access
        if access is not None:
            hit = access.known_reply(packet)  # a connection's later packets: one probe
            if hit is None:
                allowed = access.reply_allowed(packet)
            else:
                hit.packets += 1
                allowed = hit.allow
            if not allowed:
                self.drops["access-denied"] += 1
                return
        client.bytes_out += len(packet)
        client.packets_out += 1
        client.driver.send_packet(packet)

    def _client_sink(self, client: ClientSession) -> Callable[[bytes], None]:
        """One session's client -> VPC path with its lookups bound once (the hot path).

        A plain IPv4 packet (20-byte header) from the client's own address to a VPC address
        goes to the TUN here; everything else takes ``_from_client``, which has every check.
        For a client under access rules one probe of their flow cache replaces the VPC check
        (a cached flow was found inside the VPC when ``_from_client`` let its first packet
        through), so the rules cost a dict probe per packet, not a second lookup.
        """
        write = self.tun.write
        slow = self._from_client
        in_vpc = self._in_vpc

        def from_client(packet: bytes) -> None:
            if (packet[:1] == _IPV4_NO_OPTIONS and len(packet) >= IPV4_HEADER_MIN
                    and packet[12:16] == client.vpn_address):
                access = client.access
                if access is None:
                    if not in_vpc(packet[16:20]):
                        slow(client, packet)
                        return
                else:
                    hit = access.known(packet)
                    if hit is None:
                        slow(client, packet)
                        return
                    hit.packets += 1
                    if not hit.allow:
                        self.drops["access-denied"] += 1
                        return
                client.last_activity = client.driver.now  # type: ignore[union-attr]
                client.bytes_in += len(packet)
                client.packets_in += 1
                write(packet)
            else:
                slow(client, packet)

        return from_client

    def _in_vpc(self, dst: bytes) -> bool:
        """VPC route check with a bounded memo of recent destinations."""
        known = self._vpc_memo.get(dst)
        if known is None:
            known = bool(self.vpc.lookup(dst))
            if len(self._vpc_memo) >= VPC_MEMO_SIZE:
                self._vpc_memo.clear()
            self._vpc_memo[dst] = known
        return known

    def _from_client(self, client: ClientSession, packet: bytes) -> None:
        addrs = ippacket.addresses(packet)
        if addrs is None:
            self.drops["not-ip"] += 1
            return
        src, dst = addrs
        if src != client.vpn_address and src != client.vpn_address6:
            self.drops["spoofed-source"] += 1
            return
        assert client.driver is not None  # noqa: S101 (set in new_session)
        client.last_activity = client.driver.now
        if self._in_vpc(dst):
            if client.access is not None and not client.access.allowed(packet):
                self.drops["access-denied"] += 1
                return
            client.bytes_in += len(packet)
            client.packets_in += 1
            self.tun.write(packet)
            return
        if self.options.client_to_client:
            peer = self._by_address.get(dst)
            if peer is not None and peer is not client and peer.driver is not None:
                client.bytes_in += len(packet)
                client.packets_in += 1
                peer.bytes_out += len(packet)
                peer.packets_out += 1
                peer.driver.send_packet(packet)
                return
        self.drops["outside-vpc"] += 1

    # -- events ------------------------------------------------------------------------
    def _on_event(self, client: ClientSession, event: Event) -> None:
        kind = type(event)
        if kind is TunnelPacket:
            self._from_client(client, event.ip_packet)  # type: ignore[attr-defined]
        elif kind is PeerVerified:
            self._verify(client, event)  # type: ignore[arg-type]
        elif kind is SessionEstablished:
            client.established = True
            if client.slot is not None:
                client.slot.authenticated()
            log.info("session %s established: %s", client.session_id, event)
        elif kind is PeerRefused:
            reason: str = event.reason  # type: ignore[attr-defined]
            self._count_handshake(client, refusal_result(reason))
            log.warning("session %s from %s refused by the core: %s", client.session_id,
                        client.real_address, reason, extra=_refused(client, reason))
        elif kind is SessionClosed:
            self._finish(client, event.reason)  # type: ignore[attr-defined]
        else:
            log.debug("session %s: %s", client.session_id, event)

    def _verify(self, client: ClientSession, event: PeerVerified) -> None:
        """Admit at once what the policy's snapshot admits, and ask the policy (the store) in
        a task: its answer decides a session the snapshot did not admit (the handshake waits
        for it) and ends one it admitted when the store refuses after all."""
        client.serial = format(event.certificate.serial_number, "x")
        client.tls_group = event.tls_group
        client.software = client_software(event.peer_info)
        known = self.policy.admitted_now(client.serial)
        if known is not None:
            self._decide_or_undo(client, event, known)
        task = asyncio.get_running_loop().create_task(
            self._admit(client, event, confirming=known is not None),
            name=f"admit-{client.session_id}")
        self._admissions[client.session_id] = task
        task.add_done_callback(lambda _t: self._admitted(client, task))

    def _admitted(self, client: ClientSession, task: asyncio.Task[None]) -> None:
        if self._admissions.get(client.session_id) is task:
            del self._admissions[client.session_id]

    def _waiting(self, client: ClientSession) -> bool:
        """The session that asked is still registered and still waits for its answer."""
        return (self._sessions.get(client.session_id) is client and client.driver is not None
                and not client.driver.closed)

    async def _admit(self, client: ClientSession, event: PeerVerified, *,
                     confirming: bool) -> None:
        serial = client.serial
        try:
            if confirming:
                await asyncio.sleep(CONFIRM_AFTER)
            source = client.real_address.rpartition(":")[0].strip("[]")
            auth = await self.policy.authorize(serial, Credentials(event.username,
                                                                   event.password, source))
        except StoreError as exc:  # the store is away (logged once by the store facade)
            if confirming:
                return  # admitted by a fresh snapshot: the sweep reads again
            if self._waiting(client):
                self.told_to_retry += 1
                self._count_handshake(client, "auth_failed")
                log.debug("session %s from %s told to retry in %d s: %s", client.session_id,
                          client.real_address, RETRY_AFTER, exc)
                client.driver.reject(  # type: ignore[union-attr]
                    "the server cannot check certificates right now", retry_after=RETRY_AFTER)
            return
        except Exception:  # a bug: fail closed, keep serving the others
            log.exception("policy check for %s from %s failed", client.session_id,
                          client.real_address)
            if confirming:
                self._refused_after_all(client, "server error")
            elif self._waiting(client):
                self._count_handshake(client, "auth_failed")
                client.driver.reject("server error")  # type: ignore[union-attr]
            return
        if confirming:
            if auth.refusal is not None:
                self._refused_after_all(client, auth.refusal)
            return
        if not self._waiting(client):  # closed, timed out or replaced while the store answered
            log.info("session %s from %s ended before its admission", client.session_id,
                     client.real_address)
            return
        self._decide_or_undo(client, event, auth)

    def _decide_or_undo(self, client: ClientSession, event: PeerVerified,
                        auth: Authorization) -> None:
        try:
            self._decide(client, event, auth)
        except Exception:  # a bug after the answer: undo what was taken, fail closed
            log.exception("admission of %s from %s failed", client.session_id,
                          client.real_address)
            self._unadmit(client)

    def _refused_after_all(self, client: ClientSession, reason: str) -> None:
        """The store refuses a session the snapshot admitted (changed within the snapshot's
        freshness): end it, as the sweep would."""
        if self._by_serial.get(client.serial) is client and self._sessions.get(
                client.session_id) is client:
            log.warning("session %s (serial %s, user %r) from %s ended: the store refuses it "
                        "after the snapshot admitted it: %s", client.session_id, client.serial,
                        client.user, client.real_address, reason,
                        extra=_refused(client, reason))
            self._end(client, reason)

    def _unadmit(self, client: ClientSession) -> None:
        self._release(client)
        client.vpn_address = client.vpn_address6 = None
        if client.driver is not None and not client.driver.closed:
            self._count_handshake(client, "auth_failed")
            client.driver.reject("server error")

    def _release(self, client: ClientSession) -> None:
        """Give back the session's addresses and its certificate's place in the registry."""
        for key in (client.vpn_address, client.vpn_address6):
            if key is not None and self._by_address.get(key) is client:
                del self._by_address[key]
        if client.vpn_address is not None:
            self.pool.release(ipaddress.ip_address(client.vpn_address))
        if self._by_serial.get(client.serial) is client:
            del self._by_serial[client.serial]

    def _decide(self, client: ClientSession, event: PeerVerified, auth: Authorization) -> None:
        assert client.driver is not None  # noqa: S101 (set in new_session)
        serial = client.serial
        client.user, client.device = auth.user, auth.device
        if auth.refusal is not None:
            self._count_handshake(client, refusal_result(auth.refusal))
            log.warning("refused %s (serial %s, user %r) from %s: %s", client.session_id,
                        serial, auth.user, client.real_address, auth.refusal,
                        extra=_refused(client, auth.refusal))
            client.driver.reject(auth.refusal)
            return
        other = self._by_serial.get(serial)
        if other is not None and other is not client:
            self._end(other, REPLACED)
        try:
            address = self._allocate(serial)
        except PoolExhausted:
            self._count_handshake(client, "auth_failed")
            log.error("refused %s: address pool %s exhausted", client.session_id, self.pool.network,
                      extra=_refused(client, "address pool exhausted"))
            client.driver.reject("address pool exhausted")
            return
        client.vpn_address = address.packed
        client.vpn_text = str(address)
        client.access = self.access.compiled_for(client.user)
        self._by_address[address.packed] = client
        self._by_serial[serial] = client
        push = replace(self._push_config(client, address), auth_token=auth.auth_token)
        software = client.software
        log.info("accepted %s: user %r serial %s from %s as %s (client %r %r on %r)",
                 client.session_id, auth.user, serial, client.real_address, address,
                 software.gui, software.version, software.platform,
                 extra=fields("session.connected", **_who(client),
                              client_version=software.version, platform=software.platform))
        client.driver.accept(push)
        self._count_handshake(client, "ok")
        self.records.add(SessionOpened(client.session_id, client.user, serial,
                                       client.real_address, client.vpn_text, client.protocol,
                                       client.connected_at, client.tls_group,
                                       software.version, software.platform, software.gui))

    def _count_handshake(self, client: ClientSession, result: str) -> None:
        """Count a handshake's outcome once (a refused session lingers, then closes)."""
        if client.handshake is None:
            client.handshake = result
            self.handshakes[result] += 1

    def _push_config(self, client: ClientSession, address: IPAddress) -> PushConfig:
        """What this client is told; an IPv6 pool mirrors the IPv4 host number."""
        options = self.options
        ifconfig6 = gateway6 = None
        if options.pool6 is not None:
            offset = int(address) - int(self.pool.network.network_address)
            address6 = options.pool6.network_address + offset
            client.vpn_address6 = address6.packed
            self._by_address[address6.packed] = client
            ifconfig6 = ipaddress.IPv6Interface(f"{address6}/{options.pool6.prefixlen}")
            gateway6 = options.pool6.network_address + 1
        reachable = (options.vpc_networks if client.access is None
                     else client.access.routes(options.vpc_networks))
        return PushConfig(
            ifconfig=ipaddress.IPv4Interface(f"{address}/{self.pool.network.prefixlen}"),
            route_gateway=ipaddress.IPv4Address(self.pool.gateway),
            peer_id=client.peer_id,
            routes=tuple(n for n in reachable if isinstance(n, ipaddress.IPv4Network)),
            ifconfig_ipv6=ifconfig6,
            gateway_ipv6=gateway6,
            routes_ipv6=tuple(n for n in reachable if isinstance(n, ipaddress.IPv6Network)),
            dns=options.dns,
            domains=options.domains,
            ping=options.keepalive_interval,
            ping_restart=options.keepalive_timeout,
            tun_mtu=options.tun_mtu,
        )

    def _allocate(self, serial: str) -> IPAddress:
        leased = self.pool.lease_of(serial)
        address = self.pool.allocate(serial)
        if address != leased:
            self.records.add(LeaseStored(serial, str(address)))
        return address

    def _finish(self, client: ClientSession, reason: str) -> None:
        """Forget a closed session: registry, address, accounting, listener state."""
        if self._sessions.pop(client.session_id, None) is None:
            return
        self._live_peer_ids.discard(client.peer_id)
        if client.slot is not None:
            client.slot.release()
        reason = client.end_reason or reason
        if client.driver is not None:
            client.driver.stop()
        admission = self._admissions.pop(client.session_id, None)
        if admission is not None and admission is not asyncio.current_task():
            admission.cancel()  # nobody waits for its answer any more
        if client.vpn_address is not None:
            self._release(client)
            self._book_last(client)
            self.records.add(SessionEnded(client.session_id, datetime.now(UTC), reason[:200],
                                          client.bytes_in, client.bytes_out))
            duration = (datetime.now(UTC) - client.connected_at).total_seconds()
            log.info("session %s (user %r, %s) closed: %s; %d bytes in, %d out",
                     client.session_id, client.user, client.vpn_text, reason,
                     client.bytes_in, client.bytes_out,
                     extra=fields("session.disconnected", **_who(client), reason=reason,
                                  bytes_in=client.bytes_in, bytes_out=client.bytes_out,
                                  duration_seconds=round(duration, 3)))
        else:
            refused = client.handshake is not None  # said so when it was refused
            if "hand-window" in reason:
                self._count_handshake(client, "timeout")
            elif client.end_reason is None:  # the core ended it: the handshake failed
                self._count_handshake(client, "tls_error")
            failed = None if refused or client.handshake is None else fields(
                "handshake.failed", session_id=client.session_id,
                real_address=client.real_address, reason=reason, result=client.handshake)
            log.info("session %s from %s ended before admission: %s", client.session_id,
                     client.real_address, reason, extra=failed)
        self._closed_in += client.bytes_in
        self._closed_out += client.bytes_out
        self._closed_packets_in += client.packets_in
        self._closed_packets_out += client.packets_out
        if client.core_drops:
            self._closed_core_drops.update(client.core_drops)
        client.on_closed()

    def _end(self, client: ClientSession, reason: str) -> None:
        """Close politely (explicit exit queued and sent), then forget the session."""
        client.end_reason = client.end_reason or reason
        if client.driver is not None:
            client.driver.close()
        self._finish(client, reason)

    def transport_lost(self, client: ClientSession, reason: str = "connection lost") -> None:
        """A listener lost the client's transport (TCP closed): forget it silently."""
        client.end_reason = client.end_reason or reason  # not the handshake's failure
        self._finish(client, reason)

    # -- periodic work -----------------------------------------------------------------
    def wake_sweep(self) -> None:
        """Sweep now rather than at the next interval (the fleet signalled a revocation, a
        disabled user or a kick)."""
        self._sweep_now.set()

    async def run_sweeps(self) -> None:
        """Write the accounting queue; disconnect revoked certificates, disabled users and
        sessions the fleet asked to end, every interval or at once when woken (unless the
        sweep interval is None: a worker's supervisor sweeps for it); queue the byte
        counters of sessions that moved traffic."""
        interval = self.options.sweep_interval
        wait = interval if interval is not None else self.options.accounting_interval
        async with asyncio.TaskGroup() as group:
            group.create_task(self.records.run(), name="accounting-writer")
            last_accounting = time.monotonic()
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._sweep_now.wait()
                self._sweep_now.clear()
                try:
                    if interval is not None:
                        await self.sweep()
                except StoreError:  # the store is away (its facade says so once): next round
                    pass
                except Exception:  # a bug: say so, keep sweeping
                    log.exception("revocation sweep failed")
                if time.monotonic() - last_accounting >= self.options.accounting_interval:
                    last_accounting = time.monotonic()
                    self._queue_counters()

    def set_access(self, policy: AccessPolicy) -> None:
        """Take a newer access policy (hit counters carried over) and give every live
        session its user's compiled rules at once; routes change at the next connect."""
        self.access = self.access.succeeded_by(policy)
        for client in self._by_serial.values():
            client.access = self.access.compiled_for(client.user)

    async def run_access_refresh(self, interval: float = ACCESS_REFRESH) -> None:
        """Poll the access policy's revision (one indexed read) and reload it when it
        moved, and re-read the policy's admission snapshot, in every process that carries
        packets (each worker of `serve --workers` polls for itself): a change reaches live
        sessions, and the snapshot, within ``interval`` plus a store read. A store that does
        not answer skips a round."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.policy.refresh_admissions()
            except StoreError:
                pass  # the snapshot ages out: handshakes wait for the store again
            except Exception:  # a bug: say so; the snapshot ages out
                log.exception("refreshing the admission snapshot failed")
            try:
                newer = await self.policy.access_policy(self.access.revision)
            except StoreError:
                continue
            except Exception:  # a bug: say so, keep the rules in force, try again
                log.exception("reloading the access policy failed")
                continue
            if newer is not None:
                self.set_access(newer)
                log.info("access policy revision %d in force", newer.revision)

    def access_hits(self) -> list[tuple[str, bool, int]]:
        """(rule id or "default", allowed, packets) for every rule seen so far."""
        return [(str(hit.rule.id) if hit.rule is not None else "default", hit.allow,
                 hit.packets) for hit in self.access.hits.values()]

    async def sweep(self) -> int:
        """One policy pass over the live sessions (the queries run off the loop, bounded in
        time); returns how many were disconnected."""
        admitted = dict(self._by_serial)
        if not admitted:
            return 0
        refused = await self.policy.unauthorized(set(admitted))
        ended = 0
        for serial, reason in refused.items():
            client = admitted.get(serial)
            if client is not None and self._by_serial.get(serial) is client:  # not replaced
                self._end(client, reason)
                ended += 1
        live = {c.session_id: c for c in admitted.values() if c.session_id in self._sessions}
        for session_id, reason in (await self.policy.ended_elsewhere(set(live))).items():
            client = live.get(session_id)
            if client is not None and self._sessions.get(session_id) is client:
                self._end(client, reason)
                ended += 1
        return ended

    def _queue_counters(self) -> None:
        """Queue the byte counters of sessions that moved traffic, and for the traffic
        history what each user, this node and each IPsec tunnel moved since last time."""
        now = datetime.now(UTC)
        moved: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
        for client in self._by_serial.values():
            totals = (client.bytes_in, client.bytes_out)
            if totals != client.accounted:
                both = moved[client.user]
                both[0] += totals[0] - client.accounted[0]
                both[1] += totals[1] - client.accounted[1]
                client.accounted = totals
                self.records.add(SessionCounted(client.session_id, *totals))
        node = [sum(both[0] for both in moved.values()), sum(both[1] for both in moved.values())]
        for user, (bytes_in, bytes_out) in moved.items():
            self.records.add(TrafficCounted("user", user, now, bytes_in, bytes_out))
        if any(node):
            self.records.add(TrafficCounted("node", self.options.node_name, now, *node))
        self._book_tunnels(now)

    def book_tunnels(self) -> None:
        """Book what the IPsec tunnels moved since the last accounting round, now (at a
        stop: the rounds are an accounting interval apart)."""
        self._book_tunnels(datetime.now(UTC))

    def _book_tunnels(self, now: datetime) -> None:
        """Each IPsec tunnel's bytes since the last booking (a restarted tunnel's counters
        start again from zero)."""
        for status in self.tunnel_status():
            last = self._booked_tunnels.get(status.name, (0, 0))
            totals = (status.bytes_in, status.bytes_out)
            if totals == last:
                continue
            since = last if totals[0] >= last[0] and totals[1] >= last[1] else (0, 0)
            self._booked_tunnels[status.name] = totals
            self.records.add(TrafficCounted("tunnel", status.name, now,
                                            totals[0] - since[0], totals[1] - since[1]))

    def _book_last(self, client: ClientSession) -> None:
        """A closing session's traffic since its last booking, for the history."""
        delta = (client.bytes_in - client.accounted[0], client.bytes_out - client.accounted[1])
        if any(delta):
            client.accounted = (client.bytes_in, client.bytes_out)
            now = datetime.now(UTC)
            self.records.add(TrafficCounted("user", client.user, now, *delta))
            self.records.add(TrafficCounted("node", self.options.node_name, now, *delta))

    async def shutdown(self, reason: str = "gateway shutting down") -> None:
        """Tell every client it is over (explicit exit), stop reading the TUN, and write
        the accounting still queued (waiting at most ``SHUTDOWN_FLUSH_TIMEOUT`` for a store
        that fails). Sessions book their last bytes as they end; tunnels are booked here, or
        up to an accounting interval of their history would be lost at every stop."""
        for client in list(self._sessions.values()):
            self._end(client, reason)
        self.book_tunnels()
        self.tun.close()
        await self.records.drain(SHUTDOWN_FLUSH_TIMEOUT)

    # -- GatewayControl ----------------------------------------------------------------
    def info(self, client: ClientSession) -> SessionInfo:
        loop_now = self._loop.time() if self._loop else client.last_activity
        idle = max(0.0, loop_now - client.last_activity)
        return SessionInfo(
            session_id=client.session_id,
            user=client.user,
            certificate_serial=client.serial,
            device=client.device,
            real_address=client.real_address,
            vpn_address=client.vpn_text,
            protocol=client.protocol,
            connected_at=client.connected_at,
            last_activity=datetime.fromtimestamp(time.time() - idle, UTC),
            bytes_in=client.bytes_in,
            bytes_out=client.bytes_out,
            tls_group=client.tls_group,
            client_version=client.software.version,
            client_platform=client.software.platform,
            client_gui=client.software.gui,
        )

    def list_sessions(self) -> list[SessionInfo]:
        return [self.info(c) for c in self._sessions.values() if c.vpn_address is not None]

    def kick(self, session_id: str, reason: str = "kicked by admin") -> bool:
        client = self._sessions.get(session_id)
        if client is None:
            return False
        self._end(client, reason)
        return True

    def kick_user(self, user: str, reason: str = "kicked by admin") -> int:
        self.policy.forget(user=user)  # a disabled user: the next handshake reads the store
        clients = [c for c in self._sessions.values() if c.user == user and c.vpn_address]
        for client in clients:
            self._end(client, reason)
        return len(clients)

    def kick_certificate(self, serial: str, reason: str = "certificate revoked") -> int:
        self.policy.forget(serials=[serial])  # revoked: the next handshake reads the store
        clients = [c for c in self._sessions.values() if c.serial == serial.lower()]
        for client in clients:
            self._end(client, reason)
        return len(clients)

    def traffic(self) -> TrafficSample:
        live = list(self._sessions.values())
        return TrafficSample(
            at=datetime.now(UTC),
            bytes_in=self._closed_in + sum(c.bytes_in for c in live),
            bytes_out=self._closed_out + sum(c.bytes_out for c in live),
        )

    def listener_status(self) -> ListenerStatus:
        return self.admission.status()

    def counters(self) -> GatewayCounters:
        """Everything a metrics scrape reads, in one pass over the registry (on the loop)."""
        udp = tcp = 0
        bytes_in, bytes_out = self._closed_in, self._closed_out
        packets_in, packets_out = self._closed_packets_in, self._closed_packets_out
        drops = collections.Counter(self.drops)
        drops.update(self._closed_core_drops)
        for counter in self.drop_counters:
            drops.update(counter)
        for client in self._sessions.values():
            if client.vpn_address is not None:
                if client.protocol == "udp":
                    udp += 1
                else:
                    tcp += 1
            bytes_in += client.bytes_in
            bytes_out += client.bytes_out
            packets_in += client.packets_in
            packets_out += client.packets_out
            if client.core_drops:
                drops.update(client.core_drops)
        return GatewayCounters(sessions={"udp": udp, "tcp": tcp}, bytes_in=bytes_in,
                               bytes_out=bytes_out, packets_in=packets_in,
                               packets_out=packets_out,
                               handshakes={r: self.handshakes[r] for r in HANDSHAKE_RESULTS},
                               drops=dict(drops), store_write_queue=self.records.pending,
                               access_hits={f"{rule}/{'allow' if allowed else 'deny'}": count
                                            for rule, allowed, count in self.access_hits()})

    def tunnel_status(self) -> list[TunnelStatus]:
        return [status for provider in self.tunnel_status_providers for status in provider()]

    def tunnel_action(self, name: str, action: str) -> str:
        if self.tunnel_action_handler is None:
            raise ValueError("no IPsec service runs in this gateway")
        return self.tunnel_action_handler(name, action)


def _who(client: ClientSession) -> dict[str, object]:
    """A session's fields in the log events: who, from where, with which address."""
    return {"session_id": client.session_id, "user": client.user, "device": client.device,
            "serial": client.serial, "real_address": client.real_address,
            "vpn_address": client.vpn_text, "protocol": client.protocol}


def _refused(client: ClientSession, reason: str) -> dict[str, object]:
    return fields("handshake.refused", session_id=client.session_id, user=client.user,
                  serial=client.serial, real_address=client.real_address,
                  protocol=client.protocol, reason=reason, result=client.handshake)
