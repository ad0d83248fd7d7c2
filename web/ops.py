"""The operations listener: ``GET /metrics`` in the Prometheus text format (or OpenMetrics,
as the scraper's Accept header asks), ``/healthz`` and ``/readyz`` (`web.health`).

It is a listener of its own (``--metrics-listen``), apart from the portal: a scraper needs
no login, TLS or CSRF, and an operator firewalls it separately. Off unless asked for; a bare
port binds loopback. Plain HTTP, like every Prometheus exporter: binding it beyond loopback
is the operator's explicit choice.
"""

from __future__ import annotations

from aiohttp import web

from sslvpn.runtime.metrics import Metrics
from web.app import Served, parse_listen, start_site
from web.health import Health, add_health_routes

METRICS_KEY = web.AppKey("metrics", Metrics)


def metrics_listen(text: str) -> str:
    """``HOST:PORT`` as given, or a bare ``PORT`` on loopback; ValueError when neither."""
    listen = f"127.0.0.1:{text}" if text.isdigit() else text
    parse_listen(listen)
    return listen


def create_ops_app(metrics: Metrics, health: Health) -> web.Application:
    app = web.Application()
    app[METRICS_KEY] = metrics
    app.router.add_get("/metrics", _metrics)
    add_health_routes(app, health)
    return app


async def start_ops(app: web.Application, listen: str) -> Served:
    """Bind ``listen`` (see `metrics_listen`) and serve plain HTTP."""
    host, port = parse_listen(listen)
    return await start_site(app, host, port, None)


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = await request.app[METRICS_KEY].scrape(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type,
                                            "Cache-Control": "no-store"})
