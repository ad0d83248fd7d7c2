"""`sslvpn cert issue/list/renew/revoke`, `sslvpn crl` and `sslvpn profile` commands.

Thin wrappers over `client_profiles.lifecycle` and `client_profiles.reports`; the CA
passphrase, when the CA key is encrypted, comes from ``SSLVPN_CA_PASSPHRASE``.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Literal

import click
from sqlalchemy import Engine
from sqlmodel import Session

from client_profiles import crl, lifecycle, reports
from client_profiles.inputs import MAX_CLIENT_DAYS
from client_profiles.pki import CLIENT_DAYS, REVOCATION_REASONS
from client_profiles.pkifiles import LifecycleError
from sslvpn.cli.setup import ACTOR, one_line_errors, paths_of, store
from sslvpn.config import DataPaths, write_public_file, write_secret_file
from sslvpn.store import NotFoundError
from sslvpn.store.db import session
from sslvpn.store.models import utcnow
from sslvpn.store.queries import get_certificate, get_user

_DAYS = click.IntRange(1, MAX_CLIENT_DAYS)
MAX_EXPIRING_DAYS = 36500  # a century; far beyond it, timedelta overflows
_TRANSPORTS: dict[str, Literal["udp", "tcp"]] = {"udp": "udp", "tcp": "tcp"}


@click.group("cert")
def cert_group() -> None:
    """Issue, list, renew and revoke client certificates."""


@cert_group.command("issue")
@click.argument("user")
@click.option("--device", default=None, help="Device name; the CN becomes USER.DEVICE.")
@click.option("--days", type=_DAYS, default=CLIENT_DAYS, show_default=True)
@click.pass_context
@one_line_errors
def issue_command(ctx: click.Context, user: str, device: str | None, days: int) -> None:
    """Issue a client certificate for USER."""
    with store(ctx, write=True) as engine:
        row = lifecycle.issue_client(
            engine, paths_of(ctx), user_name=user, device=device, days=days, actor=ACTOR
        )
    click.echo(f"issued {row.serial} CN={row.subject_cn} valid until {row.not_after:%Y-%m-%d}")


@cert_group.command("list")
@click.option(
    "--expiring",
    type=click.IntRange(0, MAX_EXPIRING_DAYS),
    default=None,
    metavar="DAYS",
    help="Only what is valid and expires within DAYS days (CA, server cert, CRL included).",
)
@click.pass_context
@one_line_errors
def list_command(ctx: click.Context, expiring: int | None) -> None:
    """List certificates, the CA and the CRL with their expiry."""
    within = None if expiring is None else timedelta(days=expiring)
    now = utcnow()
    paths = paths_of(ctx)
    with store(ctx, write=False) as engine:
        _mend_crl(paths, engine)  # the report reads crl.pem
        items = reports.expiry_report(paths, engine, within=within, now=now)
    click.echo(f"{'KIND':<7}{'NAME':<30}{'STATUS':<11}{'EXPIRES':<12}{'DAYS':>6}  SERIAL")
    for item in items:
        left = (item.not_after - now).days
        renewed = "" if item.overlap_until is None else (
            f"  renewed as {item.superseded_by}, works until "
            f"{item.overlap_until:%Y-%m-%d %H:%M} UTC or until that one connects")
        click.echo(
            f"{item.kind:<7}{item.name:<30}{item.status:<11}"
            f"{item.not_after:%Y-%m-%d}  {left:>6}  {item.serial or '-'}{renewed}"
        )


def _mend_crl(paths: DataPaths, engine: Engine) -> None:
    """CRL files that disagree with the store are published again (said on stderr)."""
    mended = crl.mend_crl(paths, engine, actor=ACTOR)
    if mended.failure is not None:
        click.echo(f"warning: {mended.problem}; not mended: {mended.failure}", err=True)
    elif mended.problem is not None:
        click.echo(f"note: {mended.problem}; published the CRL files again", err=True)


@cert_group.command("renew")
@click.argument("target", metavar="SERIAL|CN")
@click.option("--days", type=_DAYS, default=None, help="Default: the old certificate's lifetime.")
@click.option(
    "--overlap-days",
    type=click.IntRange(0, lifecycle.MAX_OVERLAP_DAYS),
    default=lifecycle.RENEWAL_OVERLAP_DAYS,
    show_default=True,
    help="A client's old certificate keeps working this long, or until the new one first "
    "connects; then it is revoked (superseded). 0 revokes it now.",
)
@click.pass_context
@one_line_errors
def renew_command(ctx: click.Context, target: str, days: int | None, overlap_days: int) -> None:
    """Replace a certificate (a client's or the gateway's) with a new one: by serial in
    any usual form (openssl's upper case, colons, decimal) or a client's CN (alice.laptop).

    A client's device is not cut off: its old certificate works until the new profile
    first connects or the overlap ends. A renewed gateway certificate is used after the
    gateway restarts.
    """
    with store(ctx, write=True) as engine:
        serial = _renewal_serial(engine, target)
        row = lifecycle.renew(engine, paths_of(ctx), serial=serial, days=days,
                              overlap_days=overlap_days, actor=ACTOR)
        with session(engine, write=False) as s:
            old = get_certificate(s, serial=serial)
    click.echo(f"renewed {old.serial} as {row.serial} valid until {row.not_after:%Y-%m-%d}")
    if old.overlap_until is not None and old.status == "valid":
        click.echo(f"the old certificate works until {old.overlap_until:%Y-%m-%d %H:%M} UTC "
                   "or until the new one first connects")


def _renewal_serial(engine: Engine, target: str) -> str:
    """The serial TARGET names, else the current certificate of the CN TARGET."""
    with session(engine, write=False) as s:
        serial = lifecycle.find_serial(s, target)
        named = lifecycle.certificates_named(s, target, now=utcnow())
    if serial is not None:
        return serial
    if named:
        return named[-1].serial
    raise LifecycleError(f"no certificate has the serial or CN {target!r}")


def _user_exists(s: Session, name: str) -> bool:
    try:
        get_user(s, name=name)
    except NotFoundError:
        return False
    return True


@cert_group.command("revoke")
@click.argument("target", metavar="SERIAL|CN|USER")
@click.option(
    "--reason", type=click.Choice(REVOCATION_REASONS), default="unspecified", show_default=True
)
@click.pass_context
@one_line_errors
def revoke_command(ctx: click.Context, target: str, reason: str) -> None:
    """Revoke one certificate (by serial in any usual form), every certificate of a user,
    or those of a CN (alice.laptop: during a renewal's overlap, the old and the new one),
    and re-sign the CRL."""
    with store(ctx, write=True) as engine:
        with session(engine, write=False) as s:
            serial = lifecycle.find_serial(s, target)
            user = serial is None and _user_exists(s, target)
            if user and any(row.user_id != get_user(s, name=target).id
                            for row in lifecycle.certificates_named(s, target, now=utcnow())):
                raise LifecycleError(f"{target!r} is both a user and a device's CN: revoke "
                                     "by serial (see cert list)")
        rows = lifecycle.revoke(
            engine,
            paths_of(ctx),
            serial=serial,
            user_name=target if user else None,
            common_name=target if serial is None and not user else None,
            reason=reason,
            actor=ACTOR,
        )
    for row in rows:
        click.echo(f"revoked {row.serial} CN={row.subject_cn} ({reason})")


@click.command("crl")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--format", "encoding", type=click.Choice(["pem", "der"]), default="pem", show_default=True
)
@click.pass_context
@one_line_errors
def crl_command(ctx: click.Context, output: Path | None, encoding: str) -> None:
    """Re-sign the CRL now and write it to FILE (stdout without -o)."""
    paths = paths_of(ctx)
    with store(ctx, write=True) as engine:
        state = crl.refresh_crl(paths, engine, force=True, actor=ACTOR)
    data = (paths.crl_der if encoding == "der" else paths.crl_pem).read_bytes()
    click.echo(f"CRL {state.number} valid until {state.next_update:%Y-%m-%d %H:%M} UTC", err=True)
    _emit(data, output, secret=False)


@click.command("profile")
@click.argument("user")
@click.option("--device", default=None, help="Which of the user's devices.")
@click.option("--proto", type=click.Choice(["udp", "tcp"]), default=None, help="Default: all.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.pass_context
@one_line_errors
def profile_command(
    ctx: click.Context, user: str, device: str | None, proto: str | None, output: Path | None
) -> None:
    """Write USER's .ovpn profile (with its private key) to FILE, or stdout without -o.

    Which clients take it goes to stderr, with the command that lists the live sessions of
    clients too old for it.
    """
    transport = _TRANSPORTS.get(proto or "")
    with store(ctx, write=True) as engine:
        profile = reports.render_profile(
            engine, paths_of(ctx), user_name=user, device=device, proto=transport, actor=ACTOR
        )
    _emit(profile.text.encode("utf-8"), output, secret=True)
    needs = profile.requirement
    click.echo(f"{needs.text} Live sessions of older clients: "
               f"sslvpn sessions --older-than {needs.oldest}", err=True)


def _emit(data: bytes, output: Path | None, *, secret: bool) -> None:
    """To a file written atomically (0600 when it holds a key), or to stdout."""
    if output is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    elif secret:
        write_secret_file(output, data)
    else:
        write_public_file(output, data)


COMMANDS: list[click.Command] = [cert_group, crl_command, profile_command]
