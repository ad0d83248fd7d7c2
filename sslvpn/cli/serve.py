"""`sslvpn serve, sessions and kick`: run the gateway, list and end its live sessions.

``serve`` is the composition root of the running gateway: it opens the store, hands the
runtime the daily CRL refresh from ``client_profiles`` and any extra long-running tasks
(``EXTRA_TASKS``: the portal registers itself there), then runs until SIGTERM/SIGINT.
``sessions`` and ``kick`` talk to a running gateway over its control socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click
from sqlalchemy import Engine

from client_profiles import lifecycle
from sslvpn.cli.setup import one_line_errors, paths_of, store
from sslvpn.config import DataPaths
from sslvpn.runtime.control_server import ControlClient, ControlError
from sslvpn.runtime.netconf import NetconfError
from sslvpn.runtime.service import ExtraTask, GatewayService, ServeOptions, serve

# Composition point for other faces: each entry builds one long-running task from the
# serve context (data paths, engine, the --portal-listen value) and is given the gateway.
ExtraTaskFactory = Callable[[DataPaths, Engine, str | None], ExtraTask]
EXTRA_TASKS: list[ExtraTaskFactory] = []


def _human_bytes(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    value, unit = float(count) / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


@click.command("serve")
@click.option("--listen", "listen", multiple=True,
              help="Address to listen on (repeatable; default all IPv4 and IPv6 addresses).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Override the port chosen at init.")
@click.option("--proto", type=click.Choice(["udp", "tcp", "both"]), default=None,
              help="Override the protocols chosen at init.")
@click.option("--portal-listen", default=None, metavar="HOST:PORT",
              help="Where the portal listens (default: the stored setting).")
@click.option("--tun-name", default="sslvpn%d", show_default=True)
@click.option("--no-network-config", is_flag=True,
              help="Leave addresses, forwarding and SNAT to the operator.")
@click.option("-v", "--verbose", is_flag=True, help="Debug log output.")
@click.pass_context
@one_line_errors
def serve_command(ctx: click.Context, listen: tuple[str, ...], port: int | None,
                  proto: str | None, portal_listen: str | None, tun_name: str,
                  no_network_config: bool, verbose: bool) -> None:
    """Run the gateway (OpenVPN over UDP and TCP) until SIGTERM or Ctrl-C."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    paths = paths_of(ctx)
    with store(ctx) as engine:
        options = ServeOptions(
            listen=listen or ServeOptions.listen,
            port=port,
            protocols=proto,
            tun_name=tun_name,
            configure_network=not no_network_config,
            extra_tasks=tuple(factory(paths, engine, portal_listen) for factory in EXTRA_TASKS),
            daily_hooks=(lambda: lifecycle.refresh_crl(paths, engine),),
        )
        try:
            asyncio.run(serve(GatewayService(paths, engine, options)))
        except (OSError, NetconfError) as exc:  # no TUN (not root), port taken, ip failed
            raise click.ClickException(f"cannot start the gateway: {exc}") from None


def _client(ctx: click.Context) -> ControlClient:
    return ControlClient(paths_of(ctx).control_socket)


@click.command("sessions")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def sessions_command(ctx: click.Context, as_json: bool) -> None:
    """List the live sessions of the running gateway."""
    try:
        sessions = _client(ctx).list_sessions()
    except ControlError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        rows: list[dict[str, Any]] = [
            {**s.__dict__, "connected_at": s.connected_at.isoformat(),
             "last_activity": s.last_activity.isoformat()} for s in sessions
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    if not sessions:
        click.echo("no live sessions")
        return
    now = datetime.now(UTC)
    click.echo(f"{'SESSION':<14} {'USER':<14} {'DEVICE':<10} {'REAL ADDRESS':<22} "
               f"{'VPN ADDRESS':<15} {'SINCE (UTC)':<20} {'IN':>10} {'OUT':>10} {'IDLE':>6}")
    for s in sessions:
        idle = max(0, int((now - s.last_activity).total_seconds()))
        click.echo(f"{s.session_id:<14} {s.user:<14} {s.device or '-':<10} "
                   f"{s.real_address:<22} {s.vpn_address:<15} "
                   f"{s.connected_at.strftime('%Y-%m-%d %H:%M:%S'):<20} "
                   f"{_human_bytes(s.bytes_in):>10} {_human_bytes(s.bytes_out):>10} {idle:>5}s")


@click.command("kick")
@click.argument("target")
@click.option("--reason", default="kicked by admin", show_default=True)
@click.pass_context
def kick_command(ctx: click.Context, target: str, reason: str) -> None:
    """End a live session, by session id or every session of a user."""
    client = _client(ctx)
    try:
        count = 1 if client.kick(target, reason) else client.kick_user(target, reason)
    except ControlError as exc:
        raise click.ClickException(str(exc)) from None
    if count == 0:
        raise click.ClickException(f"no live session or user named {target!r}")
    click.echo(f"ended {count} session{'s' if count != 1 else ''}")


COMMANDS: list[click.Command] = [serve_command, sessions_command, kick_command]
