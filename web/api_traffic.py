"""``GET /api/v1/traffic?scope=...&from=...&to=...``: one scope's traffic history as JSON
(`sslvpn.store.traffic_queries`). Authentication and JSON errors come from
`web.api.api_middleware`; the answer matches `web.api_models.TrafficSeries`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiohttp import web

from sslvpn.store import traffic_queries
from web.api import PREFIX, QUERIES
from web.api_models import BadRequest, TrafficQuery
from web.pages import portal_of

TRAFFIC = f"{PREFIX}/traffic"
DEFAULT_SPAN = timedelta(hours=1)
MAX_SPAN = timedelta(days=366)
QUERIES[TRAFFIC] = TrafficQuery


def _time(request: web.Request, field: str, default: datetime) -> datetime:
    text = request.query.get(field)
    if text is None:
        return default
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{field}: not an ISO 8601 date-time") from None
    if value.tzinfo is None:
        raise BadRequest(f"{field}: give a time zone offset (e.g. Z)")
    return value.astimezone(UTC)


async def get_traffic(request: web.Request) -> web.StreamResponse:
    scope, _, name = request.query["scope"].partition(":")  # TrafficQuery's pattern
    now = datetime.now(UTC)
    end = _time(request, "to", now)
    start = max(_time(request, "from", end - DEFAULT_SPAN), end - MAX_SPAN)
    points = await portal_of(request).read(lambda s: traffic_queries.series(
        s, scope=scope, name=name, start=start, end=end))
    return web.json_response({
        "scope": scope, "name": name, "from": start.isoformat(), "to": end.isoformat(),
        "points": [{"start": p.start.isoformat(), "seconds": p.seconds,
                    "bytes_in": p.bytes_in, "bytes_out": p.bytes_out} for p in points],
    })


def add_routes(app: web.Application) -> None:
    app.router.add_get(TRAFFIC, get_traffic)
