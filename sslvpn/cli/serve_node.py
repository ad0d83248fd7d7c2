"""The node-wide companions of `sslvpn serve`: portal, metrics, alarms, daily work, workers.

What runs beside the packets rather than with them, and the supervisor of ``--workers N``
that runs all of it off the workers' loops: the portal (``web``, on its own event loop in
its own thread, with a `GatewayControl` for the in-process gateway or every worker), the
metrics endpoint, the alarms, the daily CRL refresh and retention pass, the revocation of
renewed certificates whose overlap ended, and the CRL files mended at start. It lives apart
from `sslvpn.cli.serve` so that a worker, which runs none of it, never imports the portal,
aiohttp or the metrics (about a third of a process's memory, and its start-up time).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import sys
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
from sslvpn.cli.serve import PortalStartError
from sslvpn.config import DataPaths
from sslvpn.runtime import steering
from sslvpn.runtime.alarms import Counter, Tunnels, alarm_metrics, run_alarms
from sslvpn.runtime.control import GatewayControl, ThreadSafeControl, TunnelStatus
from sslvpn.runtime.control_server import ControlError
from sslvpn.runtime.fleet_signal import listen_conninfo, listen_for_signals
from sslvpn.runtime.gateway import Gateway
from sslvpn.runtime.metrics import (
    Metrics,
    gateway_source,
    ipsec_source,
    listener_source,
    on_loop,
    store_facts,
)
from sslvpn.runtime.service import DailyHook, ExtraTask, run_daily, run_heartbeat
from sslvpn.runtime.workers import Companion, Supervisor, WorkerSlot, supervise
from sslvpn.runtime.workers_control import NodeSweep, WorkersControl
from sslvpn.store import StoreError, db, queries, retention
from sslvpn.store.async_store import AsyncStore
from sslvpn.store.models import GatewaySettings
from web.app import create_app, ensure_first_admin, start_portal
from web.health import CHECK_TIMEOUT, Check, Health, store_reachable
from web.ops import create_ops_app, start_ops
from web.portal import PortalSettings
from web.portal_thread import PortalThread
from web.tls import portal_tls

log = logging.getLogger(__name__)

AUTH_FAILURES = ("auth_failed", "revoked", "expired")  # handshake results an alarm counts
RETIRE_INTERVAL = 5.0  # seconds between looks for renewed certificates to revoke

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


def beside_gateway(paths: DataPaths, engine: Engine, store: AsyncStore, node: str | None,
                   metrics_at: str | None, plan: PortalPlan | None) -> list[ExtraTask]:
    """What one gateway process without workers runs beside its gateway: the retirement of
    renewed certificates, the alarms and, when asked for, the metrics and the portal."""
    tasks: list[ExtraTask] = [lambda _gateway: retire_superseded(paths, engine),
                              alarms_task(paths, store, node)]
    if metrics_at is not None:
        tasks.append(metrics_task(paths, store, metrics_at, node))
    if plan is not None:
        tasks.append(portal_task(paths, engine, plan))
    return tasks


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


