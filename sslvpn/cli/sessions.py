"""`sslvpn sessions` and `sslvpn kick`: list and end live sessions.

``sessions --json`` prints ``{"sessions": [...], "listeners": {...}}``: the sessions, and
what this host's OpenVPN listeners hold and refused (clients that have not authenticated
yet per transport, refusals by reason, the most refused sources, the caps in force; null
when no gateway runs here); the table starts with the same in one line.

In a fleet (a store with nodes) both go through the store, so any host sees every node's
sessions, each marked with its node, and a kick reaches the node holding the session (that
node ends it at once on PostgreSQL, at its next sweep otherwise); ``kick`` waits up to
`KICK_WAIT` seconds for the end to show in the store. A gateway running on this host adds
what only it knows of its own sessions (idle time, fresh byte counters). With no node in the
store, the single implicit node is asked over its control socket, as always, and with
`serve --workers` over each worker's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from datetime import UTC, datetime
from typing import Any

import click
from sqlalchemy import Engine

from sslvpn.cli.setup import one_line_errors, paths_of, store
from sslvpn.runtime import fleet_sessions
from sslvpn.runtime.control import (
    ListenerStatus,
    SessionInfo,
    client_summary,
    combined,
    older_clients,
    parse_threshold,
)
from sslvpn.runtime.control_server import ControlClient, ControlError
from sslvpn.runtime.workers import other_control_sockets
from sslvpn.store import db

KICK_WAIT = 5.0  # seconds `kick` waits for the node holding a session to end it
_POLL = 0.1


def _client(ctx: click.Context) -> ControlClient:
    return ControlClient(paths_of(ctx).control_socket)


def _workers(ctx: click.Context) -> list[ControlClient]:
    """The other workers of a `serve --workers` on this host (none for one process)."""
    return [ControlClient(path) for path in other_control_sockets(paths_of(ctx).control_socket)]


def _local_sessions(ctx: click.Context) -> list[SessionInfo]:
    """Every local worker's sessions; ControlError when the gateway is not running (a
    worker being restarted is skipped: its clients are reconnecting)."""
    found = _client(ctx).list_sessions()
    for worker in _workers(ctx):
        with contextlib.suppress(ControlError):
            found += worker.list_sessions()
    return found


def _local_listeners(ctx: click.Context) -> ListenerStatus | None:
    """What this host's OpenVPN listeners hold and refused, every worker's added up (None:
    no gateway runs here)."""
    try:
        found = [_client(ctx).listener_status()]
    except ControlError:
        return None
    for worker in _workers(ctx):
        with contextlib.suppress(ControlError):
            found.append(worker.listener_status())
    return combined(found)


def _live_sessions(ctx: click.Context) -> tuple[list[SessionInfo], bool]:
    """The live sessions, and whether they are a fleet's (read from the store)."""
    with store(ctx, write=False) as engine, db.session(engine, write=False) as s:
        fleet = fleet_sessions.fleet_sessions(s)
    if fleet is None:
        try:
            return _local_sessions(ctx), False
        except ControlError as exc:
            raise click.ClickException(str(exc)) from None
    try:
        local = _local_sessions(ctx)
    except ControlError:  # no gateway on this host: the store's view is all there is
        local = []
    return fleet_sessions.with_local(fleet, local), True


def _version(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Refuse a malformed version before asking any gateway."""
    if value is not None:
        try:
            parse_threshold(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


@click.command("sessions")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--older-than", "older", metavar="VERSION", callback=_version,
              help="Only clients older than VERSION (e.g. 2.6) or that sent no version.")
@click.pass_context
@one_line_errors
def sessions_command(ctx: click.Context, as_json: bool, older: str | None) -> None:
    """List the live sessions: every node's in a fleet, else the running gateway's, with
    the client software each one reported (OpenVPN version, platform, GUI)."""
    sessions, fleet = _live_sessions(ctx)
    listeners = _local_listeners(ctx)
    sessions = older_clients(sessions, older)
    if as_json:
        rows: list[dict[str, Any]] = [
            {**s.__dict__, "connected_at": s.connected_at.isoformat(),
             "last_activity": s.last_activity.isoformat() if s.last_activity else None}
            for s in sessions
        ]
        shown = None if listeners is None else dataclasses.asdict(listeners)
        click.echo(json.dumps({"sessions": rows, "listeners": shown}, indent=2))
        return
    if listeners is not None:
        click.echo(listener_summary(listeners))
    if not sessions:
        click.echo("no live sessions" + (f" of clients older than {older}" if older else ""))
        return
    now = datetime.now(UTC)
    node = f"{'NODE':<12} " if fleet else ""
    click.echo(f"{'SESSION':<14} {node}{'USER':<14} {'DEVICE':<10} {'REAL ADDRESS':<22} "
               f"{'VPN ADDRESS':<15} {'SINCE (UTC)':<20} {'IN':>10} {'OUT':>10} {'IDLE':>6}  "
               "CLIENT")
    for s in sessions:
        idle = "-" if s.last_activity is None else (
            f"{max(0, int((now - s.last_activity).total_seconds()))}s")
        node = f"{s.node or '-':<12} " if fleet else ""
        click.echo(f"{s.session_id:<14} {node}{s.user:<14} {s.device or '-':<10} "
                   f"{s.real_address:<22} {s.vpn_address:<15} "
                   f"{s.connected_at.strftime('%Y-%m-%d %H:%M:%S'):<20} "
                   f"{_human_bytes(s.bytes_in):>10} {_human_bytes(s.bytes_out):>10} {idle:>6}  "
                   f"{client_summary(s)}")


@click.command("kick")
@click.argument("target")
@click.option("--reason", default="kicked by admin", show_default=True)
@click.pass_context
@one_line_errors
def kick_command(ctx: click.Context, target: str, reason: str) -> None:
    """End a live session, by session id or every session of a user (on any node)."""
    with store(ctx, write=False) as engine, db.session(engine, write=False) as s:
        fleet = fleet_sessions.in_fleet(s)
    count = _kick_in_fleet(ctx, target, reason) if fleet else _kick_here(ctx, target, reason)
    if count is None:
        return
    if count == 0:
        raise click.ClickException(f"no live session or user named {target!r}")
    click.echo(f"ended {count} session{_s(count)}")


def _kick_in_fleet(ctx: click.Context, target: str, reason: str) -> int | None:
    """Ask through the store and wait for the nodes; None when some did not end in time
    (said here)."""
    with store(ctx, write=True) as engine:
        with db.session(engine, write=True) as s:
            asked = fleet_sessions.request_kick(s, target=target, reason=reason) or []
        left = _wait_for_end(engine, asked)
    if left:
        click.echo(f"asked {len(asked)} session{_s(len(asked))} to end; {len(left)} still "
                   f"live after {KICK_WAIT:g} s (is its node down? see `sslvpn node list`)")
        return None
    return len(asked)


def _kick_here(ctx: click.Context, target: str, reason: str) -> int:
    """The session (or the user's sessions) on whichever local worker holds it."""
    try:
        ended = _kick_on(_client(ctx), target, reason)
    except ControlError as exc:
        raise click.ClickException(str(exc)) from None
    for worker in _workers(ctx):
        with contextlib.suppress(ControlError):  # one being restarted holds no session
            ended += _kick_on(worker, target, reason)
    return ended


def _kick_on(client: ControlClient, target: str, reason: str) -> int:
    return 1 if client.kick(target, reason) else client.kick_user(target, reason)


def _wait_for_end(engine: Engine, session_ids: list[str]) -> list[str]:
    """The asked sessions still live after at most `KICK_WAIT` seconds."""
    deadline = time.monotonic() + KICK_WAIT
    while True:
        with db.session(engine, write=False) as s:
            left = fleet_sessions.still_live(s, session_ids=session_ids)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(_POLL)


def listener_summary(status: ListenerStatus) -> str:
    """One line on what this host's listeners hold and refused."""
    half_open = ", ".join(f"{proto} {n}" for proto, n in status.half_open.items())
    refused = ", ".join(f"{reason} {n}" for reason, n in status.refused.items()) or "none"
    top = ", ".join(f"{host} {n}" for host, n in status.top_refused_sources.items())
    budget = status.limits.get("half_open_per_address")
    if budget is not None:
        half_open += f"; at most {budget} per source"
    return (f"clients held: {status.clients} (not authenticated yet: {half_open}); refused: "
            f"{refused}" + (f"; most refused: {top}" if top else ""))


def _s(count: int) -> str:
    return "s" if count != 1 else ""


def _human_bytes(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    value, unit = float(count) / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


COMMANDS: list[click.Command] = [sessions_command, kick_command]
