"""The IPsec service inside `sslvpn serve`: every site-to-site tunnel, its ESP data path, status.

`IpsecService.run()` reads the tunnels from the store, binds UDP 500/4500 on each VPN
gateway's public address, opens one TUN device routed to every policy's peer range, and then
follows the store (tunnels added, deleted, changed, or switched up/down by `sslvpn ipsec
up|down`) until cancelled, when it deletes its IKE SAs politely and removes what it set up.
It reads the store through ``AsyncStore`` (a store thread, bounded in time): while the store
is away the tunnels it runs keep running as they are (the facade logs the outage once).

The data path: TUN -> SPD (destination picks the tunnel, the source must be a local range)
-> per-gateway bandwidth cap -> ESP seal -> UDP 4500. UDP 4500 -> SAD (SPI picks SA and
tunnel) -> ESP open (ICV, replay, padding) -> SPD inbound check -> bandwidth cap -> TUN.
Packets matching no policy are dropped and counted.

On a node of a fleet (``node``), the tunnels of VPN gateways that name this node run only
while this node holds their lease (`sslvpn.store.leases`): every round it keeps the
leases it has and tries to take the others, so a standby takes a dead owner's tunnels within
one round of the lock's release. A node that takes a tunnel records itself as its owner,
initiates to the customer gateway and runs the operator's ``on_activate`` hook; a node that
loses its lease connection stops the tunnels at once, since another node may own them next.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sslvpn.ipsec.bandwidth import TokenBucket
from sslvpn.ipsec.esp.packet import DropReason
from sslvpn.ipsec.esp.sad import Sad
from sslvpn.ipsec.ike.admission import InitGate
from sslvpn.ipsec.ike.config import IkeConfig
from sslvpn.ipsec.policy import PolicyRule, Spd
from sslvpn.ipsec.tunnel_settings import TunnelSettings
from sslvpn.net.ippacket import addresses
from sslvpn.runtime.control import TunnelStatus
from sslvpn.runtime.drop_ledger import TOP_SOURCES, DropLedger
from sslvpn.runtime.ike_udp import (
    IKE_PORT,
    KEEPALIVE_INTERVAL,
    NAT_T_PORT,
    Address,
    IkeSockets,
)
from sslvpn.runtime.ipsec_hook import hook_environment, run_hook
from sslvpn.runtime.ipsec_tunnel import Tunnel
from sslvpn.runtime.netconf import NetconfError, run
from sslvpn.runtime.tun import LinuxTun, Tun
from sslvpn.store import StoreError, StoreUnavailable
from sslvpn.store.async_store import AsyncStore
from sslvpn.store.ipsec_queries import (
    TunnelConfig,
    set_tunnel_owner,
    stale_nodes,
    tunnel_configs,
)

if TYPE_CHECKING:  # what a store thread hands _read_configs (never opened here), and the
    # leases, whose module loads psycopg, which only a fleet node's store needs
    from sqlmodel import Session

    from sslvpn.store.leases import TunnelLeases

log = logging.getLogger(__name__)

RELOAD_INTERVAL = 2.0  # seconds between looks at the store (admin up/down, edits)
DROP_LOG_INTERVAL = 60.0  # seconds between summaries of dropped packets in the log
TUN_MTU = 1400  # inner MTU that fits ESP-in-UDP on a 1500-byte path (as libipsec)
TUN_NAME = "sslipsec%d"
IPV4_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


@dataclass
class _Gateway:
    """One VPN gateway address: its sockets, tunnels by peer IP, and bandwidth buckets."""

    address: str
    sockets: IkeSockets
    by_peer: dict[str, Tunnel] = field(default_factory=dict)
    bucket_out: TokenBucket | None = None
    bucket_in: TokenBucket | None = None
    bps: int | None = None


# ESP drops that happen once the SPI found an SA: filed under that SA's tunnel
_OWNED = frozenset({DropReason.REPLAYED, DropReason.TOO_OLD, DropReason.BAD_ICV,
                    DropReason.BAD_LENGTH, DropReason.BAD_PADDING, DropReason.DUMMY,
                    DropReason.UNSUPPORTED_NEXT_HEADER})


def _source(packet: bytes) -> str:
    """A dropped inner packet's source address, as the drop ledger files it."""
    pair = addresses(packet)
    return str(ipaddress.ip_address(pair[0])) if pair else "not-ip"


def _renegotiate(old: TunnelConfig, new: TunnelConfig) -> bool:
    """Whether an edit needs a new IKE SA (admin up/down, the bandwidth cap, timers and the
    start action do not)."""
    def keys(c: TunnelConfig) -> TunnelConfig:
        return replace(c, admin_up=True, bandwidth_bps=None, timers={}, start_action="")

    return keys(old) != keys(new)


class IpsecService:
    """Runs every tunnel of the store until cancelled; `tunnel_status` for the control API."""

    def __init__(
        self,
        store: AsyncStore,
        *,
        tun_factory: Callable[[], Tun] | None = None,
        ike_port: int = IKE_PORT,
        nat_t_port: int = NAT_T_PORT,
        timers: dict[str, float] | None = None,
        manage_routes: bool = True,
        reload_interval: float = RELOAD_INTERVAL,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        rand: Callable[[int], bytes] = os.urandom,
        node: str | None = None,
        on_activate: str | None = None,
    ) -> None:
        self._store = store
        self._node = node
        self._on_activate = on_activate  # serve's hook, for gateways without their own
        self._leases: TunnelLeases | None = None
        self._lease_store: AsyncStore | None = None
        if node is not None:
            try:
                self._leases = store.leases(node)
                # a thread of its own: lease rounds never queue behind the gateway's calls
                self._lease_store = store.companion(threads=1, owner="the IPsec leases")
            except ValueError as exc:  # SQLite: fleet tunnels cannot run here
                log.error("%s", exc)
        self._background: set[asyncio.Task[object]] = set()
        self._standing_by: set[int] = set()  # fleet tunnels another node holds
        self._tun_factory = tun_factory or (lambda: LinuxTun(TUN_NAME, mtu=TUN_MTU))
        self._ike_port = ike_port
        self._nat_t_port = nat_t_port
        self._timers = dict(timers or {})
        self._manage_routes = manage_routes
        self._reload_interval = reload_interval
        self._keepalive_interval = keepalive_interval
        self._rand = rand
        self._tun: Tun | None = None
        self._gateways: dict[str, _Gateway] = {}
        self._tunnels: dict[str, Tunnel] = {}
        self._configs: dict[str, TunnelConfig] = {}
        self._routes: set[str] = set()
        self._forwarding_was: str | None = None  # restored on shutdown when we changed it
        self.spd: Spd[Tunnel] = Spd()
        self.sad: Sad[Tunnel] = Sad()
        # every drop of the gateway, by reason and source: the data path's (ESP by
        # "ip:port", TUN by inner source address) and, apart, every tunnel's IKE drops
        self.drops = DropLedger(with_port=True)
        self.ike_drops = DropLedger()
        self.gate = InitGate(rand=rand)  # COOKIE, throttle: shared by every tunnel
        self._drops_logged = 0.0
        self.ready = asyncio.Event()
        self._clock: Callable[[], float] = time.monotonic  # the loop's clock once running

    # -- lifecycle ---------------------------------------------------------------------
    async def run(self) -> None:
        """Run until cancelled; on the way out, DELETE every IKE SA and undo the set-up."""
        self._clock = asyncio.get_running_loop().time  # bound once: read per packet
        try:
            while True:
                try:
                    await self._reload()
                except StoreUnavailable:  # logged once by the facade; tunnels run on as they are
                    pass
                except (StoreError, NetconfError, OSError) as exc:  # retried next round
                    log.error("IPsec service: %s", exc)
                self._send_keepalives()
                self._log_drops()
                self.ready.set()
                await asyncio.sleep(self._reload_interval)
        finally:
            self._shutdown()
            await self._release_leases()

    async def _release_leases(self) -> None:
        """Free our leases for the standby nodes at once (never waiting for a call stuck in
        a hung store: its end closes them)."""
        for task in self._background:
            task.cancel()
        if self._leases is not None:
            self._leases.close_soon()
        if self._lease_store is not None:
            await self._lease_store.close()

    def _open_tun(self) -> None:
        """The TUN device, created with the first tunnel (a gateway without any needs none)."""
        tun = self._tun_factory()
        if self._manage_routes:
            try:
                run("ip", "link", "set", "dev", tun.name, "up")
            except NetconfError:
                tun.close()
                raise
            self._enable_forwarding()
        tun.start(self._from_tun, self._flush_sockets)
        self._tun = tun

    def _enable_forwarding(self) -> None:
        """Packets cross between the LAN side and the TUN only with IPv4 forwarding on."""
        try:
            before = IPV4_FORWARD.read_text().strip()
            if before != "1":
                IPV4_FORWARD.write_text("1\n")
                self._forwarding_was = before
        except OSError as exc:  # e.g. a read-only /proc in a container: the host must do it
            log.warning("cannot switch IPv4 forwarding on: %s", exc)

    def _shutdown(self) -> None:
        now = self._now()
        for tunnel in list(self._tunnels.values()):
            with contextlib.suppress(Exception):
                tunnel.stop(now, "gateway stopping")
        self._tunnels.clear()
        for route in list(self._routes):
            self._del_route(route)
        for gateway in self._gateways.values():
            gateway.sockets.close()
        self._gateways.clear()
        if self._tun is not None:
            self._tun.close()
            self._tun = None
        if self._forwarding_was is not None:
            with contextlib.suppress(OSError):
                IPV4_FORWARD.write_text(self._forwarding_was + "\n")
            self._forwarding_was = None

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def _log_drops(self) -> None:
        """One log line a minute when packets were dropped (never one line per packet)."""
        now = self._now()
        since = self._drops_logged
        if now - since < DROP_LOG_INTERVAL:
            return
        for what, ledger in (("IPsec", self.drops), ("IKE", self.ike_drops)):
            line = ledger.summary()
            if line is not None:
                log.warning("%s drops in the last %.0f s: %s", what, now - since, line)
        self._drops_logged = now

    def _send_keepalives(self) -> None:
        now = self._now()
        for tunnel in self._tunnels.values():
            if tunnel.keepalive_due(now, self._keepalive_interval):
                gateway = self._gateways.get(tunnel.config.local_address)
                if gateway is not None:
                    gateway.sockets.send_keepalive(tunnel.peer_nat_t)

    # -- following the store -----------------------------------------------------------
    async def _reload(self) -> None:
        try:
            read, stale = await self._store.read(self._read_configs)
        except StoreUnavailable:  # the leases still decide: a lost one stops its tunnel
            configs = await self._leased(self._configs, set())
            for name in [n for n in self._tunnels if n not in configs]:
                self._remove_tunnel(name)
            raise
        configs = await self._leased({c.name: c for c in read}, stale)
        if configs and self._tun is None:
            self._open_tun()
        for name in list(self._tunnels):
            old = self._configs.get(name)
            if name not in configs or old is None or _renegotiate(old, configs[name]):
                self._remove_tunnel(name)
        for name, config in configs.items():
            if name not in self._tunnels:
                await self._add_tunnel(config)
                if config.nodes and name in self._tunnels:
                    self._activated(config)
            tunnel = self._tunnels.get(name)
            if tunnel is None:
                continue
            if tunnel.config != config:
                tunnel.reconfigure(config, self._ike_config(config))
            if config.admin_up and tunnel.stopped:
                tunnel.start(self._now())
            elif not config.admin_up and not tunnel.stopped:
                tunnel.stop(self._now())
        self._configs = configs
        self._set_bandwidth(configs.values())
        self._sync_routes()

    def _read_configs(self, s: Session) -> tuple[list[TunnelConfig], set[str]]:
        """The tunnels as this node runs them and, on a node, the other nodes that look
        dead (whose leases it may end)."""
        stale = stale_nodes(s) - {self._node} if self._node is not None else set()
        return tunnel_configs(s, self._node), stale

    async def _leased(self, configs: dict[str, TunnelConfig],
                      stale: set[str]) -> dict[str, TunnelConfig]:
        """The tunnels this node runs: the single gateway's, and those of a fleet gateway
        that names this node while it holds their lease (which it always initiates: the
        peer cannot know which node to expect)."""
        configs = {name: c for name, c in configs.items()
                   if not c.nodes or self._node in c.nodes}
        fleet = {c.tunnel_id for c in configs.values() if c.nodes}
        held: frozenset[int] = frozenset()
        if fleet and self._leases is not None and self._lease_store is not None:
            leases = self._leases
            try:
                held = await self._lease_store.call(lambda _engine: leases.sync(fleet, stale))
            except StoreUnavailable:  # logged once by that facade; every lease is lost
                pass
        self._note_standby(configs, held)
        return {name: replace(c, start_action="initiate") if c.nodes else c
                for name, c in configs.items() if not c.nodes or c.tunnel_id in held}

    def _note_standby(self, configs: dict[str, TunnelConfig], held: frozenset[int]) -> None:
        """Log once per tunnel that this node waits for another node's lease to end."""
        waiting = {c.tunnel_id: name for name, c in configs.items()
                   if c.nodes and c.tunnel_id not in held}
        for tunnel_id in waiting.keys() - self._standing_by:
            log.info("node %s stands by for tunnel %s (another node holds it)", self._node,
                     waiting[tunnel_id])
        self._standing_by = set(waiting)

    def _activated(self, config: TunnelConfig) -> None:
        """This node took ``config``'s tunnel: say so in the store, run the hook (both off
        the loop, in the background)."""
        node = self._node or ""
        log.info("node %s took the lease of tunnel %s", node, config.name)
        self._spawn(self._record_owner(config.tunnel_id, node))
        command = config.on_activate or self._on_activate
        if command:
            self._spawn(run_hook(command, hook_environment(config, node)))

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _record_owner(self, tunnel_id: int, node: str) -> None:
        try:
            await self._store.write(lambda s: set_tunnel_owner(s, tunnel_id=tunnel_id,
                                                               node=node))
        except StoreError as exc:
            log.error("cannot record node %s as the tunnel's owner: %s", node, exc)

    async def _add_tunnel(self, config: TunnelConfig) -> None:
        try:
            gateway = await self._gateway(config)
            ike_config = self._ike_config(config)
        except (OSError, ValueError) as exc:
            log.error("tunnel %s cannot start: %s", config.name, exc)
            return
        tunnel = Tunnel(config, ike_config, gateway.sockets, self.sad, gate=self.gate,
                        local_ike=(config.local_address, gateway.sockets.ports[0]),
                        ike_port=self._ike_port, nat_t_port=self._nat_t_port,
                        drops=self.ike_drops, esp_drops=self.drops, rand=self._rand)
        tunnel.stopped = True
        self._tunnels[config.name] = tunnel
        gateway.by_peer[config.remote_address] = tunnel
        rules = [PolicyRule(ipaddress.ip_network(local), ipaddress.ip_network(peer))
                 for local, peer in config.policies]
        self.spd.set_rules(tunnel, rules)

    def _remove_tunnel(self, name: str) -> None:
        tunnel = self._tunnels.pop(name)
        tunnel.stop(self._now(), "tunnel removed or changed")
        self.spd.remove(tunnel)
        for gateway in self._gateways.values():
            if gateway.by_peer.get(tunnel.config.remote_address) is tunnel:
                del gateway.by_peer[tunnel.config.remote_address]

    async def _gateway(self, config: TunnelConfig) -> _Gateway:
        gateway = self._gateways.get(config.local_address)
        if gateway is None:
            sockets = IkeSockets(
                lambda m, p, n: self._from_ike(config.local_address, m, p, n),
                lambda d, p: self._from_esp(config.local_address, d, p),
                self._flush_tun,
            )
            await sockets.open(config.local_address, self._ike_port, self._nat_t_port)
            gateway = _Gateway(config.local_address, sockets)
            self._gateways[config.local_address] = gateway
        return gateway

    def _set_bandwidth(self, configs: Iterable[TunnelConfig]) -> None:
        """Follow each gateway's cap (one bucket per direction), without touching tunnels."""
        caps = {c.local_address: c.bandwidth_bps for c in configs}
        now = self._now()
        for address, gateway in self._gateways.items():
            bps = caps.get(address)
            if not bps:
                gateway.bucket_out = gateway.bucket_in = None
            elif gateway.bps != bps:
                gateway.bucket_out = TokenBucket(bps, now=now)
                gateway.bucket_in = TokenBucket(bps, now=now)
            gateway.bps = bps

    def _ike_config(self, config: TunnelConfig) -> IkeConfig:
        timers: dict[str, Any] = TunnelSettings(**config.timers).ike_timers()
        timers.update(self._timers)
        return IkeConfig.build(
            local_id=config.local_id or config.local_address,
            remote_id=config.remote_address,
            psk=config.psk.encode(),
            ike_proposals=config.ike_proposals,
            esp_proposals=config.esp_proposals,
            local_ts=[local for local, _ in config.policies],
            remote_ts=[peer for _, peer in config.policies],
            **timers,
        )

    # -- routes toward the TUN ---------------------------------------------------------
    def _sync_routes(self) -> None:
        if not self._manage_routes or self._tun is None:
            return
        wanted = {peer for t in self._tunnels.values() if not t.stopped
                  for _, peer in t.config.policies}
        for route in self._routes - wanted:
            self._del_route(route)
        for route in wanted - self._routes:
            try:
                run("ip", "route", "replace", route, "dev", self._tun.name)
                self._routes.add(route)
            except NetconfError as exc:
                log.error("cannot route %s into %s: %s", route, self._tun.name, exc)

    def _del_route(self, route: str) -> None:
        self._routes.discard(route)
        if self._tun is not None:
            with contextlib.suppress(NetconfError):
                run("ip", "route", "del", route, "dev", self._tun.name)

    # -- packets -----------------------------------------------------------------------
    def _from_ike(self, local: str, message: bytes, peer: Address, nat_t: bool) -> None:
        gateway = self._gateways.get(local)
        tunnel = gateway.by_peer.get(peer[0]) if gateway else None
        if tunnel is None:
            self.ike_drops.count("unknown-peer", peer)
            return
        tunnel.receive_ike(message, peer, nat_t, self._now())

    def _from_esp(self, local: str, data: bytes, peer: Address) -> None:
        result = self.sad.open(data)
        if isinstance(result, DropReason):
            owner = self.sad.owner(data) if result in _OWNED else None
            (owner.esp_drops if owner else self.drops).count(f"esp-{result.value}", peer)
            return
        tunnel, _sa, inner = result
        pair = addresses(inner)
        if pair is None or not self.spd.inbound_allowed(tunnel, pair[0], pair[1]):
            tunnel.esp_drops.count("esp-policy", peer)
            return
        now = self._clock()
        bucket = self._gateways[local].bucket_in
        if bucket is not None and not bucket.allow(len(inner), now):
            tunnel.esp_drops.count("bandwidth-in", peer)
            return
        tunnel.peer_nat_t = peer
        tunnel.accepted(inner, now)
        if self._tun is not None:
            self._tun.write(inner)

    def _flush_sockets(self) -> None:
        """A burst of TUN reads ended: its ESP leaves now, not one loop round later."""
        for gateway in self._gateways.values():
            gateway.sockets.flush()

    def _flush_tun(self) -> None:
        """A burst of ESP reads ended: the decrypted packets go to the kernel now."""
        if self._tun is not None:
            self._tun.flush()

    def _from_tun(self, packet: bytes) -> None:
        pair = addresses(packet)
        tunnel = self.spd.outbound(pair[0], pair[1]) if pair else None
        if tunnel is None:
            self.drops.count("no-policy", _source(packet))
            return
        gateway = self._gateways.get(tunnel.config.local_address)
        if gateway is None:
            tunnel.esp_drops.count("no-gateway", _source(packet))
            return
        bucket = gateway.bucket_out
        if bucket is not None and not bucket.allow(len(packet), self._clock()):
            tunnel.esp_drops.count("bandwidth-out", _source(packet))
            return
        data = tunnel.seal(packet)
        if data is None:
            tunnel.esp_drops.count("no-sa", _source(packet))
            tunnel.on_demand(self._clock())
            return
        gateway.sockets.send_esp(data, tunnel.peer_nat_t)

    # -- control -----------------------------------------------------------------------
    def tunnel_status(self) -> list[TunnelStatus]:
        """State, SPIs and counters of every tunnel (GatewayControl.tunnel_status)."""
        now = self._now()
        drops = self.drops.reasons + Counter({f"ike-{reason}": count for reason, count
                                              in self.ike_drops.reasons.items()})
        sources = (self.drops.sources + self.ike_drops.sources).most_common(TOP_SOURCES)
        return [replace(self._tunnels[name].status(now),
                        node=self._node if self._tunnels[name].config.nodes else None,
                        gateway_drops=dict(drops), gateway_drop_sources=dict(sources))
                for name in sorted(self._tunnels)]

    def rekey_all(self, now: float, *, ike: bool) -> None:
        """Rekey every up tunnel's CHILD_SA (or IKE SA) now, e.g. before a planned key change."""
        for tunnel in self._tunnels.values():
            if tunnel.state == "up":
                if ike:
                    tunnel.rekey_ike(now)
                else:
                    tunnel.rekey_child(now)

    def tunnel_action(self, name: str, action: str) -> str:
        """An operator's action on one running tunnel (GatewayControl.tunnel_action)."""
        tunnel = self._tunnels.get(name)
        if tunnel is None:
            raise ValueError(f"tunnel {name!r} is not running on this gateway")
        if tunnel.stopped:
            raise ValueError(f"tunnel {name!r} is switched down: 'sslvpn ipsec up {name}' first")
        now = self._now()
        if action in ("rekey-ike", "rekey-child"):
            if tunnel.state != "up":
                raise ValueError(f"tunnel {name!r} is not up ({tunnel.state})")
            (tunnel.rekey_ike if action == "rekey-ike" else tunnel.rekey_child)(now)
            return f"tunnel {name}: {action.replace('-', ' ')} started"
        if action == "restart":
            tunnel.restart(now)
            return f"tunnel {name}: restarting from IKE_SA_INIT"
        if action == "down":
            tunnel.terminate(now)
            return f"tunnel {name}: SAs deleted; it stays down until restarted or the peer " \
                "initiates"
        raise ValueError(f"unknown tunnel action {action!r}")

    def tunnel(self, name: str) -> Tunnel:
        """The running tunnel called ``name`` (for tests and the control socket)."""
        return self._tunnels[name]
