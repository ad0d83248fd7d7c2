"""The traffic charts: a node, an IPsec tunnel or a user over the last hour, day or week,
from the store's traffic history (`sslvpn.store.traffic_queries`), redrawn live by
static/portal.js. Admins chart any scope; a user charts their own traffic only.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from aiohttp import web

from sslvpn.store import traffic_queries
from web.api_models import SCOPE_PATTERN
from web.pages import portal_of, render, require_user, user_of

# span -> (how far back, seconds per point on the chart)
SPANS = {"hour": (timedelta(hours=1), 60), "day": (timedelta(days=1), 600),
         "week": (timedelta(days=7), 3600)}
DEFAULT_NODE = "node:default"


def _scope(request: web.Request) -> tuple[str, str]:
    """The scope asked for and allowed: a user's own traffic unless they are an admin."""
    me = user_of(request)
    assert me is not None  # noqa: S101 (require_user)
    own = f"user:{me.name}"
    asked = request.query.get("scope") or (DEFAULT_NODE if me.role == "admin" else own)
    if not re.fullmatch(SCOPE_PATTERN, asked):
        raise web.HTTPBadRequest(text="scope must be node:NAME, tunnel:NAME or user:NAME")
    if me.role != "admin" and asked != own:
        raise web.HTTPForbidden(text="you may chart your own traffic only")
    scope, _, name = asked.partition(":")
    return scope, name


def _span(request: web.Request) -> str:
    span = request.query.get("span", "hour")
    if span not in SPANS:
        raise web.HTTPBadRequest(text="span must be hour, day or week")
    return span


@require_user
async def traffic_page(request: web.Request) -> web.StreamResponse:
    scope, name = _scope(request)
    span = _span(request)
    context = {"scope": scope, "name": name, "span": span, "spans": list(SPANS),
               "refresh": portal_of(request).settings.refresh_seconds}
    return render(request, "traffic.html", context)


@require_user
async def traffic_json(request: web.Request) -> web.StreamResponse:
    """Rates (bytes/s) per chart point over the span, oldest first; empty points are 0."""
    scope, name = _scope(request)
    back, step = SPANS[_span(request)]
    end = datetime.now(UTC)
    start = end - back
    buckets = await portal_of(request).read(lambda s: traffic_queries.series(
        s, scope=scope, name=name, start=start, end=end))
    first = int(start.timestamp()) // step * step
    sums = [[0, 0] for _ in range((int(end.timestamp()) - first) // step + 1)]
    for bucket in buckets:
        both = sums[(int(bucket.start.timestamp()) - first) // step]
        both[0] += bucket.bytes_in
        both[1] += bucket.bytes_out
    points = [{"at": first + i * step, "in": round(b[0] / step, 1), "out": round(b[1] / step, 1)}
              for i, b in enumerate(sums)]
    return web.json_response({"scope": scope, "name": name, "step": step, "points": points})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/traffic", traffic_page)
    app.router.add_get("/traffic.json", traffic_json)
