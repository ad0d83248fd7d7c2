"""`sslvpn group`, `sslvpn rule` and `sslvpn policy` commands: who may reach what (README
"Access policy"). Live sessions pick a change up within 5 s; routes at the next connect."""

from __future__ import annotations

import click

from sslvpn.cli.setup import ACTOR, one_line_errors, store
from sslvpn.net.access import DEFAULTS, PROTOCOLS, format_destination, parse_destination
from sslvpn.store import access_queries
from sslvpn.store.access_queries import Actor
from sslvpn.store.db import session

BY = Actor(ACTOR)


@click.group("group")
def group_group() -> None:
    """Manage the groups that access rules name."""


@group_group.command("add")
@click.argument("name")
@click.pass_context
@one_line_errors
def group_add_command(ctx: click.Context, name: str) -> None:
    """Add group NAME."""
    with store(ctx, write=True) as engine, session(engine, write=True) as s:
        access_queries.add_group(s, name=name, by=BY)
    click.echo(f"added group {name}")


@group_group.command("list")
@click.pass_context
@one_line_errors
def group_list_command(ctx: click.Context) -> None:
    """List groups with their members and how many rules name them."""
    with store(ctx, write=False) as engine, session(engine, write=False) as s:
        groups = access_queries.list_groups(s)
    click.echo(f"{'NAME':<24} {'RULES':>5}  MEMBERS")
    for group in groups:
        click.echo(f"{group.name:<24} {group.rules:>5}  {', '.join(group.members) or '-'}")


@group_group.command("delete")
@click.argument("name")
@click.pass_context
@one_line_errors
def group_delete_command(ctx: click.Context, name: str) -> None:
    """Delete group NAME with its rules; its members stay users."""
    with store(ctx, write=True) as engine, session(engine, write=True) as s:
        access_queries.delete_group(s, name=name, by=BY)
    click.echo(f"deleted group {name} and its rules")


@click.group("rule")
def rule_group() -> None:
    """Manage access rules: which VPC destinations a group or a user may reach."""


@rule_group.command("add")
@click.option("--group", "group", default=None, help="The group the rule is for.")
@click.option("--user", "user", default=None, help="The user the rule is for.")
@click.option("--to", "destination", required=True, metavar="CIDR",
              help="Destination network (inside the VPC networks).")
@click.option("--proto", "protocol", type=click.Choice(PROTOCOLS), default="any",
              show_default=True)
@click.option("--port", "ports", default=None, metavar="N|N-M", help="tcp/udp only.")
@click.option("--deny", is_flag=True, help="Deny instead of allow.")
@click.option("--priority", type=int, default=100, show_default=True,
              help="Lower is evaluated first; deny before allow on a tie.")
@click.pass_context
@one_line_errors
def rule_add_command(ctx: click.Context, group: str | None, user: str | None,
                     destination: str, protocol: str, ports: str | None, deny: bool,
                     priority: int) -> None:
    """Add a rule for --group G or --user U."""
    with store(ctx, write=True) as engine, session(engine, write=True) as s:
        rule = access_queries.add_rule(s, group=group, user=user, destination=destination,
                                       protocol=protocol, ports=ports, allow=not deny,
                                       priority=priority, by=BY)
        rule_id = rule.id
    click.echo(f"added rule {rule_id}")


@rule_group.command("list")
@click.pass_context
@one_line_errors
def rule_list_command(ctx: click.Context) -> None:
    """List the rules in evaluation order."""
    with store(ctx, write=False) as engine, session(engine, write=False) as s:
        rules = access_queries.list_rules(s)
        default = access_queries.load_policy(s).default
    click.echo(f"{'ID':>5} {'PRIO':>5} {'ACTION':<6} {'PROTO':<5} {'PORTS':<11} "
               f"{'DESTINATION':<20} FOR")
    for rule in rules:
        ports = rule.ports_text
        click.echo(f"{rule.id:>5} {rule.priority:>5} {'allow' if rule.allow else 'deny':<6} "
                   f"{rule.protocol:<5} {ports:<11} {rule.network!s:<20} {rule.owner}")
    click.echo(f"default (no rule matches): {default}")


@rule_group.command("delete")
@click.argument("rule_id", metavar="ID", type=int)
@click.pass_context
@one_line_errors
def rule_delete_command(ctx: click.Context, rule_id: int) -> None:
    """Delete rule ID."""
    with store(ctx, write=True) as engine, session(engine, write=True) as s:
        access_queries.delete_rule(s, rule_id=rule_id, by=BY)
    click.echo(f"deleted rule {rule_id}")


@click.group("policy")
def policy_group() -> None:
    """The access policy's default, and who can reach what."""


@policy_group.command("default")
@click.argument("default", type=click.Choice(DEFAULTS))
@click.pass_context
@one_line_errors
def policy_default_command(ctx: click.Context, default: str) -> None:
    """What a user with no matching rule reaches: all-vpc (all VPC networks) or nothing."""
    with store(ctx, write=True) as engine, session(engine, write=True) as s:
        access_queries.set_default(s, default=default, by=BY)
    click.echo(f"default: {default}")


@policy_group.command("check")
@click.argument("user")
@click.argument("destination", metavar="DEST[:PORT[/PROTO]]")
@click.pass_context
@one_line_errors
def policy_check_command(ctx: click.Context, user: str, destination: str) -> None:
    """May USER reach DEST? Decided by the same lookup the gateway runs per packet."""
    protocol, address, port, name = parse_destination(destination)
    with store(ctx, write=False) as engine, session(engine, write=False) as s:
        verdict = access_queries.check(s, user=user, protocol=protocol, address=address,
                                       port=port)
    target = format_destination(address, port, name)
    click.echo(f"{'allow' if verdict.allow else 'deny'}: {user} -> {target}")
    click.echo(f"decided by: {verdict.decided_by}")
    click.echo(f"route: {verdict.route}")
    click.echo(f"carried by: the node the client is connected to ({', '.join(verdict.nodes)})")
    click.echo(f"pushed routes: {', '.join(verdict.pushed) or 'none'} (at the next connect)")


COMMANDS: list[click.Command] = [group_group, rule_group, policy_group]
