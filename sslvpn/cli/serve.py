"""`sslvpn serve`: run the gateway.

``serve`` is the composition root of the running gateway: it opens the store and hands the
runtime its long-running companions: the daily CRL refresh and the revocation of renewed
certificates whose overlap ended from ``client_profiles``, the
retention pass from ``sslvpn.store.retention`` (all in a thread), the
IPsec service (site-to-site tunnels; their status answered through the gateway's control)
and the portal (``web``, on its own event loop in its own thread so that no portal work
ever runs on the loop that carries packets, with the in-process gateway as its
GatewayControl, so live sessions and kick need no socket); then it runs until SIGTERM/SIGINT.
With ``--workers N`` (N > 1) this process becomes the supervisor: the workers carry the
packets (the first one also the IPsec tunnels), and the supervisor runs the rest off their
loops: the node's revocation sweep, the daily work, the retirement of renewed certificates,
the portal, the metrics and the alarms, answering for every worker
(`sslvpn.runtime.workers_control`).
With ``--tracemalloc FRAMES`` it traces Python allocations from then on (after the imports,
which tracing would slow tenfold) and writes a snapshot on each SIGUSR2, for hunting leaks
in long runs (``bench/soak.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
import time
import tracemalloc
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
from aiohttp import web
from sqlalchemy import Engine

from client_profiles import crl, lifecycle
from client_profiles.pki import WrongPassphrase
from client_profiles.pkifiles import LifecycleError
from sslvpn.cli.alarms import refresh_crl_watched
from sslvpn.cli.check import allow_insecure_permissions, preflight
from sslvpn.cli.setup import (
    log_format_option,
    log_to_stderr,
    one_line_errors,
    paths_of,
    require_data_folder,
    store,
)
from sslvpn.config import DataPaths
from sslvpn.openvpn.tls import TlsGroupsError
from sslvpn.runtime import instance, steering
from sslvpn.runtime.admission import HALF_OPEN_MAX, HALF_OPEN_PER_ADDRESS
from sslvpn.runtime.alarms import Counter, Tunnels, alarm_metrics, run_alarms
from sslvpn.runtime.control import GatewayControl, ThreadSafeControl, TunnelStatus
from sslvpn.runtime.control_server import ControlError
from sslvpn.runtime.fleet_signal import listen_conninfo, listen_for_signals
from sslvpn.runtime.gateway import Gateway
from sslvpn.runtime.ipsec_service import IpsecService
from sslvpn.runtime.metrics import (
    Metrics,
    gateway_source,
    ipsec_source,
    listener_source,
    on_loop,
    store_facts,
)
from sslvpn.runtime.netconf import NetconfError
from sslvpn.runtime.service import (
    DailyHook,
    ExtraTask,
    GatewayService,
    ServeOptions,
    run,
    run_daily,
    run_heartbeat,
    serve,
)
from sslvpn.runtime.systemd import notify_systemd
from sslvpn.runtime.tun_keeper import TunLostError
from sslvpn.runtime.workers import (
    Companion,
    Supervisor,
    WorkerSlot,
    stop_with_supervisor,
    supervise,
    usable_cores,
)
from sslvpn.runtime.workers_control import NodeSweep, WorkersControl
from sslvpn.store import StoreError, db, queries, retention
from sslvpn.store.async_store import AsyncStore
from sslvpn.store.models import GatewaySettings
from web.app import create_app, ensure_first_admin, start_portal
from web.health import CHECK_TIMEOUT, Check, Health, store_reachable
from web.ops import create_ops_app, metrics_listen, start_ops
from web.portal import PortalSettings
from web.portal_thread import PortalThread
from web.tls import portal_tls

log = logging.getLogger(__name__)

IPSEC_RESTART_DELAY = 5.0  # seconds before an IPsec service that failed is started afresh
AUTH_FAILURES = ("auth_failed", "revoked", "expired")  # handshake results an alarm counts
RETIRE_INTERVAL = 5.0  # seconds between looks for renewed certificates to revoke


class PortalStartError(Exception):
    """The portal could not bind its address (one line for the operator)."""


@dataclass(frozen=True)
class PortalPlan:
    """Where and how the portal serves, settled before the gateway starts."""

    listen: str
    tls: ssl.SSLContext | None
    public_url: str | None
    public_address: str | None  # shown instead of a wildcard bind address


def shown_url(url: str, public_address: str | None) -> str:
    """The portal's URL as a person can open it: a wildcard bind shows the public address."""
    parts = urllib.parse.urlsplit(url)
    if public_address is None or parts.hostname not in ("0.0.0.0", "::"):  # noqa: S104
        return url
    host = f"[{public_address}]" if ":" in public_address else public_address
    return parts._replace(netloc=f"{host}:{parts.port}").geturl()


def portal_task(paths: DataPaths, engine: Engine, plan: PortalPlan) -> ExtraTask:
    """The portal answering for the in-process gateway (through `ThreadSafeControl`)."""

    async def run(gateway: Gateway) -> None:
        control = ThreadSafeControl(gateway, asyncio.get_running_loop())
        await run_portal(paths, engine, plan, control)

    return run


async def run_portal(paths: DataPaths, engine: Engine, plan: PortalPlan,
                     control: GatewayControl) -> None:
    """The portal on its own loop and thread, answering for ``control``'s gateway (the
    in-process one, or every worker's from the supervisor); prints its URL once bound."""

    def build() -> web.Application:
        return create_app(engine=engine, paths=paths, control=control,
                          settings=PortalSettings(public_url=plan.public_url))

    try:
        portal = await PortalThread.start(
            build, lambda app: start_portal(app, plan.listen, plan.tls))
    except OSError as exc:
        raise PortalStartError(
            f"cannot start the portal on {plan.listen}: {exc.strerror or exc}") from None
    try:
        click.echo(f"portal: {shown_url(portal.url, plan.public_address)}")
        # created only once the portal answers, so the printed password is never lost
        password = await first_admin(engine)
        if password is not None:
            click.echo(f"first start: log in as 'admin' with the one-time password {password}")
        await portal.wait()
    finally:
        await portal.stop()


async def first_admin(engine: Engine) -> str | None:
    """The first admin's one-time password (None when an admin exists); a failing store is
    logged, never fatal to the gateway (a busy one is waited for by the writer lock)."""
    try:
        return await asyncio.to_thread(ensure_first_admin, engine)
    except StoreError as exc:
        log.error("cannot create the first admin (%s); add one with "
                  "`sslvpn user add NAME --admin --password-stdin`", exc)
        return None


def ipsec_task(store: AsyncStore, node: str | None = None,
               on_activate: str | None = None) -> ExtraTask:
    """The site-to-site tunnels (on a fleet node, those whose lease it holds); the gateway
    answers `tunnel_status` with theirs."""

    async def run(gateway: Gateway) -> None:
        while True:  # a failed IPsec service must not take the OpenVPN gateway with it
            service = IpsecService(store, node=node, on_activate=on_activate)
            gateway.tunnel_status_providers.append(service.tunnel_status)
            gateway.tunnel_action_handler = service.tunnel_action
            try:
                await service.run()
            except Exception:
                log.exception("the IPsec service failed; starting it again in %.0f s",
                              IPSEC_RESTART_DELAY)
            finally:
                gateway.tunnel_status_providers.remove(service.tunnel_status)
                gateway.tunnel_action_handler = None
            await asyncio.sleep(IPSEC_RESTART_DELAY)

    return run


def metrics_task(paths: DataPaths, store: AsyncStore, listen: str,
                 node: str | None) -> ExtraTask:
    """``GET /metrics`` on ``listen``, served from a thread of its own: a scrape reads the
    gateway's counters in one hop to its loop, the rest in a store thread of its own."""

    async def run(gateway: Gateway) -> None:
        loop = asyncio.get_running_loop()
        own_store = store.companion(threads=1, owner="the metrics endpoint")
        metrics = Metrics(loop=loop, store=own_store)
        metrics.add_loop_source(gateway_source(gateway.counters, node or "default"))
        metrics.add_loop_source(listener_source(gateway.listener_status, node or "default"))
        metrics.add_loop_source(ipsec_source(gateway.tunnel_status))
        health = Health(checks={"store": store_reachable(own_store),
                                **{name: _in_thread(check)
                                   for name, check in gateway.ready_checks.items()}},
                        alive=lambda: on_loop(loop, lambda: True, CHECK_TIMEOUT))
        await serve_metrics(paths, metrics, health, listen)

    return run


def workers_metrics(paths: DataPaths, store: AsyncStore, listen: str, node: str | None,
                    control: WorkersControl) -> Companion:
    """`serve --workers N`: the supervisor serves ``GET /metrics`` for the node, each scrape
    asking every worker for its counters over its control socket (in a thread) and adding
    them up; ready when the store and every worker answer."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        own_store = store.companion(threads=1, owner="the metrics endpoint")
        metrics = Metrics(store=own_store)
        metrics.add_thread_source(gateway_source(control.counters, node or "default"))
        metrics.add_thread_source(listener_source(control.listener_status, node or "default"))
        metrics.add_thread_source(ipsec_source(control.tunnel_status))

        async def workers() -> bool:
            return await asyncio.to_thread(control.all_answer)

        health = Health(checks={"store": store_reachable(own_store), "workers": workers},
                        alive=lambda: on_loop(loop, lambda: True, CHECK_TIMEOUT))
        await serve_metrics(paths, metrics, health, listen)

    return run


async def serve_metrics(paths: DataPaths, metrics: Metrics, health: Health,
                        listen: str) -> None:
    """The metrics and health endpoints on ``listen`` until cancelled, with the store's
    facts and the alarms added to ``metrics``."""
    metrics.add_store_source(store_facts(paths))
    metrics.add_store_source(alarm_metrics)
    try:
        served = await PortalThread.start(lambda: create_ops_app(metrics, health),
                                          lambda app: start_ops(app, listen),
                                          name="sslvpn-metrics")
    except OSError as exc:
        raise PortalStartError(
            f"cannot serve metrics on {listen}: {exc.strerror or exc}") from None
    try:
        click.echo(f"metrics: {served.url}metrics")
        await served.wait()
    finally:
        await served.stop()


def alarms_task(paths: DataPaths, store: AsyncStore, node: str | None) -> ExtraTask:
    """The alarms of a single gateway process: its tunnels and failed handshakes read on
    its loop (cheap reads), the rest in store threads."""

    async def run(gateway: Gateway) -> None:
        async def tunnels() -> list[TunnelStatus]:
            return gateway.tunnel_status()

        async def auth_failures() -> int:
            return sum(gateway.handshakes[result] for result in AUTH_FAILURES)

        await run_alarms(store, paths, node=node or "default", tunnels=tunnels,
                         auth_failures=auth_failures)

    return run


def _in_thread(check: Callable[[], bool]) -> Check:
    """A gateway's readiness check, made by the probe's own thread (a cheap read)."""

    async def run() -> bool:
        return check()

    return run


def heap_snapshot_task(folder: Path) -> ExtraTask:
    """Each SIGUSR2 writes ``<folder>/<ns since epoch>.tracemalloc`` (taken off the loop)."""

    async def run(gateway: Gateway) -> None:
        asked = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR2, asked.set)
        try:
            while True:
                await asked.wait()
                asked.clear()
                path = await asyncio.to_thread(_dump_heap, folder)
                log.info("tracemalloc snapshot written to %s", path)
        finally:
            loop.remove_signal_handler(signal.SIGUSR2)

    return run


def _dump_heap(folder: Path) -> Path:
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"{time.time_ns()}.tracemalloc"
    partial = path.with_suffix(".part")
    tracemalloc.take_snapshot().dump(str(partial))
    os.replace(partial, path)  # readers never see half a snapshot
    return path


async def retire_superseded(paths: DataPaths, engine: Engine,
                            interval: float = RETIRE_INTERVAL) -> None:
    """Every ``interval`` seconds, in a thread (the CA signs the CRL), revoke the renewed
    certificates whose overlap ended: their renewal connected (which the gateway's
    accounting wrote) or their overlap period passed. A failure (the CA key offline, the
    store away) is logged when it starts and when it changes, not every round; meanwhile
    the gateway refuses those certificates anyway, from the store."""
    failing: str | None = None
    while True:
        try:
            retired = await asyncio.to_thread(lifecycle.retire_superseded, engine, paths)
        except Exception as exc:  # a bug too: the gateway goes on, the log says it
            if str(exc) != failing:
                known = isinstance(exc, LifecycleError | WrongPassphrase | StoreError | OSError)
                log.error("renewed certificates not revoked yet: %s", exc, exc_info=not known)
            failing = str(exc)
        else:
            failing = None
            for row in retired:
                log.info("certificate %s revoked: superseded by %s", row.serial,
                         row.superseded_by)
        await asyncio.sleep(interval)


def daily_hooks(paths: DataPaths, engine: Engine) -> tuple[DailyHook, ...]:
    """The CRL re-signed and the retention pass, once a day."""
    return (lambda: refresh_crl_watched(paths, engine), lambda: retention.prune(engine))


def portal_plan(paths: DataPaths, engine: Engine, listen: str | None, cert: Path | None,
                key: Path | None, public_url: str | None) -> PortalPlan:
    """Where the portal listens and with which TLS (the stored settings unless given)."""
    with db.session(engine, write=False) as s:
        settings = queries.get_settings(s)
    listen = listen or settings.portal_listen
    tls = portal_tls(paths, engine, listen, cert=cert, key=key,
                     https=True if cert is not None else None)
    public = settings.public_addresses[0] if settings.public_addresses else None
    return PortalPlan(listen, tls, public_url, public)


@dataclass(frozen=True)
class WorkersPlan:
    """How many workers, and where their OpenVPN listeners are (the supervisor binds the
    UDP sockets)."""

    count: int
    listen: tuple[str, ...]
    port: int | None
    protocols: str | None


async def supervise_node(paths: DataPaths, engine: Engine, workers: WorkersPlan,
                         node: str | None, plan: PortalPlan | None,
                         metrics_at: str | None) -> None:
    """`serve --workers N`: the supervisor binds the workers' UDP sockets (a steered group
    per address, which it holds so that the group never changes), runs the workers and,
    off their loops, the node's revocation sweep (woken by the fleet's signal on
    PostgreSQL), a fleet node's heartbeat (which also ends down nodes' sessions), the daily
    work, the retirement of renewed certificates, and the portal, the metrics and the
    alarms, which see every worker."""
    with db.session(engine, write=False) as s:
        settings = queries.get_settings(s)
    groups: dict[str, list[socket.socket]] = {}
    if (workers.protocols or settings.protocols) in ("udp", "both"):
        groups = steering.bind_groups(workers.listen, workers.port or settings.port,
                                      workers.count)
    try:
        await _supervise(paths, engine, workers.count, node, plan, groups, settings,
                         metrics_at)
    finally:
        for group in groups.values():
            for sock in group:
                sock.close()


async def _supervise(paths: DataPaths, engine: Engine, count: int, node: str | None,
                     plan: PortalPlan | None, groups: dict[str, list[socket.socket]],
                     settings: GatewaySettings, metrics_at: str | None) -> None:
    def command(slot: WorkerSlot) -> list[str]:
        """This very command line, run again as one worker (serve is the last verb, so
        options appended at the end are serve's), told which sockets it inherits."""
        inherited = steering.worker_arguments(groups, slot.index)
        return [*sys.orig_argv, "--worker-slot", str(slot),
                *(arg for pair in inherited for arg in ("--worker-udp", pair))]

    supervisor = Supervisor(count, command, descriptors=lambda slot: [
        group[slot.index].fileno() for group in groups.values()])
    control = WorkersControl([slot.control_socket(paths.control_socket)
                              for slot in supervisor.slots])
    store = AsyncStore(engine)
    sweep = NodeSweep(store, control, node=node)
    companions: list[Companion] = [sweep.run, lambda: retire_superseded(paths, engine),
                                   lambda: run_daily(daily_hooks(paths, engine))]
    conninfo = listen_conninfo(engine.url)
    if conninfo is not None:
        companions.append(lambda: listen_for_signals(conninfo, sweep.wake))
    if node is not None:
        companions.append(lambda: run_heartbeat(store, node, settings, interval=None,
                                                on_removed=supervisor.stop))
    if plan is not None:
        companions.append(lambda: run_portal(paths, engine, plan, control))
    if metrics_at is not None:
        companions.append(workers_metrics(paths, store, metrics_at, node, control))
    tunnels, auth_failures = alarm_inputs(control)
    companions.append(lambda: run_alarms(store, paths, node=node or "default", tunnels=tunnels,
                                         auth_failures=auth_failures))
    try:
        await supervise(supervisor, companions)
    finally:
        await store.close()


def alarm_inputs(control: WorkersControl) -> tuple[Tunnels, Counter]:
    """What the supervisor's alarms read of its workers, each call in a thread: the first
    worker's tunnels (it runs them all) and every worker's refused handshakes added up;
    None while no worker concerned answers (starting, restarted): the round goes on with
    the other rules, and those wait for the next round instead of clearing."""

    async def tunnels() -> list[TunnelStatus] | None:
        try:
            return await asyncio.to_thread(control.tunnel_status)
        except ControlError:
            return None

    async def auth_failures() -> int | None:
        try:
            handshakes = (await asyncio.to_thread(control.counters)).handshakes
        except ControlError:
            return None
        return sum(handshakes.get(result, 0) for result in AUTH_FAILURES)

    return tunnels, auth_failures


def mend_crl(paths: DataPaths, engine: Engine) -> None:
    """At start, CRL files that disagree with the store (a crash during a revocation) are
    published again from it; a failure is logged, since the gateway itself asks the store."""
    mended = crl.mend_crl(paths, engine, actor="service")
    if mended.failure is not None:
        log.error("the CRL files disagree with the store (%s) and were not mended: %s",
                  mended.problem, mended.failure)
    elif mended.problem is not None:
        log.warning("the CRL files disagreed with the store (%s); published them again",
                    mended.problem)


def announce(service: GatewayService) -> None:
    """Tell the operator where clients connect (the portal prints its own URL) and, for a
    node of a fleet, which one it is and the sub-pool it hands out; a worker names itself
    and its slice."""
    worker = service.options.worker
    prefix = "" if worker is None else f"worker {worker}: "
    click.echo(prefix + "gateway: OpenVPN on " + ", ".join(service.listening()))
    if service.options.node is not None and service.gateway is not None:
        click.echo(f"{prefix}node: {service.options.node}, client addresses from "
                   f"{service.gateway.pool.network}")
    elif worker is not None and service.gateway is not None:
        click.echo(f"{prefix}client addresses from {service.gateway.pool.network}")


def _worker_slot(text: str | None) -> WorkerSlot | None:
    if text is None:
        return None
    try:
        return WorkerSlot.parse(text)
    except ValueError as exc:
        raise click.UsageError(f"--worker-slot: {exc}") from None


@click.command("serve")
@click.option("--listen", "listen", multiple=True,
              help="Address to listen on (repeatable; default all IPv4 and IPv6 addresses).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Override the port chosen at init.")
@click.option("--proto", type=click.Choice(["udp", "tcp", "both"]), default=None,
              help="Override the protocols chosen at init.")
@click.option("--portal-listen", default=None, metavar="HOST:PORT",
              help="Where the portal listens (default: the stored setting, 127.0.0.1:8080); "
                   "HTTPS unless bound to loopback.")
@click.option("--portal-cert", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Portal certificate (PEM); default: one issued from our CA.")
@click.option("--portal-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Key of --portal-cert (PEM).")
@click.option("--public-url", default=None,
              help="Base URL phones reach the portal at (put in import links).")
@click.option("--no-portal", is_flag=True,
              help="Serve no portal (e.g. `sslvpn portal` runs on another host).")
@click.option("--node", envvar="SSLVPN_NODE", default=None, metavar="NAME",
              help="Run as node NAME of a fleet (see `sslvpn node`): serve its sub-pool and "
                   "write its heartbeat. Default: the single gateway.")
@click.option("--on-activate", default=None, metavar="CMD",
              help="Shell command run when this node takes an IPsec tunnel (to point the VPC "
                   "route table at it), unless the VPN gateway has its own; SSLVPN_TUNNEL, "
                   "SSLVPN_NODE, SSLVPN_LOCAL_CIDRS and SSLVPN_PEER_CIDRS in its environment.")
@click.option("--metrics-listen", "metrics_listen_at", default=None, metavar="HOST:PORT",
              help="Serve Prometheus metrics at http://HOST:PORT/metrics (a bare PORT: on "
                   "127.0.0.1). Default: off.")
@click.option("--tun-name", default="sslvpn%d", show_default=True)
@click.option("--connect-freq-initial", "connect_freq", nargs=2,
              type=(click.IntRange(1), click.FloatRange(min=0.001)), default=None,
              metavar="N SECONDS",
              help="Answer at most N new UDP clients per SECONDS (OpenVPN's option; default "
                   "100 10).")
@click.option("--half-open-per-address", type=click.IntRange(1, HALF_OPEN_MAX),
              default=HALF_OPEN_PER_ADDRESS, show_default=True, metavar="N",
              help="New OpenVPN clients one source address (an IPv6 /64) may hold before they "
                   "authenticate; raise it for offices behind one NAT address.")
@click.option("--no-network-config", is_flag=True,
              help="Leave addresses, forwarding and SNAT to the operator.")
@click.option("--tracemalloc", "trace_frames", type=click.IntRange(1, 100), default=None,
              envvar="SSLVPN_TRACEMALLOC", metavar="FRAMES",
              help="Trace Python allocations (FRAMES deep; slows the gateway) and write a "
                   "snapshot to DATA_DIR/tracemalloc/ on each SIGUSR2, to hunt leaks.")
@click.option("--workers", type=click.IntRange(1), default=usable_cores,
              show_default="the usable cores",
              help="Gateway processes, one per core: a supervisor runs N workers, each with "
                   "its own sockets on the port (SO_REUSEPORT), TUN and slice of the pool; "
                   "1 keeps one process.")
@click.option("--worker-slot", default=None, hidden=True, metavar="INDEX/COUNT",
              help="Internal: run as one worker of `--workers` (the supervisor passes it).")
@click.option("--worker-udp", multiple=True, hidden=True, metavar="HOST=FD",
              help="Internal: a worker's inherited UDP socket on HOST (the supervisor's).")
@allow_insecure_permissions
@click.option("-v", "--verbose", is_flag=True, help="Debug log output.")
@log_format_option
@click.pass_context
@one_line_errors
def serve_command(ctx: click.Context, listen: tuple[str, ...], port: int | None,
                  proto: str | None, portal_listen: str | None, portal_cert: Path | None,
                  portal_key: Path | None, public_url: str | None, no_portal: bool,
                  node: str | None, on_activate: str | None, metrics_listen_at: str | None,
                  tun_name: str,
                  connect_freq: tuple[int, float] | None, half_open_per_address: int,
                  no_network_config: bool, trace_frames: int | None, workers: int,
                  worker_slot: str | None, worker_udp: tuple[str, ...], allow_insecure: bool,
                  verbose: bool,
                  log_format: str) -> None:
    """Run the gateway (OpenVPN over UDP and TCP, IPsec tunnels) and the portal until
    SIGTERM or Ctrl-C; refuses to start on what `sslvpn check` would report."""
    if (portal_cert is None) != (portal_key is None):
        raise click.UsageError("give both --portal-cert and --portal-key")
    try:
        metrics_at = None if metrics_listen_at is None else metrics_listen(metrics_listen_at)
    except ValueError as exc:
        raise click.UsageError(f"--metrics-listen: {exc}") from None
    log_to_stderr(verbose=verbose, log_format=log_format, node=node or "default")
    paths = paths_of(ctx)
    require_data_folder(ctx, write=True)
    slot = _worker_slot(worker_slot)
    # one gateway per data folder: locked before the store, the socket, the TUN and nft (by
    # the supervisor when there are workers: they run only while it holds the lock)
    with (instance.exclusive(paths.serve_lock) if slot is None else contextlib.nullcontext(),
          store(ctx, write=True) as engine):
        if slot is None:
            given = (portal_cert, portal_key) if portal_cert and portal_key else None
            preflight(paths, engine, given_portal=given, allow_insecure=allow_insecure)
            retention.ensure_incremental_vacuum(engine)  # once, before anyone is served
            mend_crl(paths, engine)
        plan = None if no_portal or slot is not None else portal_plan(
            paths, engine, portal_listen, portal_cert, portal_key, public_url)
        if slot is None and workers > 1:
            try:
                run(supervise_node(paths, engine, WorkersPlan(
                    workers, listen or ServeOptions.listen, port, proto), node, plan, metrics_at))
            except PortalStartError as exc:
                raise click.ClickException(str(exc)) from None
            return
        if slot is not None:
            stop_with_supervisor()
        gateway_store = AsyncStore(engine)  # the gateway's only way to the store
        # IPsec in one process only (the first worker); the node's periodic work, metrics
        # and alarms in the supervisor, if any
        first = slot is None or slot.first
        extra = [ipsec_task(gateway_store, node, on_activate)] if first else []
        if slot is None:
            extra.append(lambda _gateway: retire_superseded(paths, engine))
            extra.append(alarms_task(paths, gateway_store, node))
        if first:  # with workers, NotifyAccess=all takes the first one's word
            extra.append(lambda _gateway: notify_systemd("serving OpenVPN clients"))
        if metrics_at is not None and slot is None:  # the supervisor serves the workers
            extra.append(metrics_task(paths, gateway_store, metrics_at, node))
        if trace_frames is not None:
            tracemalloc.start(trace_frames)
            extra.append(heap_snapshot_task(paths.heap_snapshots))
        if plan is not None:
            extra.append(portal_task(paths, engine, plan))
        options = ServeOptions(
            listen=listen or ServeOptions.listen,
            port=port,
            protocols=proto,
            tun_name=tun_name,
            node=node,
            configure_network=not no_network_config,
            connect_freq=connect_freq,
            half_open_per_address=half_open_per_address,
            extra_tasks=tuple(extra),
            daily_hooks=daily_hooks(paths, engine) if slot is None else (),
            sweep_interval=2.0 if slot is None else None,  # the supervisor sweeps for workers
            on_ready=announce,
            worker=slot,
            udp_sockets=steering.inherit(worker_udp) if slot is not None else None,
        )
        try:  # on uvloop when installed
            run(serve(GatewayService(paths, gateway_store, options)))
        except (OSError, NetconfError, TlsGroupsError) as exc:  # no TUN (not root), port
            # taken, ip failed, stored tls-groups this OpenSSL refuses
            raise click.ClickException(f"cannot start the gateway: {exc}") from None
        except ExceptionGroup as group:  # a companion task failed: the portal's port is
            known, _ = group.split((PortalStartError, TunLostError))  # taken, the TUN is gone
            if known is None:
                raise
            raise click.ClickException(str(known.exceptions[0])) from None


COMMANDS: list[click.Command] = [serve_command]
