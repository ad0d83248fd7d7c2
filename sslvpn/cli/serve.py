"""`sslvpn serve`: run the gateway.

``serve`` is the composition root of the running gateway: it opens the store and hands the
runtime its long-running companions: the IPsec service (site-to-site tunnels; their status
answered through the gateway's control) and, in one process or in the supervisor of
workers, the node-wide ones of `sslvpn.cli.serve_node` (the portal, metrics, alarms, daily
CRL refresh and retention pass, retirement of renewed certificates); then it runs until
SIGTERM/SIGINT.
With ``--workers N`` (N > 1) this process becomes the supervisor: the workers carry the
packets (the first one also the IPsec tunnels), and the supervisor runs the rest off their
loops, answering for every worker (`sslvpn.runtime.workers_control`). A worker imports
`serve_node` never: it runs none of it and would carry the portal's modules for nothing.
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
import time
import tracemalloc
from pathlib import Path

import click

from sslvpn.cli.check import allow_insecure_permissions, preflight
from sslvpn.cli.setup import (
    log_format_option,
    log_to_stderr,
    one_line_errors,
    paths_of,
    require_data_folder,
    store,
)
from sslvpn.openvpn.tls import TlsGroupsError
from sslvpn.runtime import instance, steering
from sslvpn.runtime.admission import HALF_OPEN_MAX, HALF_OPEN_PER_ADDRESS
from sslvpn.runtime.gateway import Gateway
from sslvpn.runtime.ipsec_service import IpsecService
from sslvpn.runtime.netconf import NetconfError
from sslvpn.runtime.service import (
    ExtraTask,
    GatewayService,
    ServeOptions,
    run,
    serve,
)
from sslvpn.runtime.systemd import notify_systemd
from sslvpn.runtime.tun_keeper import TunLostError
from sslvpn.runtime.workers import WorkerSlot, stop_with_supervisor, usable_cores
from sslvpn.store import retention
from sslvpn.store.async_store import AsyncStore

log = logging.getLogger(__name__)

IPSEC_RESTART_DELAY = 5.0  # seconds before an IPsec service that failed is started afresh


class PortalStartError(Exception):
    """The portal could not bind its address (one line for the operator)."""


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
    slot = _worker_slot(worker_slot)
    if slot is None:  # a worker runs none of the node-wide work and never imports it
        from sslvpn.cli import serve_node
        from web.ops import metrics_listen
    try:
        metrics_at = (None if metrics_listen_at is None or slot is not None
                      else metrics_listen(metrics_listen_at))
    except ValueError as exc:
        raise click.UsageError(f"--metrics-listen: {exc}") from None
    log_to_stderr(verbose=verbose, log_format=log_format, node=node or "default")
    paths = paths_of(ctx)
    require_data_folder(ctx, write=True)
    # one gateway per data folder: locked before the store, the socket, the TUN and nft (by
    # the supervisor when there are workers: they run only while it holds the lock)
    with (instance.exclusive(paths.serve_lock) if slot is None else contextlib.nullcontext(),
          store(ctx, write=True) as engine):
        if slot is None:
            given = (portal_cert, portal_key) if portal_cert and portal_key else None
            preflight(paths, engine, given_portal=given, allow_insecure=allow_insecure)
            retention.ensure_incremental_vacuum(engine)  # once, before anyone is served
            serve_node.mend_crl(paths, engine)
        plan = None if no_portal or slot is not None else serve_node.portal_plan(
            paths, engine, portal_listen, portal_cert, portal_key, public_url)
        if slot is None and workers > 1:
            try:
                run(serve_node.supervise_node(paths, engine, serve_node.WorkersPlan(
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
            extra += serve_node.beside_gateway(paths, engine, gateway_store, node, metrics_at,
                                               plan)
        if first:  # with workers, NotifyAccess=all takes the first one's word
            extra.append(lambda _gateway: notify_systemd("serving OpenVPN clients"))
        if trace_frames is not None:
            tracemalloc.start(trace_frames)
            extra.append(heap_snapshot_task(paths.heap_snapshots))
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
            daily_hooks=serve_node.daily_hooks(paths, engine) if slot is None else (),
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

