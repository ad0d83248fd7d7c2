"""`sslvpn user add/list/disable/enable/delete/passwd/unlock/limits/2fa-require/2fa-reset/
groups` commands."""

from __future__ import annotations

import click

from client_profiles import accounts, two_factor
from sslvpn.cli.setup import ACTOR, one_line_errors, paths_of, read_stdin_secret, store
from sslvpn.store import access_queries
from sslvpn.store.access_queries import Actor
from sslvpn.store.db import session


@click.group("user")
def user_group() -> None:
    """Manage the people who may get certificates and sign in to the portal."""


@user_group.command("add")
@click.argument("name")
@click.option("--email", default=None, help="Contact address shown in the portal.")
@click.option("--admin", is_flag=True, help="May manage users and certificates in the portal.")
@click.option("--password-stdin", is_flag=True, help="Read a portal password from stdin.")
@click.option("--group", "groups", multiple=True, metavar="G",
              help="Put the user into group G (repeatable; the groups must exist).")
@click.pass_context
@one_line_errors
def add_command(
    ctx: click.Context, name: str, email: str | None, admin: bool, password_stdin: bool,
    groups: tuple[str, ...],
) -> None:
    """Add user NAME."""
    password = read_stdin_secret("password") if password_stdin else None
    with store(ctx, write=True) as engine:
        with session(engine, write=False) as s:  # an unknown group is refused first
            for group in groups:
                access_queries.get_group(s, name=group)
        user = accounts.add_user(
            engine, name=name, email=email, admin=admin, password=password, actor=ACTOR
        )
        if groups:
            with session(engine, write=True) as s:
                access_queries.change_groups(s, user=name, add=groups, by=Actor(ACTOR))
    click.echo(f"added {user.role} {user.name}" + (f" in {', '.join(groups)}" if groups else ""))


@user_group.command("groups")
@click.argument("name")
@click.option("--add", "add", multiple=True, metavar="G", help="Join group G (repeatable).")
@click.option("--remove", "remove", multiple=True, metavar="G",
              help="Leave group G (repeatable).")
@click.pass_context
@one_line_errors
def groups_command(ctx: click.Context, name: str, add: tuple[str, ...],
                   remove: tuple[str, ...]) -> None:
    """Show NAME's groups, or change them (live sessions follow within 5 s)."""
    with store(ctx, write=bool(add or remove)) as engine:
        with session(engine, write=bool(add or remove)) as s:
            groups = (access_queries.change_groups(s, user=name, add=add, remove=remove,
                                                   by=Actor(ACTOR))
                      if add or remove else access_queries.groups_of(s, user=name))
    click.echo(f"{name}: {', '.join(groups) or 'no groups'}")


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


@user_group.command("delete")
@click.argument("name")
@click.pass_context
@one_line_errors
def delete_command(ctx: click.Context, name: str) -> None:
    """Delete user NAME: their certificates are revoked first (the gateway ends their
    sessions), then the user, their tokens and portal logins go."""
    with store(ctx, write=True) as engine:
        revoked = accounts.delete_user(engine, paths_of(ctx), name=name, actor=ACTOR)
    click.echo(f"deleted {name}; revoked {len(revoked)} certificate(s)")


@user_group.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True,
              help="Read the new password from stdin; without it one is generated and shown.")
@click.pass_context
@one_line_errors
def passwd_command(ctx: click.Context, name: str, password_stdin: bool) -> None:
    """Set NAME's portal password (their portal logins end)."""
    password = read_stdin_secret("password") if password_stdin else None
    with store(ctx, write=True) as engine:
        generated = accounts.set_password(engine, name=name, password=password, actor=ACTOR)
    if generated is not None:
        click.echo(f"new password for {name}: {generated}")
    else:
        click.echo(f"password of {name} changed")


@user_group.command("unlock")
@click.argument("name")
@click.pass_context
@one_line_errors
def unlock_command(ctx: click.Context, name: str) -> None:
    """Let NAME sign in to the portal again now: their failed logins so far stop counting."""
    with store(ctx, write=True) as engine:
        accounts.unlock(engine, name=name, actor=ACTOR)
    click.echo(f"unlocked {name}")


def _limit(value: str | None) -> int | None | accounts.Unchanged:
    """A limit option: a number, ``default`` for the gateway settings' value, or left out
    (the user keeps what they have)."""
    if value is None:
        return accounts.UNCHANGED
    if value == "default":
        return None
    if not value.isdigit():
        raise click.BadParameter(f"{value!r} is not a number or 'default'")
    return int(value)


@user_group.command("limits")
@click.argument("name")
@click.option("--max-devices", metavar="N|default", default=None,
              help="Valid certificates (devices) NAME may hold.")
@click.option("--max-sessions", metavar="N|default", default=None,
              help="Live VPN sessions at once (0: one per device).")
@click.pass_context
@one_line_errors
def limits_command(ctx: click.Context, name: str, max_devices: str | None,
                   max_sessions: str | None) -> None:
    """Set NAME's own limits; 'default' takes the gateway settings', and a limit left out
    stays as it is."""
    if max_devices is None and max_sessions is None:
        raise click.UsageError("give --max-devices, --max-sessions or both")
    with store(ctx, write=True) as engine:
        user = accounts.set_limits(engine, name=name, devices=_limit(max_devices),
                                   sessions=_limit(max_sessions), actor=ACTOR)
    shown = {"devices": user.max_devices, "sessions": user.max_sessions}
    click.echo(f"{name}: " + ", ".join(f"max {what} {'default' if value is None else value}"
                                       for what, value in shown.items()))


@user_group.command("2fa-require")
@click.argument("name", required=False)
@click.option("--everyone", is_flag=True,
              help="Require it of every user (the gateway setting) instead of NAME.")
@click.option("--vpn", is_flag=True,
              help="VPN clients connect with the password and a code too (profiles change).")
@click.option("--off", is_flag=True, help="Make it optional again (unless required of everyone).")
@click.pass_context
@one_line_errors
def two_factor_require_command(ctx: click.Context, name: str | None, everyone: bool,
                               vpn: bool, off: bool) -> None:
    """Require NAME (or --everyone) to sign in to the portal with a TOTP code (they enrol at
    their next sign-in; those not enrolled are logged out of the portal), or (--vpn) every
    VPN client to connect with its user's password and code."""
    if [everyone, vpn, name is not None].count(True) != 1:
        raise click.UsageError("give a user NAME, --everyone or --vpn")
    if vpn:
        with store(ctx, write=True) as engine:
            missing = two_factor.require_on_vpn(engine, gateway="default", required=not off,
                                                actor=ACTOR)
        click.echo(f"VPN two-factor {'off' if off else 'on'}: every user imports their "
                   "profile again")
        if missing and not off:
            click.echo(f"not enrolled, cannot connect until they are: {', '.join(missing)}")
        return
    with store(ctx, write=True) as engine:
        if name is None:
            two_factor.require_everyone_account(engine, gateway="default", required=not off,
                                                actor=ACTOR)
        else:
            two_factor.require_account(engine, name=name, required=not off, actor=ACTOR)
    click.echo(f"two-factor sign-in {'optional for' if off else 'required of'} "
               f"{name or 'everyone'}")


@user_group.command("2fa-reset")
@click.argument("name")
@click.pass_context
@one_line_errors
def two_factor_reset_command(ctx: click.Context, name: str) -> None:
    """Forget NAME's authenticator and recovery codes (a lost phone): they enrol again."""
    with store(ctx, write=True) as engine:
        two_factor.reset_account(engine, name=name, actor=ACTOR)
    click.echo(f"two-factor sign-in of {name} reset")


COMMANDS: list[click.Command] = [user_group]
