"""`sslvpn user add/list/disable/enable` commands."""

from __future__ import annotations

import click

from client_profiles import accounts
from sslvpn.cli.setup import ACTOR, one_line_errors, read_stdin_secret, store


@click.group("user")
def user_group() -> None:
    """Manage the people who may get certificates and sign in to the portal."""


@user_group.command("add")
@click.argument("name")
@click.option("--email", default=None, help="Contact address shown in the portal.")
@click.option("--admin", is_flag=True, help="May manage users and certificates in the portal.")
@click.option("--password-stdin", is_flag=True, help="Read a portal password from stdin.")
@click.pass_context
@one_line_errors
def add_command(
    ctx: click.Context, name: str, email: str | None, admin: bool, password_stdin: bool
) -> None:
    """Add user NAME."""
    password = read_stdin_secret("password") if password_stdin else None
    with store(ctx, write=True) as engine:
        user = accounts.add_user(
            engine, name=name, email=email, admin=admin, password=password, actor=ACTOR
        )
    click.echo(f"added {user.role} {user.name}")


@user_group.command("list")
@click.pass_context
@one_line_errors
def list_command(ctx: click.Context) -> None:
    """List users with their role and whether they are enabled."""
    with store(ctx, write=False) as engine:
        users = accounts.list_users(engine)
    click.echo(f"{'NAME':<24} {'ROLE':<6} {'STATE':<9} {'PASSWORD':<8} EMAIL")
    for user in users:
        state = "disabled" if user.disabled else "enabled"
        password = "set" if user.password_hash else "-"
        click.echo(f"{user.name:<24} {user.role:<6} {state:<9} {password:<8} {user.email or '-'}")


@user_group.command("disable")
@click.argument("name")
@click.pass_context
@one_line_errors
def disable_command(ctx: click.Context, name: str) -> None:
    """Disable user NAME: no new certificates or profiles, no portal sign-in."""
    with store(ctx, write=True) as engine:
        accounts.set_user_enabled(engine, name=name, enabled=False, actor=ACTOR)
    click.echo(f"disabled {name}")


@user_group.command("enable")
@click.argument("name")
@click.pass_context
@one_line_errors
def enable_command(ctx: click.Context, name: str) -> None:
    """Enable user NAME again."""
    with store(ctx, write=True) as engine:
        accounts.set_user_enabled(engine, name=name, enabled=True, actor=ACTOR)
    click.echo(f"enabled {name}")


COMMANDS: list[click.Command] = [user_group]
