"""Prometheus metrics: what a scrape of ``/metrics`` reads, and how a module adds its own.

Nothing is counted for the metrics' sake on the data path: a scrape reads the counters the
gateway, its listeners and its cores already keep. ``Metrics`` owns one registry (with
prometheus-client's process, platform and GC collectors) and three kinds of sources, each a
function returning finished metric families:

- a *loop source* runs on the gateway's event loop, so it reads live objects without races;
  all loop sources of a scrape run in one hop there, bounded by ``LOOP_TIMEOUT``;
- a *store source* runs in a store thread (``AsyncStore``, bounded in time) with a read
  session: certificates, heartbeats, what other processes wrote;
- a *thread source* runs in a thread of its own and may block: the supervisor of
  `serve --workers` reads each worker's counters over its control socket at scrape time
  (``WorkersControl``) and adds them up, so the workers' loops only answer one small
  request per scrape and count nothing more.

A source that fails or times out leaves its families out of that scrape (an absent series
is what Prometheus alerts on) and the rest is served. To add a family: write a function that
builds ``GaugeMetricFamily``/``CounterMetricFamily`` objects from counters your module keeps,
and hand it to ``add_loop_source`` (or ``add_store_source``, ``add_thread_source``) where the
process is composed (``sslvpn.cli.serve``). ``gateway_source`` and ``store_facts`` are the
gateway's own.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from cryptography import x509
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sslvpn.config import DataPaths
from sslvpn.runtime.control import (
    GatewayCounters,
    ListenerStatus,
    TunnelStatus,
    schedule_on_loop,
)
from sslvpn.store import StoreError, metrics_queries
from sslvpn.store.async_store import AsyncStore

if TYPE_CHECKING:  # the type of what a store thread hands a source, never opened here
    from sqlmodel import Session

log = logging.getLogger(__name__)

T = TypeVar("T")
LOOP_TIMEOUT = 2.0  # seconds a scrape waits for the gateway's loop
STORE_TIMEOUT = 5.0  # seconds a scrape waits for the store's answers
THREAD_TIMEOUT = 5.0  # seconds a scrape waits for a thread source (the workers' answers)
LoopSource = Callable[[], Iterable[Metric]]
StoreSource = Callable[["Session"], Iterable[Metric]]


class Metrics:
    """The process's registry and sources; ``scrape`` renders one exposition."""

    def __init__(self, *, loop: asyncio.AbstractEventLoop | None = None,
                 store: AsyncStore | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(standard)
        self._gathered = _Gathered()
        self.registry.register(self._gathered)
        self._render_lock = threading.Lock()  # one scrape's families at a time
        self._loop = loop
        self._store = store
        self._loop_sources: list[LoopSource] = []
        self._store_sources: list[StoreSource] = []
        self._thread_sources: list[LoopSource] = []

    def add_loop_source(self, source: LoopSource) -> None:
        """``source`` runs on the gateway's loop at each scrape (needs ``loop``)."""
        if self._loop is None:
            raise ValueError("this process has no gateway loop to read from")
        self._loop_sources.append(source)

    def add_store_source(self, source: StoreSource) -> None:
        """``source`` runs in a store thread with a read session at each scrape."""
        if self._store is None:
            raise ValueError("this process has no store to read from")
        self._store_sources.append(source)

    def add_thread_source(self, source: LoopSource) -> None:
        """``source`` runs in a thread at each scrape: it may block (a control socket)."""
        self._thread_sources.append(source)

    async def scrape(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition in the format ``accept`` asks for, and its content type."""
        families = (await self._from_loop() + await self._from_threads()
                    + await self._from_store())
        encoder, content_type = choose_encoder(accept or "")
        with self._render_lock:
            self._gathered.families = families
            try:
                return encoder(self.registry), content_type
            finally:
                self._gathered.families = []

    async def _from_loop(self) -> list[Metric]:
        if not self._loop_sources or self._loop is None:
            return []
        sources = list(self._loop_sources)
        try:
            return await on_loop(self._loop, lambda: _gather(sources), LOOP_TIMEOUT)
        except TimeoutError:
            log.warning("metrics: the gateway's loop did not answer in %.0f s", LOOP_TIMEOUT)
        except Exception:
            log.exception("metrics: a gateway source failed")
        return []

    async def _from_threads(self) -> list[Metric]:
        """Each thread source on its own: one that fails (a worker away) leaves the others."""
        families: list[Metric] = []
        for source in list(self._thread_sources):
            try:
                async with asyncio.timeout(THREAD_TIMEOUT):
                    families += await asyncio.to_thread(_gather, [source])
            except TimeoutError:
                log.warning("metrics: a source did not answer in %.0f s", THREAD_TIMEOUT)
            except Exception as exc:  # the workers' control sockets unreachable, or a bug
                log.warning("metrics: a source left out of this scrape: %s", exc)
        return families

    async def _from_store(self) -> list[Metric]:
        if not self._store_sources or self._store is None:
            return []
        sources = list(self._store_sources)
        try:
            return await self._store.read(lambda s: _gather(sources, s), timeout=STORE_TIMEOUT)
        except StoreError as exc:  # the facade logs the outage itself
            log.debug("metrics: store sources left out: %s", exc)
        except Exception:
            log.exception("metrics: a store source failed")
        return []


class _Gathered(Collector):
    """Yields the families gathered for the scrape being rendered."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _gather(sources: list[Callable[..., Iterable[Metric]]], *args: object) -> list[Metric]:
    return [family for source in sources for family in source(*args)]


async def on_loop(loop: asyncio.AbstractEventLoop, call: Callable[[], T],
                     timeout: float) -> T:
    """``call()`` on ``loop`` (at once when it is the running one), waited for at most
    ``timeout`` seconds; a call not started by then never runs."""
    if asyncio.get_running_loop() is loop:
        return call()
    done = schedule_on_loop(loop, call)
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.wrap_future(done)
    finally:
        done.cancel()


def gateway_source(read_counters: Callable[[], GatewayCounters], node: str) -> LoopSource:
    """The gateway's families from ``read_counters`` (a gateway's own, or every worker's
    added up): sessions, handshakes, tunnel bytes and packets, drops (the gateway's, its
    listeners' and its sessions' cores'), the accounting queue, the access rules' hits."""

    def read() -> Iterator[Metric]:
        counters = read_counters()
        sessions = GaugeMetricFamily("sslvpn_sessions", "Admitted client sessions.",
                                     labels=["node", "proto"])
        for proto in ("udp", "tcp"):
            sessions.add_metric([node, proto], counters.sessions.get(proto, 0))
        handshakes = CounterMetricFamily(
            "sslvpn_handshakes", "OpenVPN handshakes ended, by result.", labels=["node", "result"])
        for result, count in counters.handshakes.items():
            handshakes.add_metric([node, result], count)
        tunnel_bytes = CounterMetricFamily(
            "sslvpn_tunnel_bytes", "Tunnelled IP bytes; in: client to VPC, out: VPC to client.",
            labels=["node", "direction"])
        tunnel_bytes.add_metric([node, "in"], counters.bytes_in)
        tunnel_bytes.add_metric([node, "out"], counters.bytes_out)
        packets = CounterMetricFamily(
            "sslvpn_tunnel_packets", "Tunnelled IP packets; in: client to VPC, out: VPC to "
            "client.", labels=["node", "direction"])
        packets.add_metric([node, "in"], counters.packets_in)
        packets.add_metric([node, "out"], counters.packets_out)
        dropped = CounterMetricFamily(
            "sslvpn_dropped_packets", "Packets dropped by the gateway, its listeners and "
            "sessions, by reason.", labels=["node", "reason"])
        for reason, count in sorted(counters.drops.items()):
            dropped.add_metric([node, reason], count)
        queue = GaugeMetricFamily("sslvpn_store_write_queue_depth",
                                  "Accounting records waiting to be written to the store.",
                                  value=counters.store_write_queue)
        access = CounterMetricFamily(
            "sslvpn_access_rule_packets", "Packets an access rule (or the default) decided, "
            "both directions, by rule id and action.", labels=["node", "rule", "action"])
        for key, count in sorted(counters.access_hits.items()):
            rule, _, action = key.rpartition("/")
            access.add_metric([node, rule, action], count)
        return iter((sessions, handshakes, tunnel_bytes, packets, dropped, queue, access))

    return read


def listener_source(read_status: Callable[[], ListenerStatus], node: str) -> LoopSource:
    """The OpenVPN listeners' admission: clients held, those not authenticated yet (now and
    peak) per transport, new clients refused by reason, the caps in force. The most refused
    sources stay out (one label value per attacker address); `sslvpn sessions --json` has
    them."""

    def read() -> Iterator[Metric]:
        status = read_status()
        clients = GaugeMetricFamily("sslvpn_openvpn_clients", "OpenVPN clients held (UDP "
                                    "sessions and TCP connections), authenticated or not.",
                                    labels=["node"])
        clients.add_metric([node], status.clients)
        half_open = GaugeMetricFamily(
            "sslvpn_openvpn_half_open", "OpenVPN clients that have not authenticated yet.",
            labels=["node", "proto"])
        peak = GaugeMetricFamily(
            "sslvpn_openvpn_half_open_peak", "Most OpenVPN clients not authenticated at once "
            "since the gateway started.", labels=["node", "proto"])
        for proto in ("udp", "tcp"):
            half_open.add_metric([node, proto], status.half_open.get(proto, 0))
            peak.add_metric([node, proto], status.half_open_peak.get(proto, 0))
        refused = CounterMetricFamily(
            "sslvpn_openvpn_refused", "New OpenVPN clients refused (or evicted), by reason.",
            labels=["node", "reason"])
        for reason, count in sorted(status.refused.items()):
            refused.add_metric([node, reason], count)
        limits = GaugeMetricFamily("sslvpn_openvpn_client_limit", "The admission caps in "
                                   "force (0: none).", labels=["node", "limit"])
        for name, limit in sorted(status.limits.items()):
            limits.add_metric([node, name], limit)
        return iter((clients, half_open, peak, refused, limits))

    return read


def ipsec_source(read_tunnels: Callable[[], list[TunnelStatus]]) -> LoopSource:
    """Site-to-site tunnels as the IPsec service reports them: up or not, bytes each way
    (in: from the peer's networks, out: to them), completed rekeys (ike, child), half-open
    IKE SAs, and drops by reason: each tunnel's IKE and ESP ones, and the gateway's in all
    (those of no tunnel too). Sources stay out of the labels: a spoofed flood would make
    one series per forged address (`ipsec status --json` has the top sources)."""

    def read() -> Iterator[Metric]:
        up = GaugeMetricFamily("sslvpn_ipsec_tunnel_up", "1 when the IPsec tunnel is up.",
                               labels=["tunnel"])
        tunnel_bytes = CounterMetricFamily(
            "sslvpn_ipsec_bytes", "Bytes through the IPsec tunnel's CHILD_SA, by direction.",
            labels=["tunnel", "direction"])
        rekeys = CounterMetricFamily("sslvpn_ipsec_rekeys", "Completed rekeys, by SA kind.",
                                     labels=["tunnel", "kind"])
        half_open = GaugeMetricFamily("sslvpn_ipsec_ike_half_open", "IKE SAs from the "
                                      "peer's address not authenticated yet.",
                                      labels=["tunnel"])
        dropped = CounterMetricFamily(
            "sslvpn_ipsec_dropped", "IKE messages (plane ike) and ESP or packets (plane esp) "
            "a tunnel dropped, by reason.", labels=["tunnel", "plane", "reason"])
        gateway_dropped = CounterMetricFamily(
            "sslvpn_ipsec_gateway_dropped", "Everything the IPsec gateway dropped, tunnels' "
            "and no tunnel's (IKE reasons prefixed ike-), by reason.", labels=["reason"])
        statuses = read_tunnels()
        for status in statuses:
            up.add_metric([status.name], 1 if status.state == "up" else 0)
            tunnel_bytes.add_metric([status.name, "in"], status.bytes_in)
            tunnel_bytes.add_metric([status.name, "out"], status.bytes_out)
            for kind in ("ike", "child"):
                rekeys.add_metric([status.name, kind], status.rekeys.get(kind, 0))
            half_open.add_metric([status.name], status.ike_half_open)
            for plane, counts in (("ike", status.ike_drops), ("esp", status.esp_drops)):
                for reason, count in sorted(counts.items()):
                    dropped.add_metric([status.name, plane, reason], count)
        for reason, count in sorted(statuses[0].gateway_drops.items() if statuses else ()):
            gateway_dropped.add_metric([reason], count)  # the same in every tunnel's row
        return iter((up, tunnel_bytes, rekeys, half_open, dropped, gateway_dropped))

    return read


def store_facts(paths: DataPaths) -> StoreSource:
    """Certificate expiry (the CA and the server certificate from the files the gateway
    serves, the rest from the store) and each fleet node's heartbeat age on the database's
    clock."""

    def read(s: Session) -> Iterator[Metric]:
        expiry = GaugeMetricFamily(
            "sslvpn_certificate_expiry_timestamp_seconds",
            "When it expires (Unix time): the CA, the server certificate, the CRL's "
            "nextUpdate, the earliest valid client certificate.", labels=["kind"])
        found = metrics_queries.expiry_times(s)
        for kind, path in (("ca", paths.ca_cert), ("server", paths.server_cert)):
            not_after = _not_after(path)
            if not_after is not None:
                found[kind] = not_after
        for kind in ("ca", "server", "crl_next_update", "earliest_client"):
            if kind in found:
                expiry.add_metric([kind], found[kind].timestamp())
        ages = GaugeMetricFamily("sslvpn_node_heartbeat_age_seconds",
                                 "Seconds since the fleet node's last heartbeat.",
                                 labels=["node"])
        for node, age in sorted(metrics_queries.heartbeat_ages(s).items()):
            if age is not None:
                ages.add_metric([node], age)
        return iter((expiry, ages))

    return read


def _not_after(path: Path) -> datetime | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc
    except (OSError, ValueError):  # absent or unreadable: the series is left out
        return None
