"""`sslvpn serve`: build the gateway from the data folder and run it until a signal.

Loads the gateway settings from the store, creates the TUN and the host network setup
(address, forwarding, optional SNAT), starts the OpenVPN listeners (UDP and TCP, IPv4 and
IPv6 where available), the control socket, the revocation sweep, the daily hooks (CRL
refresh, in a thread), the keeper that recreates a TUN device deleted under it, the
heartbeat when it runs as a named node of a fleet (`sslvpn.runtime.node`; its address pool
is then the node's sub-pool), the listener for the fleet's signals on PostgreSQL
(`sslvpn.runtime.fleet_signal`: a revocation or kick anywhere wakes the sweep), the loop-lag
watchdog, and any extra long-running tasks the composition root adds (the portal and the
IPsec service), all in one ``asyncio.TaskGroup``.
The service reaches the store only through the ``AsyncStore`` it is given: the loop that
carries packets never waits for a locked or hung database (its start-up reads too go through
it, with a longer bound). SIGTERM/SIGINT end it cleanly: every client is told (explicit
exit), then listeners, the TUN and the network setup are removed.
``run`` drives it on uvloop where installed: its event loop is C, so the wake-up of an idle
gateway costs less before a packet's callback runs (tests keep asyncio's own loop).
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import socket
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from sslvpn.config import DataPaths
from sslvpn.net.subpools import Fleet, NodePools, effective_pool6
from sslvpn.runtime.admission import (
    HALF_OPEN_MAX,
    HALF_OPEN_PER_ADDRESS,
    AdmissionLimits,
    raise_descriptor_limit,
)
from sslvpn.runtime.control_server import ControlServer
from sslvpn.runtime.fleet_signal import listen_conninfo, listen_for_signals
from sslvpn.runtime.gateway import Gateway, GatewayOptions
from sslvpn.runtime.instance import stop_on_signals
from sslvpn.runtime.loop_watchdog import LoopWatchdog
from sslvpn.runtime.netconf import NFT_TABLE, NetConfig
from sslvpn.runtime.node import heartbeat, heartbeat_interval, node_pools, vpc_side_addresses
from sslvpn.runtime.openvpn_setup import OpenVpnCredentials, build_openvpn
from sslvpn.runtime.openvpn_tcp import OpenVpnTcpListener
from sslvpn.runtime.openvpn_udp import OpenVpnUdpListener, bind_udp
from sslvpn.runtime.policy import STARTUP_TIMEOUT, StorePolicy
from sslvpn.runtime.tun import LinuxTun, Tun
from sslvpn.runtime.tun_keeper import keep_tun
from sslvpn.runtime.workers import WorkerSlot
from sslvpn.store import queries
from sslvpn.store.async_store import AsyncStore
from sslvpn.store.models import GatewaySettings

log = logging.getLogger(__name__)

T = TypeVar("T")
DAILY = 24 * 3600.0
# seconds a thread may keep the GIL while the packet loop waits for it (Python's default is
# 5 ms: a UDP echo loop beside a busy Python thread answered in a median 8-10 ms, with this
# 0.8-2.7 ms, on the loaded 2-core host; alone, 0.18 ms)
SWITCH_INTERVAL = 0.0005
ExtraTask = Callable[[Gateway], Coroutine[object, object, None]]
DailyHook = Callable[[], object]
ReadyHook = Callable[["GatewayService"], None]


@dataclass(frozen=True)
class ServeOptions:
    """Command-line choices layered over the stored settings."""

    listen: tuple[str, ...] = ("0.0.0.0", "::")  # noqa: S104 (a gateway serves the world)
    port: int | None = None  # None: the port chosen at init
    protocols: str | None = None  # None: the stored "udp" | "tcp" | "both"
    tun_name: str = "sslvpn%d"
    configure_network: bool = True
    gateway_name: str = "default"
    node: str | None = None  # None: the single implicit node, serving the whole pool
    heartbeat_interval: float | None = None  # None: a third of the stored heartbeat timeout
    sweep_interval: float | None = 2.0  # None: the supervisor of the workers sweeps
    connect_freq: tuple[int, float] | None = None  # new-client replies per seconds
    half_open_per_address: int = HALF_OPEN_PER_ADDRESS  # clients one source may hold unproven
    extra_tasks: Sequence[ExtraTask] = field(default_factory=tuple)
    daily_hooks: Sequence[DailyHook] = field(default_factory=tuple)
    on_ready: ReadyHook | None = None  # e.g. the CLI printing where clients connect
    worker: WorkerSlot | None = None  # None: one process serving the node's whole pool
    # a worker: its socket of each UDP address's steered group, bound by the supervisor
    # (`sslvpn.runtime.steering`); an address missing here could not be bound
    udp_sockets: Mapping[str, socket.socket] | None = None


def gateway_options(settings: GatewaySettings, sweep_interval: float | None = 2.0,
                    node: NodePools | None = None,
                    half_open_per_address: int = HALF_OPEN_PER_ADDRESS) -> GatewayOptions:
    """The data-path and PUSH_REPLY settings from the stored gateway settings; a node
    hands out addresses from its sub-pools only."""
    pool = ipaddress.ip_network(settings.pool_cidr)
    if not isinstance(pool, ipaddress.IPv4Network):
        raise ValueError(f"the client pool {pool} must be IPv4")
    pool6 = ipaddress.ip_network(settings.pool6_cidr) if settings.pool6_cidr else None
    if pool6 is not None and not isinstance(pool6, ipaddress.IPv6Network):
        raise ValueError(f"the IPv6 client pool {pool6} must be IPv6")
    if node is not None:
        pool, pool6 = node.pool, effective_pool6(node, Fleet(pool, pool6))
    usable = max(pool.num_addresses - 3, 1)  # network, gateway, broadcast
    admission = AdmissionLimits(
        max_clients=settings.max_clients or usable + HALF_OPEN_MAX,
        max_clients_per_address=settings.max_clients_per_address,
        half_open_per_address=half_open_per_address,
    )
    return GatewayOptions(
        admission=admission,
        pool=pool,
        pool6=pool6,
        vpc_networks=tuple(ipaddress.ip_network(n) for n in settings.vpc_networks),
        dns=tuple(ipaddress.ip_address(a) for a in settings.dns_servers),
        domains=(settings.dns_domain,) if settings.dns_domain else (),
        keepalive_interval=settings.keepalive_interval,
        keepalive_timeout=settings.keepalive_timeout,
        client_to_client=settings.client_to_client,
        sweep_interval=sweep_interval,
    )


class GatewayService:
    """Everything `sslvpn serve` runs; ``ready`` is set once clients can connect."""

    def __init__(
        self,
        paths: DataPaths,
        store: AsyncStore,
        options: ServeOptions,
        *,
        tun_factory: Callable[[str], Tun] | None = None,
    ) -> None:
        self.paths = paths
        self.store = store
        self.options = options
        self.watchdog = LoopWatchdog()
        self._tun_factory = tun_factory or (lambda name: LinuxTun(name))
        self.ready = asyncio.Event()
        self.stopping = asyncio.Event()
        self.gateway: Gateway | None = None
        self.udp: list[OpenVpnUdpListener] = []
        self.tcp: list[OpenVpnTcpListener] = []

    def stop(self) -> None:
        """Begin a clean shutdown (signal handlers call this)."""
        self.stopping.set()

    async def run(self) -> None:
        """Run until ``stop()`` (or SIGTERM/SIGINT when installed by ``serve``)."""
        gateway_name, node_name = self.options.gateway_name, self.options.node
        settings, node = await self.store.read(
            lambda s: (queries.get_settings(s, name=gateway_name), node_pools(s, node_name)),
            timeout=STARTUP_TIMEOUT)
        worker = self.options.worker
        options = gateway_options(settings, self.options.sweep_interval, node,
                                  self.options.half_open_per_address)
        options = replace(options, node_name=node_name or "default")
        if worker is not None:
            options = worker.narrow(options)
        raise_descriptor_limit(options.admission.max_clients)
        # a node's session records carry its name, so its restart closes only its own (a
        # worker's, only those in its slice: the other workers' clients are still served)
        policy = StorePolicy(self.store, gateway_name=gateway_name, node=node_name)
        stale = await policy.close_stale_records(
            within=options.pool if worker is not None else None)
        if stale:
            log.info("closed %d session records left open by a previous run", stale)
        tun = self._tun_factory(self.options.tun_name)
        netconf = NetConfig(
            tun_name=tun.name, pool=options.pool, gateway_address=options.pool.network_address + 1,
            vpc_networks=list(options.vpc_networks), mtu=options.tun_mtu, snat=settings.snat,
            pool6=options.pool6,
            gateway6_address=options.pool6.network_address + 1 if options.pool6 else None,
            nft_table=worker.nft_table if worker is not None else NFT_TABLE,
        )
        gateway = self.gateway = Gateway(tun, options, policy)
        control_path = self.paths.control_socket
        control = ControlServer(gateway, control_path if worker is None
                                else worker.control_socket(control_path))
        try:
            if self.options.configure_network:
                netconf.apply()
            await gateway.start()
            await self._listen(gateway, settings)
            gateway.ready_checks.update(listeners=lambda: bool(self.udp or self.tcp), tun=tun.up)
            await control.start()
            self.ready.set()
            if self.options.on_ready is not None:
                self.options.on_ready(self)
            await self._run_tasks(gateway, netconf, settings)
        finally:
            log.info("shutting down: telling %d client(s)", len(gateway.list_sessions()))
            await gateway.shutdown()
            await self._close_listeners()
            await control.close()
            tun.close()
            if self.options.configure_network:
                netconf.remove()
            watchdog = self.watchdog
            log.info("gateway stopped; its event loop ran at most %.0f ms late (%d stalls, "
                     "%d times starved of CPU)", watchdog.max_lag * 1000, watchdog.stalls,
                     watchdog.starved)

    async def _listen(self, gateway: Gateway, settings: GatewaySettings) -> None:
        port = self.options.port if self.options.port is not None else settings.port
        protocols = self.options.protocols or settings.protocols
        credentials = OpenVpnCredentials.load(self.paths, settings)
        worker = self.options.worker
        shared = worker is not None  # the port is shared with the other workers
        for host in self.options.listen:
            if protocols in ("udp", "both"):
                sock = self._udp_socket(host, port)
                if sock is not None:
                    acceptor, factory = build_openvpn(
                        credentials, settings, tcp=False, connect_freq=self.options.connect_freq
                    )
                    listener = OpenVpnUdpListener(sock, gateway, acceptor, factory, pin=shared)
                    listener.start()
                    self.udp.append(listener)
                    gateway.drop_counters.append(listener.drops)
                    log.info("OpenVPN listening on udp %s:%d", *listener.address)
            if protocols in ("tcp", "both"):
                acceptor, factory = build_openvpn(
                    credentials, settings, tcp=True, connect_freq=self.options.connect_freq
                )
                tcp = OpenVpnTcpListener(gateway, acceptor, factory)
                try:
                    await tcp.start(host, port, reuse_port=shared)
                except OSError as exc:
                    unavailable("tcp", host, port, exc, self.options.listen)
                else:
                    self.tcp.append(tcp)
                    gateway.drop_counters.append(tcp.drops)
                    log.info("OpenVPN listening on tcp %s:%d", *tcp.address)
        if not self.udp and not self.tcp:
            raise OSError(f"could not listen on port {port} on any address")

    def _udp_socket(self, host: str, port: int) -> socket.socket | None:
        """This process's UDP socket on ``host``: a worker's comes from the supervisor."""
        if self.options.udp_sockets is not None:
            return self.options.udp_sockets.get(host)  # else the supervisor said why
        try:
            return bind_udp(host, port)
        except OSError as exc:
            unavailable("udp", host, port, exc, self.options.listen)
            return None

    def listening(self) -> list[str]:
        """Where clients reach the OpenVPN listeners, as ``proto host:port``."""
        shown = [("udp", udp.address) for udp in self.udp] + [("tcp", t.address) for t in self.tcp]
        return [f"{proto} [{host}]:{port}" if ":" in host else f"{proto} {host}:{port}"
                for proto, (host, port) in shown]


    async def _run_tasks(self, gateway: Gateway, netconf: NetConfig,
                         settings: GatewaySettings) -> None:
        reconfigure = netconf.apply if self.options.configure_network else None
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(gateway.run_sweeps(), name="policy-sweep"),
                     group.create_task(gateway.run_access_refresh(), name="access-refresh"),
                     group.create_task(run_daily(self.options.daily_hooks),
                                       name="daily-hooks"),
                     group.create_task(keep_tun(gateway.tun, reconfigure,
                                                lambda: len(gateway.list_sessions())),
                                       name="tun-keeper"),
                     group.create_task(self.watchdog.run(), name="loop-watchdog")]
            if self.options.node is not None and self.options.worker is None:  # else the
                # supervisor of the workers beats for the node
                beats = run_heartbeat(self.store, self.options.node, settings,
                                      interval=self.options.heartbeat_interval,
                                      on_removed=self.stop)
                tasks.append(group.create_task(beats, name="heartbeat"))
            conninfo = listen_conninfo(self.store.url)
            if conninfo is not None and self.options.sweep_interval is not None:
                signals = listen_for_signals(conninfo, gateway.wake_sweep)
                tasks.append(group.create_task(signals, name="fleet-signals"))
            tasks += [group.create_task(extra(gateway)) for extra in self.options.extra_tasks]
            await self.stopping.wait()
            # before the tasks end: the IPsec service's takes its tunnels' counters with it
            gateway.book_tunnels()
            for task in tasks:
                task.cancel()

    async def _close_listeners(self) -> None:
        for udp in self.udp:
            udp.close()
        for tcp in self.tcp:
            await tcp.close()
        self.udp.clear()
        self.tcp.clear()


def unavailable(proto: str, host: str, port: int, exc: OSError, listen: Sequence[str]) -> None:
    """Say that ``proto`` cannot listen on ``host`` (quietly for IPv6 on a host without it)."""
    if ":" in host and not any(":" in h for h in listen if h != host):
        level = logging.INFO  # no IPv6 on this host is normal
    else:
        level = logging.WARNING
    log.log(level, "not listening on %s [%s]:%d: %s", proto, host, port, exc.strerror or exc)


async def run_heartbeat(store: AsyncStore, node: str, settings: GatewaySettings, *,
                        interval: float | None, on_removed: Callable[[], None]) -> None:
    """The node's heartbeat, in a store thread of its own (a stuck accounting write must not
    also stop the beats); ``interval`` None: a third of the stored heartbeat timeout."""
    companion = store.companion(threads=1)
    vpc = [ipaddress.ip_network(network) for network in settings.vpc_networks]
    try:
        await heartbeat(companion, node=node, interval=interval or heartbeat_interval(settings),
                        timeout=settings.heartbeat_timeout,
                        vpc_addresses=vpc_side_addresses(vpc), on_removed=on_removed)
    finally:
        await companion.close()


async def run_daily(hooks: Sequence[DailyHook]) -> None:
    """Each hook once a day, in a thread (the supervisor of workers runs them too)."""
    while True:
        for hook in hooks:
            try:
                await asyncio.to_thread(hook)
            except Exception:  # a failed refresh is logged and retried tomorrow
                log.exception("daily task %r failed", hook)
        await asyncio.sleep(DAILY)


async def serve(service: GatewayService) -> None:
    """Run ``service`` with SIGTERM and SIGINT mapped to a clean stop; then stop its store
    threads. Once it serves, what start-up made is frozen out of the garbage collector.
    While it runs, a thread holding the GIL (a store read turning rows into objects, the
    accounting writer) is asked to hand it over after `SWITCH_INTERVAL` instead of Python's
    5 ms, the longest a packet then waits for its loop to get the interpreter back."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    frozen = asyncio.create_task(_freeze_when_ready(service))
    try:
        with stop_on_signals(service.stop):
            await service.run()
    finally:
        frozen.cancel()
        await service.store.close()
        sys.setswitchinterval(previous)


async def _freeze_when_ready(service: GatewayService) -> None:
    """``gc.freeze()`` once the gateway serves: the modules, classes and settings loaded at
    start-up (over 100,000 objects) live as long as the process, yet every full collection
    walked them all on the loop that carries packets, a pause of tens of milliseconds (500
    ms on this loaded 2-core host) that lands on whatever packet is waiting."""
    await service.ready.wait()
    gc.freeze()


def run(main: Coroutine[object, object, T]) -> T:
    """``asyncio.run(main)`` on uvloop when installed: an idle gateway woken by one packet
    reaches that packet's callback sooner from libuv's C loop than from asyncio's Python one.
    """
    with asyncio.Runner(loop_factory=_fast_loop_factory()) as runner:
        return runner.run(main)


def _fast_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # a platform without uvloop serves on asyncio's own loop
        return None
    return uvloop.new_event_loop
