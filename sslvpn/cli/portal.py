"""`sslvpn portal`: the web portal alone, for a portal-only host sharing the database."""

from __future__ import annotations

import asyncio
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

import click
from aiohttp import web
from sqlalchemy import Engine

from client_profiles.pkifiles import LifecycleError
from sslvpn.cli.context import CliContext
from sslvpn.cli.setup import log_format_option, log_to_stderr
from sslvpn.config import DataPaths, database_url
from sslvpn.runtime.control_server import ControlClient
from sslvpn.runtime.metrics import Metrics, store_facts
from sslvpn.store import StoreError, integrity
from sslvpn.store.async_store import AsyncStore
from sslvpn.store.db import open_engine, upgrade
from web.app import create_app, ensure_first_admin, start_portal
from web.health import Health, store_reachable
from web.ops import create_ops_app, metrics_listen, start_ops
from web.portal import PortalSettings
from web.tls import portal_tls

DEFAULT_LISTEN = "127.0.0.1:8080"


@click.command("portal")
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, help="HOST:PORT to serve on.")
@click.option(
    "--public-url",
    default=None,
    help="Base URL phones reach the portal at (put in import links); default: the settings' "
         "portal public URL, else the gateway's first public address.",
)
@click.option(
    "--cert",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Portal certificate (PEM); default: one issued from our CA.",
)
@click.option(
    "--key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Key of --cert (PEM).",
)
@click.option(
    "--https/--no-https",
    "https",
    default=None,
    help="Force HTTPS on or off (off only on loopback); default: off on loopback.",
)
@click.option("--metrics-listen", "metrics_listen_at", default=None, metavar="HOST:PORT",
              help="Serve this process's Prometheus metrics at http://HOST:PORT/metrics (a "
                   "bare PORT: on 127.0.0.1). Default: off.")
@log_format_option
@click.pass_obj
def portal(
    obj: CliContext,
    listen: str,
    public_url: str | None,
    cert: Path | None,
    key: Path | None,
    https: bool | None,
    metrics_listen_at: str | None,
    log_format: str,
) -> None:
    """Serve the web portal and REST API (talks to a local gateway via its control socket)."""
    log_to_stderr(log_format=log_format)
    try:
        metrics_at = None if metrics_listen_at is None else metrics_listen(metrics_listen_at)
    except ValueError as exc:
        raise click.UsageError(f"--metrics-listen: {exc}") from None
    paths = DataPaths(obj.data_dir)
    try:
        engine = open_engine(database_url(obj.data_dir, obj.database_url))
        integrity.require_check(engine)  # before its first write: never into a damaged file
        upgrade(engine)
        tls = portal_tls(paths, engine, listen, https=https, cert=cert, key=key)
        password = ensure_first_admin(engine)
    except (ValueError, StoreError, LifecycleError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    app = create_app(
        engine=engine,
        paths=paths,
        control=ControlClient(paths.control_socket),
        settings=PortalSettings(public_url=public_url),
    )
    asyncio.run(_serve(app, listen, tls, password, _metrics(paths, engine, metrics_at)))


def _metrics(paths: DataPaths, engine: Engine, listen: str | None) -> OpsPlan | None:
    """The portal process's own metrics: process, certificate expiry, node heartbeats."""
    if listen is None:
        return None
    store = AsyncStore(engine, threads=1, owner="the metrics endpoint")
    metrics = Metrics(store=store)
    metrics.add_store_source(store_facts(paths))
    return OpsPlan(create_ops_app(metrics, Health(checks={"store": store_reachable(store)})),
                   listen)


@dataclass(frozen=True)
class OpsPlan:
    app: web.Application
    listen: str


async def _serve(
    app: web.Application, listen: str, tls: ssl.SSLContext | None, password: str | None,
    ops: OpsPlan | None,
) -> None:
    """Print where we listen (and the first admin password, once), then serve."""
    served = await start_portal(app, listen, tls)
    click.echo(f"portal: {served.url}")
    if password is not None:
        click.echo(f"first start: log in as 'admin' with the one-time password {password}")
    ops_served = None if ops is None else await start_ops(ops.app, ops.listen)
    if ops_served is not None:
        click.echo(f"metrics: {ops_served.url}metrics")
    try:
        await asyncio.Event().wait()
    finally:
        if ops_served is not None:
            await ops_served.runner.cleanup()
        await served.runner.cleanup()


COMMANDS: list[click.Command] = [portal]
