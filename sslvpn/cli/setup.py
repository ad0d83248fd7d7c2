"""`sslvpn init`, plus the store and error plumbing the admin commands share.

Every admin command (init, user, cert, crl, profile) turns an operator mistake or a
refusal into one line on stderr and exit status 1, and opens the store only after checking
that the data folder exists (so a typo in ``--data-dir`` never creates an empty database).
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy import Engine

from client_profiles import lifecycle
from client_profiles.inputs import KEEPALIVE_DEFAULT, NO_VPC_WARNING
from client_profiles.pki import KeyType, WrongPassphrase
from client_profiles.pkifiles import LifecycleError
from sslvpn import eventlog
from sslvpn.cli.context import CliContext
from sslvpn.config import DataPaths, database_url
from sslvpn.openvpn.constants import DEFAULT_TLS_GROUPS
from sslvpn.runtime.instance import AlreadyServing
from sslvpn.store import StoreError, integrity
from sslvpn.store.db import open_engine, upgrade

ACTOR = "cli"
F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(func: F) -> F:
    """Refusals and operator mistakes become `error: <one line>` and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (LifecycleError, WrongPassphrase, StoreError, ValueError, AlreadyServing) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        except OSError as exc:
            message = f"{exc.filename or 'file'}: {exc.strerror or exc}"
        click.echo(f"error: {message}", err=True)
        sys.exit(1)

    return wrapper  # type: ignore[return-value]


log_format_option = click.option(
    "--log-format", type=click.Choice(eventlog.LOG_FORMATS), default="text", show_default=True,
    envvar="SSLVPN_LOG_FORMAT",
    help="text, or json: one JSON object per line with timestamp, level, node, event and "
         "the event's fields.")


def log_to_stderr(*, verbose: bool = False, log_format: str = "text",
                  node: str | None = None) -> None:
    """The long-running commands (serve, portal) log with times (`sslvpn.eventlog`)."""
    eventlog.configure(log_format, node=node, verbose=verbose)


def paths_of(ctx: click.Context) -> DataPaths:
    return DataPaths(obj_of(ctx).data_dir)


def sqlite_store(ctx: click.Context) -> bool:
    """Whether the store is the SQLite file in the data folder (no --database-url)."""
    return obj_of(ctx).database_url is None


@contextmanager
def store(ctx: click.Context, *, write: bool) -> Iterator[Engine]:
    """An upgraded engine for an existing data folder; disposed when the command ends.

    A command that only reads (``write=False``) works on a read-only data folder (the
    SQLite file is opened read-only); one that writes is refused there, saying so, and
    on a damaged database (``PRAGMA quick_check`` runs before its first write).
    """
    obj = obj_of(ctx)
    read_only = require_data_folder(ctx, write=write)
    engine = open_engine(database_url(obj.data_dir, obj.database_url), read_only=read_only)
    if write:  # never write into a malformed file: check it whole before the first write
        integrity.require_check(engine)
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()


def require_data_folder(ctx: click.Context, *, write: bool) -> bool:
    """Refuse a data folder that does not exist (a typo must not create one), or that a
    command which writes cannot write; True when the store is to be opened read-only."""
    obj = obj_of(ctx)
    if not obj.data_dir.is_dir():
        raise LifecycleError(f"data folder {obj.data_dir} does not exist; run `sslvpn init`")
    read_only = obj.database_url is None and _read_only_reason(DataPaths(obj.data_dir))
    if read_only and write:
        verb = " ".join(ctx.command_path.split()[1:])
        raise LifecycleError(f"{read_only}: `sslvpn {verb}` needs to write there; "
                             "run it where the data folder is writable")
    return bool(read_only)


def _read_only_reason(paths: DataPaths) -> str | None:
    """Why the SQLite store cannot be written here (its folder or file), or None."""
    if not os.access(paths.data_dir, os.W_OK):
        return f"the data folder {paths.data_dir} is read-only"
    if paths.database.exists() and not os.access(paths.database, os.W_OK):
        return f"the database {paths.database} is read-only"
    return None


def read_stdin_secret(what: str) -> str:
    """The first line of stdin (a password or passphrase piped in), never echoed."""
    value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise LifecycleError(f"no {what} on stdin")
    return value


def obj_of(ctx: click.Context) -> CliContext:
    obj = ctx.find_object(CliContext)
    if obj is None:
        raise click.UsageError("run through the `sslvpn` command")
    return obj


@click.command("init")
@click.option(
    "--public-address",
    "public_addresses",
    multiple=True,
    required=True,
    help="DNS name or IP clients connect to (repeat for failover; the first names the server).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=1194, show_default=True)
@click.option(
    "--proto", type=click.Choice(["udp", "tcp", "both"]), default="both", show_default=True
)
@click.option(
    "--vpc", multiple=True, help="Network (CIDR) clients may reach; repeatable; IPv6 needs --pool6."
)
@click.option(
    "--pool",
    default="10.8.0.0/24",
    show_default=True,
    help="IPv4 client address pool, /29 or larger, apart from every --vpc network.",
)
@click.option(
    "--pool6",
    default=None,
    metavar="CIDR",
    help="IPv6 client pool, /64 to /112 (e.g. fd00:8::/64); client n of --pool gets host n.",
)
@click.option("--dns", multiple=True, help="DNS server pushed to clients; repeatable.")
@click.option(
    "--key-type",
    type=click.Choice([k.value for k in KeyType]),
    default=KeyType.ECDSA_P256.value,
    show_default=True,
)
@click.option(
    "--control-channel",
    type=click.Choice(["tls-crypt", "tls-crypt-v2"]),
    default="tls-crypt",
    show_default=True,
    help="Shared tls-crypt key, or a tls-crypt-v2 key per client.",
)
@click.option(
    "--keepalive",
    nargs=2,
    type=click.IntRange(1, 3600),
    default=KEEPALIVE_DEFAULT,
    show_default=True,
    metavar="PING RESTART",
    help="Pushed to clients: ping every PING s; reconnect (to another node) after RESTART s "
    "without a packet.",
)
@click.option(
    "--tls-groups",
    default=DEFAULT_TLS_GROUPS,
    show_default=True,
    metavar="GROUPS",
    help="TLS key-exchange groups of the control channel, best first (OpenVPN's tls-groups, "
    "OpenSSL names separated by ':'); the hybrid post-quantum group first.",
)
@click.option(
    "--max-clients",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="OpenVPN clients held at once, authenticated or not (OpenVPN's max-clients); 0: as "
    "many as the pool holds, plus room for handshakes.",
)
@click.option(
    "--max-clients-per-address",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="OpenVPN clients one source address may hold (0: no cap; people behind one NAT "
    "share an address).",
)
@click.option(
    "--tls-crypt-v2-force-cookie/--no-tls-crypt-v2-force-cookie",
    "force_cookie",
    default=True,
    show_default=True,
    help="Refuse UDP tls-crypt-v2 clients that cannot do the stateless cookie exchange "
    "(OpenVPN before 2.6), as OpenVPN's tls-crypt-v2 ... force-cookie.",
)
@click.option(
    "--ca-passphrase-stdin",
    is_flag=True,
    help="Encrypt the CA key with a passphrase read from stdin (else SSLVPN_CA_PASSPHRASE).",
)
@click.pass_context
@one_line_errors
def init_command(
    ctx: click.Context,
    public_addresses: tuple[str, ...],
    port: int,
    proto: str,
    vpc: tuple[str, ...],
    pool: str,
    pool6: str | None,
    dns: tuple[str, ...],
    key_type: str,
    control_channel: str,
    keepalive: tuple[int, int],
    tls_groups: str,
    max_clients: int,
    max_clients_per_address: int,
    force_cookie: bool,
    ca_passphrase_stdin: bool,
) -> None:
    """Create the data folder: CA, server certificate, tls-crypt keys, CRL and settings."""
    obj = obj_of(ctx)
    paths = DataPaths(obj.data_dir)
    passphrase = read_stdin_secret("CA passphrase") if ca_passphrase_stdin else None
    if paths.ca_cert.exists() or paths.ca_key.exists():
        raise LifecycleError(f"data folder {paths.data_dir} is already initialised")
    created_dir = not paths.data_dir.exists()
    sqlite = obj.database_url is None
    created_db = sqlite and not paths.database.exists()
    try:
        paths.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with store(ctx, write=True) as engine:  # open_engine creates the file 0600
            done = lifecycle.initialise(
                paths,
                engine,
                public_addresses=public_addresses,
                port=port,
                proto=proto,
                vpc=vpc,
                pool=pool,
                pool6=pool6,
                dns=dns,
                key_type=KeyType(key_type),
                ca_passphrase=passphrase,
                control_channel=control_channel,
                keepalive=keepalive,
                tls_groups=tls_groups,
                caps=lifecycle.ClientCaps(max_clients, max_clients_per_address, force_cookie),
                actor=ACTOR,
            )
    except BaseException:
        _remove_what_init_created(paths, created_dir=created_dir, created_db=created_db)
        raise
    settings = done.settings
    if done.resumed:
        click.echo(f"initialised {paths.data_dir} (finished an interrupted init, as it was begun)")
    else:
        click.echo(f"initialised {paths.data_dir}")
    click.echo(f"  server name  {settings.public_addresses[0]}")
    click.echo(f"  listening    {settings.protocols} on port {settings.port}")
    click.echo(f"  client pool  {settings.pool_cidr}")
    click.echo(f"  IPv6 pool    {settings.pool6_cidr or '(none)'}")
    click.echo(f"  VPC networks {', '.join(settings.vpc_networks) or '(none)'}")
    click.echo(f"  keepalive    ping {settings.keepalive_interval} s, "
               f"restart {settings.keepalive_timeout} s")
    click.echo(f"  TLS groups   {settings.tls_groups}")
    click.echo(f"  max clients  {settings.max_clients or 'pool size'} in all, "
               f"{settings.max_clients_per_address or 'no cap'} per address; tls-crypt-v2 "
               f"force-cookie {'on' if settings.tls_crypt_v2_force_cookie else 'off'}")
    click.echo(f"  CA key       {'encrypted' if passphrase or _env_passphrase() else 'plain'}")
    if not settings.vpc_networks:
        click.echo(f"warning: {NO_VPC_WARNING}", err=True)


def _env_passphrase() -> bool:
    return bool(os.environ.get("SSLVPN_CA_PASSPHRASE"))


def _remove_what_init_created(paths: DataPaths, *, created_dir: bool, created_db: bool) -> None:
    """A failed init leaves the folder as it found it, unless its settings were committed:
    then the staging folder stays for the next run to finish."""
    if paths.pki_staging_dir.exists():
        return
    if created_dir:
        shutil.rmtree(paths.data_dir, ignore_errors=True)
        return
    if created_db:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{paths.database}{suffix}").unlink(missing_ok=True)
    if paths.pki_dir.is_dir() and not any(paths.pki_dir.iterdir()):
        paths.pki_dir.rmdir()


COMMANDS: list[click.Command] = [init_command]
