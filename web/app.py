"""The portal's composition root: `create_app` wires store, PKI paths and gateway control
into one aiohttp application, and `run_portal` serves it (HTTPS unless bound to loopback).
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp_jinja2
import aiohttp_session
import jinja2
from aiohttp import web
from sqlalchemy import Engine
from sqlmodel import Session

from client_profiles.passwords import generate_password, hash_password, one_time_until
from sslvpn.config import DataPaths
from sslvpn.runtime.control import GatewayControl
from sslvpn.store import db, queries
from sslvpn.store.async_store import AsyncStore
from web import api, api_access, api_ipsec, api_nodes, api_traffic, pages, security
from web.error_pages import error_pages
from web.health import Health, add_health_routes, store_reachable
from web.outage import outage_middleware
from web.portal import PORTAL, Portal, PortalSettings
from web.timefmt import when
from web.traffic import TrafficHistory
from web.views import (
    access,
    admin,
    admin_ops,
    alarms,
    auth,
    devices,
    ipsec,
    nodes,
    onboarding,
    traffic_history,
    two_factor,
)

STATIC_DIR = Path(__file__).resolve().parent / "static"


def create_app(
    *,
    engine: Engine,
    paths: DataPaths,
    control: GatewayControl | None,
    settings: PortalSettings | None = None,
    clock: security.Clock = time.time,
) -> web.Application:
    """Build the portal; ``control`` is None for a portal with no gateway to ask.

    Its store calls go through an `AsyncStore` of its own, so a flood of portal requests
    in a store outage never uses up the threads the gateway admits clients with.
    """
    settings = settings or PortalSettings()
    portal = Portal(
        store=AsyncStore(engine, timeout=settings.store_budget, owner="the portal"),
        paths=paths,
        control=control,
        settings=settings,
        throttle=security.LoginThrottle(clock),
        traffic=TrafficHistory(),
        clock=clock,
    )
    app = web.Application(
        middlewares=[
            security.security_headers,
            outage_middleware(settings.store_budget),
            aiohttp_session.session_middleware(portal.sessions),
            pages.session_middleware,
            error_pages,
            pages.csrf_middleware,
            api.api_middleware,
        ],
        client_max_size=64 * 1024,
    )
    app[PORTAL] = portal
    app.on_response_prepare.append(security.server_header)
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("web", "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        filters={"when": when},
    )
    for module in (auth, two_factor, devices, admin, admin_ops, ipsec, nodes, alarms, access,
                   onboarding, api, api_ipsec, api_nodes, api_traffic, api_access,
                   traffic_history):
        module.add_routes(app)
    app.router.add_static("/static/", STATIC_DIR, name="static")
    add_health_routes(app, Health(checks={"store": store_reachable(portal.store)}))
    if control is not None:
        app.cleanup_ctx.append(_sample_traffic)
    app.on_cleanup.append(_close_store)
    return app


async def _close_store(app: web.Application) -> None:
    await app[PORTAL].store.close()


async def _sample_traffic(app: web.Application) -> AsyncIterator[None]:
    """Poll the gateway's byte counters so the dashboard can chart bytes/s over time."""
    portal = app[PORTAL]

    async def loop() -> None:
        while True:
            await portal.sample_traffic()
            await asyncio.sleep(portal.settings.refresh_seconds)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


FIRST_ADMIN = "admin"


def ensure_first_admin(engine: Engine) -> str | None:
    """On first start create user ``admin``; returns its one-time password (else None).

    The slow password hash is computed before the writer lock is taken, not while holding it.
    """
    with db.session(engine, write=False) as s:
        if _has_admin(s):
            return None
    password = generate_password()
    hashed = hash_password(password)
    with db.session(engine, write=True) as s:
        if _has_admin(s):  # another process created one meanwhile
            return None
        admin = queries.create_user(s, name=FIRST_ADMIN, role="admin", password_hash=hashed)
        admin.password_one_time_until = one_time_until()  # changed at the first login
        queries.record_audit(s, actor="portal", action="user.create", target=FIRST_ADMIN)
    return password


def _has_admin(s: Session) -> bool:
    return any(u.role == "admin" for u in queries.list_users(s))


def is_loopback(host: str) -> bool:
    """Plain HTTP is allowed only for loopback hosts (the demo default)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 in brackets) into its parts."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address must be HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Served:
    """What `run_portal` bound to, for the caller to print."""

    url: str
    runner: web.AppRunner


async def start_portal(app: web.Application, listen: str, tls: ssl.SSLContext | None) -> Served:
    """Bind and start serving; refuses plain HTTP on anything but loopback."""
    host, port = parse_listen(listen)
    if tls is None and not is_loopback(host):
        raise ValueError("plain HTTP is only allowed on a loopback address; give a certificate")
    return await start_site(app, host, port, tls)


async def start_site(app: web.Application, host: str, port: int,
                     tls: ssl.SSLContext | None) -> Served:
    """Bind and start serving ``app``, whatever the address."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    await site.start()
    bound = runner.addresses[0] if runner.addresses else (host, port)
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if tls is not None else "http"
    return Served(url=f"{scheme}://{shown}:{bound[1]}/", runner=runner)


async def run_portal(app: web.Application, listen: str, tls: ssl.SSLContext | None) -> None:
    """Serve until cancelled, then close connections cleanly."""
    served = await start_portal(app, listen, tls)
    try:
        await asyncio.Event().wait()
    finally:
        await served.runner.cleanup()
