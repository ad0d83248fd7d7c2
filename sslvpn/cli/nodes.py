"""`sslvpn node add/list/remove/routes`: the gateway hosts of a fleet sharing one database.

Thin wrappers over `client_profiles.fleet`; refusals are one line on stderr (exit status 1).
"""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from client_profiles import fleet
from sslvpn.cli.setup import ACTOR, one_line_errors, store
from sslvpn.store import db, queries

ROUTES_NOTE = (
    "Add these entries to the VPC's route table yourself: this is a manual step in your "
    "cloud console (or its API); sslvpn does not change the VPC."
)
UNKNOWN_HOP = "(unknown)"
UNKNOWN_NOTE = ("(unknown): the node reports its VPC-side address once it runs; or name it with "
                "`sslvpn node add ... --vpc-address ADDR`")


@click.group("node")
def node_group() -> None:
    """Manage the gateway nodes of a fleet (several `sslvpn serve --node` hosts, one database)."""


@node_group.command("add")
@click.argument("name")
@click.option("--public-address", "public_addresses", multiple=True, required=True,
              help="DNS name or IP clients reach this node at (repeatable).")
@click.option("--pool", default=None, metavar="CIDR",
              help="Its IPv4 client sub-pool inside the fleet pool (default: the next free /26).")
@click.option("--pool6", default=None, metavar="CIDR",
              help="Its IPv6 sub-pool (default: the block mirroring --pool in the fleet's).")
@click.option("--vpc-address", "vpc_addresses", multiple=True, metavar="ADDR",
              help="Its address inside the VPC, the next hop of its routes (default: the "
                   "address it reports once running); one per IP version.")
@click.pass_context
@one_line_errors
def add_command(ctx: click.Context, name: str, public_addresses: tuple[str, ...],
                pool: str | None, pool6: str | None, vpc_addresses: tuple[str, ...]) -> None:
    """Add node NAME with a client sub-pool no other node overlaps."""
    with store(ctx, write=True) as engine:
        node = fleet.add_node(engine, name=name, public_addresses=public_addresses, pool=pool,
                              pool6=pool6, vpc_addresses=vpc_addresses, actor=ACTOR)
    click.echo(f"added node {node.name}: clients get addresses from {node.pools}")
    click.echo(f"run it with: sslvpn serve --node {node.name}; then see `sslvpn node routes`")


@node_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@one_line_errors
def list_command(ctx: click.Context, as_json: bool) -> None:
    """List the nodes: addresses, sub-pools, up/down from the heartbeat, live sessions."""
    with store(ctx, write=False) as engine:
        nodes = fleet.node_statuses(engine)
    if as_json:
        click.echo(json.dumps([node.as_json() for node in nodes], indent=2))
        return
    if not nodes:
        click.echo("no nodes: `sslvpn serve` runs as the single gateway")
        return
    click.echo(f"{'NAME':<16} {'STATE':<5} {'SESSIONS':>8} {'POOL':<18} {'POOL6':<26} "
               f"{'VERSION':<9} {'LAST SEEN (UTC)':<19} PUBLIC ADDRESSES")
    for n in nodes:
        seen = n.last_seen.strftime("%Y-%m-%d %H:%M:%S") if n.last_seen else "never"
        click.echo(f"{n.name:<16} {n.state:<5} {n.sessions:>8} {n.pool:<18} "
                   f"{n.pool6 or '-':<26} {n.software_version or '-':<9} {seen:<19} "
                   f"{', '.join(n.public_addresses)}")


@node_group.command("remove")
@click.argument("name")
@click.option("--force", is_flag=True, help="Remove it even with live sessions (ends them).")
@click.pass_context
@one_line_errors
def remove_command(ctx: click.Context, name: str, force: bool) -> None:
    """Remove node NAME; refused while it has live sessions unless --force."""
    with store(ctx, write=True) as engine:
        ended = fleet.remove_node(engine, name=name, force=force, actor=ACTOR)
    suffix = f"; {ended} session{'s' if ended != 1 else ''} ended" if ended else ""
    click.echo(f"removed node {name}{suffix}")


@node_group.command("routes")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@one_line_errors
def routes_command(ctx: click.Context, as_json: bool) -> None:
    """Print the VPC route-table entries: each node's sub-pools via that node."""
    with store(ctx, write=False) as engine, db.session(engine, write=False) as s:
        settings = queries.get_settings(s)
        entries = fleet.route_entries(s)
    if as_json:
        click.echo(json.dumps([asdict(entry) for entry in entries], indent=2))
        return
    click.echo(ROUTES_NOTE)
    if not entries:
        pools = " and ".join(p for p in (settings.pool_cidr, settings.pool6_cidr) if p)
        click.echo(f"no nodes: route the client pool {pools} to the gateway host")
        return
    click.echo(f"{'DESTINATION':<28} {'NEXT HOP':<28} NODE")
    for entry in entries:
        click.echo(f"{entry.destination:<28} {entry.next_hop or UNKNOWN_HOP:<28} {entry.node}")
    if any(entry.next_hop is None for entry in entries):
        click.echo(UNKNOWN_NOTE)


COMMANDS: list[click.Command] = [node_group]
