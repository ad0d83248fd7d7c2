"""``GET /healthz`` (the process is alive) and ``GET /readyz`` (it can serve), for the metrics
listener and the portal, as load balancers and service managers probe them.

``/healthz`` answers 200 unless the optional ``alive`` check fails (the gateway's event loop
does not answer): a wedged process is not alive. ``/readyz`` runs every named check, each
bounded by ``CHECK_TIMEOUT``, and answers 200 when all pass, 503 otherwise, with each
check's verdict as JSON (``{"ready": false, "checks": {"store": false, ...}}``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from sqlalchemy import text

from sslvpn.store import StoreError
from sslvpn.store.async_store import AsyncStore

CHECK_TIMEOUT = 2.0  # seconds one check may take before it counts as failed
Check = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class Health:
    checks: Mapping[str, Check] = field(default_factory=dict)
    alive: Check | None = None


HEALTH_KEY = web.AppKey("health", Health)


def add_health_routes(app: web.Application, health: Health) -> None:
    app[HEALTH_KEY] = health
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)


def store_reachable(store: AsyncStore) -> Check:
    """One trivial read answered within the bound."""

    async def check() -> bool:
        try:
            await store.read(lambda s: s.connection().execute(text("SELECT 1")).scalar(),
                             timeout=CHECK_TIMEOUT)
        except StoreError:
            return False
        return True

    return check


async def _passes(check: Check) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            return await check()
    except TimeoutError:
        return False


async def _healthz(request: web.Request) -> web.Response:
    alive = request.app[HEALTH_KEY].alive
    if alive is not None and not await _passes(alive):
        return web.json_response({"alive": False}, status=503, headers=_NO_STORE)
    return web.json_response({"alive": True}, headers=_NO_STORE)


async def _readyz(request: web.Request) -> web.Response:
    checks = request.app[HEALTH_KEY].checks
    verdicts = await asyncio.gather(*(_passes(check) for check in checks.values()))
    results = dict(zip(checks, verdicts, strict=True))
    ready = all(verdicts)
    return web.json_response({"ready": ready, "checks": results}, status=200 if ready else 503,
                             headers=_NO_STORE)


_NO_STORE = {"Cache-Control": "no-store"}
