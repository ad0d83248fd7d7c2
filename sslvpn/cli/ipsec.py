"""`sslvpn ipsec` commands: VPN gateways, customer gateways, tunnels, SPD policies, status.

Each command validates what the operator typed (pure checks in `sslvpn.ipsec.policy`,
`sslvpn.ipsec.tunnel_settings` and the IKE proposal parser), then writes the store. Every
failure prints one line on stderr and exits 1. Tunnels run inside `sslvpn serve`; `up`/`down`
flip the tunnel's admin switch in the store, which the running IPsec service follows (as it
follows `tunnel set`); `status` and `tunnel rekey|restart|down` ask the running gateway over
its control socket.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from sqlmodel import Session

from sslvpn import keyfiles
from sslvpn.cli.context import CliContext
from sslvpn.cli.setup import one_line_errors, store
from sslvpn.config import DataPaths
from sslvpn.ipsec.bandwidth import format_rate, parse_rate
from sslvpn.ipsec.ike.constants import ProtocolId
from sslvpn.ipsec.ike.proposals import DEFAULT_KEYWORD, parse_proposals
from sslvpn.ipsec.peer_config import FORMATS, PeerTunnel, render
from sslvpn.ipsec.policy import (
    PolicyError,
    check_bandwidth,
    check_name,
    check_policy,
    check_psk,
    check_unicast_address,
    parse_cidr,
)
from sslvpn.ipsec.tunnel_settings import DPD_ACTIONS, TunnelSettings, format_duration
from sslvpn.runtime.control import TunnelStatus
from sslvpn.runtime.control_server import ControlClient, ControlError
from sslvpn.store import ipsec_queries as q
from sslvpn.store.db import session

DEFAULT_IKE = DEFAULT_ESP = DEFAULT_KEYWORD  # every suite we support, strongest first
PSK_FILE = keyfiles.FileRole("the tunnel's pre-shared key", "UTF-8 text on one line",
                             "give --psk-file a text file")


@contextmanager
def _store(ctx: click.Context, *, write: bool) -> Iterator[Session]:
    """A session on the upgraded store of the data folder (the same checks as every command)."""
    with store(ctx, write=write) as engine, session(engine, write=write) as s:
        yield s


def _table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@click.group()
def ipsec() -> None:
    """Site-to-site IPsec: gateways, customer gateways, tunnels and policies."""


# -- VPN gateways --------------------------------------------------------------------------
@ipsec.group()
def gateway() -> None:
    """Our side of the tunnels (a public address in the VPC)."""


@gateway.command("add")
@click.argument("name")
@click.option("--public-address", required=True, help="Our public IP, the IKE endpoint.")
@click.option("--bandwidth", default=None, help="Cap for all its tunnels, e.g. 100M or 1G.")
@click.option("--node", "nodes", multiple=True, metavar="NAME",
              help="A fleet node that may carry its tunnels (repeatable); one holds each "
                   "tunnel at a time and another takes it over when it dies. Default: the "
                   "single gateway.")
@click.option("--on-activate", default=None, metavar="CMD",
              help="Shell command a node runs when it takes one of its tunnels (instead of "
                   "serve's --on-activate), e.g. to point the VPC route table at it.")
@click.pass_context
@one_line_errors
def gateway_add(ctx: click.Context, name: str, public_address: str, bandwidth: str | None,
                nodes: tuple[str, ...], on_activate: str | None) -> None:
    """Create a VPN gateway."""
    check_name(name, "VPN gateway")
    for node in nodes:
        check_name(node, "node")
    address = check_unicast_address(public_address, what="public address")
    bps = check_bandwidth(parse_rate(bandwidth)) if bandwidth else None
    with _store(ctx, write=True) as s:
        q.create_vpn_gateway(s, name=name, public_address=address, bandwidth_bps=bps,
                             nodes=nodes, on_activate=on_activate or None)
    where = f", on nodes {', '.join(nodes)}" if nodes else ""
    click.echo(f"VPN gateway {name} at {address}, bandwidth {format_rate(bps)}{where}")


@gateway.command("list")
@click.pass_context
@one_line_errors
def gateway_list(ctx: click.Context) -> None:
    """List VPN gateways."""
    with _store(ctx, write=False) as s:
        rows = [
            (g.name, g.public_address, format_rate(g.bandwidth_bps), ",".join(g.nodes) or "-")
            for g in q.list_vpn_gateways(s)
        ]
    _table(rows, ("NAME", "PUBLIC ADDRESS", "BANDWIDTH", "NODES"))


@gateway.command("delete")
@click.argument("name")
@click.pass_context
@one_line_errors
def gateway_delete(ctx: click.Context, name: str) -> None:
    """Delete a VPN gateway that has no tunnels."""
    with _store(ctx, write=True) as s:
        q.delete_vpn_gateway(s, name=name)
    click.echo(f"deleted VPN gateway {name}")


# -- customer gateways ---------------------------------------------------------------------
@ipsec.group("customer-gateway")
def customer_gateway() -> None:
    """The peers: one per data centre, by public address."""


@customer_gateway.command("add")
@click.argument("name")
@click.option("--address", required=True, help="The peer's public IP.")
@click.pass_context
@one_line_errors
def customer_gateway_add(ctx: click.Context, name: str, address: str) -> None:
    """Create a customer gateway."""
    check_name(name, "customer gateway")
    normalised = check_unicast_address(address, what="customer gateway address")
    with _store(ctx, write=True) as s:
        q.create_customer_gateway(s, name=name, address=normalised)
    click.echo(f"customer gateway {name} at {normalised}")


@customer_gateway.command("list")
@click.pass_context
@one_line_errors
def customer_gateway_list(ctx: click.Context) -> None:
    """List customer gateways."""
    with _store(ctx, write=False) as s:
        rows = [(c.name, c.address) for c in q.list_customer_gateways(s)]
    _table(rows, ("NAME", "ADDRESS"))


@customer_gateway.command("delete")
@click.argument("name")
@click.pass_context
@one_line_errors
def customer_gateway_delete(ctx: click.Context, name: str) -> None:
    """Delete a customer gateway that has no tunnels."""
    with _store(ctx, write=True) as s:
        q.delete_customer_gateway(s, name=name)
    click.echo(f"deleted customer gateway {name}")


# -- tunnels -------------------------------------------------------------------------------
@ipsec.group()
def tunnel() -> None:
    """IKEv2 tunnels between a VPN gateway and a customer gateway."""


def _read_psk(psk_stdin: bool, psk_file: Path | None) -> str:
    if psk_stdin == (psk_file is not None):
        raise PolicyError("give the pre-shared key with exactly one of --psk-stdin or --psk-file")
    if psk_stdin or psk_file is None:
        text = sys.stdin.read()
    else:
        text = keyfiles.read_file(psk_file, PSK_FILE, lambda data: data.decode("utf-8"))
    return check_psk(text.rstrip("\r\n"))


_TIMER_OPTIONS: list[tuple[str, str]] = [
    ("--dpd-delay", "Probe the peer after this much silence (0: never) [30s]."),
    ("--dpd-timeout", "Declare the peer dead when a probe is unanswered this long [30s]."),
    ("--dpd-action", f"On a dead peer: {' | '.join(DPD_ACTIONS)} [restart]."),
    ("--ike-lifetime", "IKE SA lifetime [3h]."),
    ("--child-lifetime", "CHILD_SA lifetime [1h]."),
    ("--rekey-margin", "Rekey this long before an SA ends [9m]."),
    ("--rekey-fuzz", "Plus up to this % of the margin, at random [100]."),
    ("--retransmit-timeout", "First retransmission after [4s]."),
    ("--retransmit-tries", "Retransmissions before giving up [5]."),
    ("--retransmit-base", "Back-off factor per retransmission [1.8]."),
    ("--retransmit-limit", "Longest wait between retransmissions (0: none) [20s]."),
    ("--fragment-size", "Largest IKE datagram in bytes; larger messages go as RFC 7383 "
                        "fragments (lower it on small-MTU paths) [1280]."),
]
F = Callable[..., Any]


def _tunnel_options(func: F) -> F:
    """Timers (strongSwan names, durations like 30s, 5m, 1h), the IKE fragment size and
    the start action."""
    for flag, text in reversed(_TIMER_OPTIONS):
        func = click.option(flag, default=None, help=text)(func)
    func = click.option("--on-traffic", "start", flag_value="trap",
                        help="Start on the first packet for the peer.")(func)
    func = click.option("--wait", "start", flag_value="wait", help="Wait for the peer.")(func)
    return click.option("--initiate", "start", flag_value="initiate",
                        help="Start the tunnel at once (the default for a new tunnel).")(func)


def _settings(base: TunnelSettings, given: dict[str, str | None]) -> TunnelSettings:
    return base.changed(**{k: v for k, v in given.items() if v is not None})


def describe(start: str, t: TunnelSettings) -> str:
    """One line of a tunnel's settings, in the notation the options take."""
    d = format_duration
    return (f"start {start}, dpd {d(t.dpd_delay)}/{d(t.dpd_timeout)} {t.dpd_action}, "
            f"ike {d(t.ike_lifetime)}, child {d(t.child_lifetime)}, rekey margin "
            f"{d(t.rekey_margin)} +{t.rekey_fuzz}%, retransmit {d(t.retransmit_timeout)} "
            f"x{t.retransmit_base:g} {t.retransmit_tries} tries limit "
            f"{d(t.retransmit_limit)}, fragments {t.fragment_size} bytes")


@tunnel.command("add")
@click.argument("name")
@click.option("--gateway", "gateway_name", required=True, help="VPN gateway (our side).")
@click.option("--customer-gateway", "customer_name", required=True, help="The peer.")
@click.option("--psk-stdin", is_flag=True, help="Read the pre-shared key from stdin.")
@click.option("--psk-file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--ike", default=DEFAULT_IKE, show_default=True, help="IKE proposals (strongSwan).")
@click.option("--esp", default=DEFAULT_ESP, show_default=True, help="ESP proposals (strongSwan).")
@_tunnel_options
@click.pass_context
@one_line_errors
def tunnel_add(
    ctx: click.Context,
    /,
    name: str,
    gateway_name: str,
    customer_name: str,
    psk_stdin: bool,
    psk_file: Path | None,
    ike: str,
    esp: str,
    start: str | None,
    **timers: str | None,
) -> None:
    """Create a tunnel (PSK authentication, proposals in strongSwan notation)."""
    check_name(name, "tunnel")
    settings = _settings(TunnelSettings(), timers)
    psk = _read_psk(psk_stdin, psk_file)
    parse_proposals(ike, ProtocolId.IKE)
    parse_proposals(esp, ProtocolId.ESP)
    with _store(ctx, write=True) as s:
        q.create_tunnel(
            s,
            name=name,
            gateway=gateway_name,
            customer_gateway=customer_name,
            psk=psk,
            ike_proposals=ike,
            esp_proposals=esp,
            start_action=start or "initiate",
            settings=settings.as_dict(),
        )
    click.echo(f"tunnel {name}: {gateway_name} <-> {customer_name}, ike {ike}, esp {esp}")


@tunnel.command("set")
@click.argument("name")
@_tunnel_options
@click.pass_context
@one_line_errors
def tunnel_set(
    ctx: click.Context, /, name: str, start: str | None, **timers: str | None
) -> None:
    """Change a tunnel's timers, fragment size or start action; current SAs keep their
    keys."""
    if start is None and all(v is None for v in timers.values()):
        raise PolicyError("nothing to change: give at least one setting (see --help)")
    with _store(ctx, write=True) as s:
        row = q.get_tunnel(s, name=name)
        settings = _settings(TunnelSettings(**q.tunnel_timers(row)), timers)
        q.set_tunnel(s, name=name, settings=settings.as_dict(), start_action=start)
        start = row.start_action
    click.echo(f"tunnel {name}: {describe(start, settings)}")


def _act(ctx: click.Context, name: str, action: str) -> None:
    """An operator action on the running tunnel, through the gateway's control socket."""
    obj: CliContext = ctx.find_object(CliContext)  # type: ignore[assignment]
    with _store(ctx, write=False) as s:
        q.get_tunnel(s, name=name)  # an unknown name is the store's one-line error
    try:
        done = ControlClient(DataPaths(obj.data_dir).control_socket).tunnel_action(name, action)
    except ControlError as exc:
        raise PolicyError(str(exc)) from None
    click.echo(done)


@tunnel.command("rekey")
@click.argument("name")
@click.option("--ike", "what", flag_value="rekey-ike", help="Rekey the IKE SA.")
@click.option("--child", "what", flag_value="rekey-child", default=True,
              help="Rekey the CHILD_SA (the default).")
@click.pass_context
@one_line_errors
def tunnel_rekey(ctx: click.Context, name: str, what: str) -> None:
    """Rekey a running tunnel now (no traffic is lost)."""
    _act(ctx, name, what)


@tunnel.command("restart")
@click.argument("name")
@click.pass_context
@one_line_errors
def tunnel_restart(ctx: click.Context, name: str) -> None:
    """Delete the tunnel's SAs and negotiate new ones from IKE_SA_INIT at once."""
    _act(ctx, name, "restart")


@tunnel.command("down")
@click.argument("name")
@click.pass_context
@one_line_errors
def tunnel_terminate(ctx: click.Context, name: str) -> None:
    """Delete the tunnel's SAs now; it stays down until restarted or the peer initiates
    (unlike `ipsec down`, which keeps it down across restarts of the gateway)."""
    _act(ctx, name, "down")


@tunnel.command("list")
@click.pass_context
@one_line_errors
def tunnel_list(ctx: click.Context) -> None:
    """List tunnels (never their keys)."""
    with _store(ctx, write=False) as s:
        rows = [
            (c.name, c.gateway, c.remote_address, c.ike_proposals, c.esp_proposals,
             c.start_action, "up" if c.admin_up else "down")
            for c in q.tunnel_configs(s)
        ]
    _table(rows, ("NAME", "GATEWAY", "PEER", "IKE", "ESP", "START", "ADMIN"))


@tunnel.command("config")
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True,
              help="The peer's software: strongSwan swanctl.conf, strongSwan's legacy "
                   "ipsec.conf, Libreswan's ipsec.conf, or a plain-text parameter sheet.")
@click.option("--include-psk", is_flag=True, help="Put the pre-shared key in the output.")
@click.pass_context
@one_line_errors
def tunnel_config(ctx: click.Context, name: str, fmt: str, include_psk: bool) -> None:
    """Print the customer gateway's side of tunnel NAME, for the peer's operator."""
    with _store(ctx, write=False) as s:
        stored, addresses = q.peer_side(s, name=name)
    click.echo(render(PeerTunnel.of(stored, addresses), fmt, include_psk=include_psk), nl=False)


@tunnel.command("delete")
@click.argument("name")
@click.pass_context
@one_line_errors
def tunnel_delete(ctx: click.Context, name: str) -> None:
    """Delete a tunnel and its policies."""
    with _store(ctx, write=True) as s:
        q.delete_tunnel(s, name=name)
    click.echo(f"deleted tunnel {name}")


# -- policies ------------------------------------------------------------------------------
@ipsec.group()
def policy() -> None:
    """SPD policies: which local CIDRs may talk to which peer CIDRs through a tunnel."""


@policy.command("add")
@click.argument("tunnel_name", metavar="TUNNEL")
@click.option("--local", "local_cidr", required=True, help="A VPC-side CIDR.")
@click.option("--peer", "peer_cidr", required=True, help="A CIDR behind the customer gateway.")
@click.pass_context
@one_line_errors
def policy_add(ctx: click.Context, tunnel_name: str, local_cidr: str, peer_cidr: str) -> None:
    """Allow LOCAL <-> PEER traffic through TUNNEL."""
    local = parse_cidr(local_cidr, what="local CIDR")
    peer = parse_cidr(peer_cidr, what="peer CIDR")
    with _store(ctx, write=True) as s:
        existing = [
            (other, parse_cidr(mine), parse_cidr(theirs))
            for other, mine, theirs in q.policies_on_gateway(s, tunnel=tunnel_name)
        ]
        pools = [parse_cidr(pool) for pool in q.client_pools(s)]
        check_policy(local, peer, existing, tunnel=tunnel_name, client_pools=pools)
        q.add_policy(s, tunnel=tunnel_name, local_cidr=str(local), peer_cidr=str(peer))
    click.echo(f"policy {local} <-> {peer} on tunnel {tunnel_name}")


@policy.command("list")
@click.argument("tunnel_name", metavar="[TUNNEL]", required=False)
@click.pass_context
@one_line_errors
def policy_list(ctx: click.Context, tunnel_name: str | None) -> None:
    """List policies, of one tunnel or all."""
    with _store(ctx, write=False) as s:
        rows = [(t, p.local_cidr, p.peer_cidr) for t, p in q.list_policies(s, tunnel=tunnel_name)]
    _table(rows, ("TUNNEL", "LOCAL", "PEER"))


@policy.command("delete")
@click.argument("tunnel_name", metavar="TUNNEL")
@click.option("--local", "local_cidr", required=True)
@click.option("--peer", "peer_cidr", required=True)
@click.pass_context
@one_line_errors
def policy_delete(ctx: click.Context, tunnel_name: str, local_cidr: str, peer_cidr: str) -> None:
    """Remove one policy from TUNNEL."""
    local = parse_cidr(local_cidr, what="local CIDR")
    peer = parse_cidr(peer_cidr, what="peer CIDR")
    with _store(ctx, write=True) as s:
        q.delete_policy(s, tunnel=tunnel_name, local_cidr=str(local), peer_cidr=str(peer))
    click.echo(f"deleted policy {local} <-> {peer} from tunnel {tunnel_name}")


# -- runtime -------------------------------------------------------------------------------
def _set_admin(ctx: click.Context, name: str, up: bool) -> None:
    with _store(ctx, write=True) as s:
        q.set_tunnel_admin_up(s, name=name, up=up)
    click.echo(f"tunnel {name} set {'up' if up else 'down'}; the running gateway follows")


@ipsec.command("up")
@click.argument("name")
@click.pass_context
@one_line_errors
def tunnel_up(ctx: click.Context, name: str) -> None:
    """Bring a tunnel up (and keep it up)."""
    _set_admin(ctx, name, True)


@ipsec.command("down")
@click.argument("name")
@click.pass_context
@one_line_errors
def tunnel_down(ctx: click.Context, name: str) -> None:
    """Take a tunnel down (and keep it down)."""
    _set_admin(ctx, name, False)


def _published(data_dir: Path) -> tuple[dict[str, TunnelStatus], str | None]:
    """What the running gateway reports, or why nothing could be asked."""
    try:
        rows = ControlClient(DataPaths(data_dir).control_socket).tunnel_status()
    except ControlError as exc:
        return {}, str(exc)
    return {t.name: t for t in rows}, None


@ipsec.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@one_line_errors
def status(ctx: click.Context, as_json: bool) -> None:
    """State, SPIs and counters of every tunnel, from the running gateway; on a fleet, the
    node holding each tunnel (from the store for tunnels another node carries)."""
    obj: CliContext = ctx.find_object(CliContext)  # type: ignore[assignment]
    with _store(ctx, write=False) as s:
        owners = q.tunnel_owners(s)
        stored = {c.name: (c.start_action, TunnelSettings(**c.timers))
                  for c in q.tunnel_configs(s)}
    published, problem = _published(obj.data_dir)
    if as_json:
        out = []
        for name, (start, settings) in stored.items():
            entry = published.get(name)
            data: dict[str, Any] = asdict(entry) if entry else {
                "name": name, "state": "elsewhere" if name in owners else "down",
                "last_error": None if name in owners else problem}
            if entry and entry.established_at:
                data["established_at"] = entry.established_at.isoformat()
            data["node"], taken = _holder(entry, owners.get(name))
            data["node_since"] = taken.isoformat() if taken else None
            data["settings"] = {"start_action": start, **settings.as_dict()}
            out.append(data)
        click.echo(json.dumps(out, indent=2))
        return
    names = list(stored)
    rows = []
    for name in names:
        t = published.get(name)
        node = _holder(t, owners.get(name))[0] or "-"
        if t is None:
            away = node != "-"  # carried by another node of the fleet
            rows.append((name, node, "elsewhere" if away else "down", "-", "-", "-", "-", "-",
                         "" if away else problem or "not running"))
            continue
        since = t.established_at.strftime("%Y-%m-%d %H:%M:%S") if t.established_at else "-"
        spis = f"{t.spi_in}/{t.spi_out}" if t.spi_in else "-"
        rows.append((name, node, t.state, since, spis, _left(t), f"{t.bytes_in}/{t.packets_in}",
                     f"{t.bytes_out}/{t.packets_out}", t.last_error or ""))
    _table(rows, ("TUNNEL", "NODE", "STATE", "SINCE", "SPI IN/OUT", "REKEY IKE/CHILD (EXPIRES)",
                  "IN B/PKT", "OUT B/PKT", "LAST ERROR"))
    for name, (start, settings) in stored.items():
        click.echo(f"{name}: {describe(start, settings)}")
        t = published.get(name)
        if t is not None and t.ike_proposal:
            click.echo(f"{name}: negotiated ike {t.ike_proposal}, esp {t.esp_proposal or '-'}")


def _holder(running: TunnelStatus | None, owner: tuple[str, datetime | None] | None,
            ) -> tuple[str | None, datetime | None]:
    """The node carrying a tunnel: this one when it runs it here, else the last taker."""
    if running is not None and running.node:
        return running.node, owner[1] if owner and owner[0] == running.node else None
    return owner if owner else (None, None)


def _left(t: TunnelStatus) -> str:
    """Time left on the IKE SA and the current CHILD_SA, e.g. ``2h41m/47m (57m)``."""
    def left(seconds: float | None) -> str:
        if seconds is None:
            return "-"
        whole = int(seconds)
        hours, minutes, secs = whole // 3600, whole % 3600 // 60, whole % 60
        if hours:
            return f"{hours}h{minutes:02d}m"
        return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"

    if t.ike_rekey_in is None and t.child_rekey_in is None:
        return "-"
    return f"{left(t.ike_rekey_in)}/{left(t.child_rekey_in)} ({left(t.child_expires_in)})"


COMMANDS: list[click.Command] = [ipsec]
