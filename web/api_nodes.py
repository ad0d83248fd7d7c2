"""The /api/v1 part for the fleet's nodes: list, add, remove, and the VPC routes they need,
with the same checks and audit as `sslvpn node` and the portal's nodes page (`web.node_ops`);
and the keepalive pushed to clients with the heartbeat timeout (how fast clients of a dead
node move, and how fast the fleet calls it down), checked as the settings page checks them.
Authentication and JSON errors come from `web.api.api_middleware`; every answer matches
`web.openapi`: a field that breaks the document's patterns is a 400, a well-formed node the
fleet refuses (its pools do not fit, its name is taken) a 409.
"""

from __future__ import annotations

from dataclasses import asdict

from aiohttp import web
from sqlmodel import Session

from sslvpn.store import NotFoundError, queries
from sslvpn.store.models import GatewaySettings
from web import api_models as m
from web import node_ops
from web.api import PREFIX, QUERIES, error
from web.api_models import parsed
from web.pages import audit, portal_of
from web.views.admin_ops import LIVENESS_FIELDS, parse_liveness

NODES = f"{PREFIX}/nodes"
KEEPALIVE = f"{PREFIX}/keepalive"
QUERIES[f"{NODES}/{{name}}"] = m.NodeRemovalQuery


async def list_nodes(request: web.Request) -> web.StreamResponse:
    return web.json_response([n.as_json() for n in await node_ops.statuses(request)])


async def add_node(request: web.Request) -> web.StreamResponse:
    body = await parsed(request, m.NewNode)
    try:
        node = await node_ops.add(
            request, name=body.name, public_addresses=body.public_addresses, pool=body.pool,
            pool6=body.pool6, vpc_addresses=body.vpc_addresses,
        )
    except node_ops.OperationError as exc:  # well-formed, but the fleet refuses it
        return error(409, str(exc))
    return web.json_response(node.as_json(), status=201)


async def remove_node(request: web.Request) -> web.StreamResponse:
    force = request.query.get("force") == "true"  # or false: NodeRemovalQuery
    try:
        ended = await node_ops.remove(request, name=request.match_info["name"], force=force)
    except NotFoundError:
        raise web.HTTPNotFound() from None
    except node_ops.OperationError as exc:
        return error(409, str(exc))
    return web.json_response({"deleted": True, "sessions_ended": ended})


async def list_routes(request: web.Request) -> web.StreamResponse:
    return web.json_response([asdict(entry) for entry in await node_ops.routes(request)])


def _liveness(settings: GatewaySettings) -> dict[str, int]:
    return {name: getattr(settings, name) for name in LIVENESS_FIELDS}


async def get_keepalive(request: web.Request) -> web.StreamResponse:
    name = portal_of(request).settings.gateway_name
    settings = await portal_of(request).read(lambda s: queries.get_settings(s, name=name))
    return web.json_response(_liveness(settings))


async def set_keepalive(request: web.Request) -> web.StreamResponse:
    """The pushed ping/ping-restart and the heartbeat timeout, checked as the settings page
    checks them; a field left out keeps its value."""
    body = (await parsed(request, m.KeepaliveChange)).model_dump(exclude_none=True)
    name = portal_of(request).settings.gateway_name
    errors: list[str] = []

    def save(s: Session) -> dict[str, int] | None:
        settings = queries.get_settings(s, name=name)
        liveness = parse_liveness({k: str(v) for k, v in body.items()}, settings, errors)
        if liveness is None:
            return None
        settings.keepalive_interval, settings.keepalive_timeout, settings.heartbeat_timeout = (
            liveness)
        queries.save_settings(s, settings=settings)
        return _liveness(settings)

    saved = await portal_of(request).write(save)
    if saved is None:  # well-formed, but the restart would not wait for two pings
        return error(409, " ".join(errors))
    await audit(request, "settings.change", target=name, detail=f"{saved} via=api")
    return web.json_response(saved)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(NODES, list_nodes)
    r.add_post(NODES, add_node)
    r.add_delete(f"{NODES}/{{name}}", remove_node)
    r.add_get(f"{PREFIX}/node-routes", list_routes)
    r.add_get(KEEPALIVE, get_keepalive)
    r.add_put(KEEPALIVE, set_keepalive)
