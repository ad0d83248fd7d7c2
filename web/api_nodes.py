"""The /api/v1 part for the fleet's nodes: list, add, remove, and the VPC routes they need,
with the same checks and audit as `sslvpn node` and the portal's nodes page (`web.node_ops`);
and the keepalive pushed to clients with the heartbeat timeout (how fast clients of a dead
node move, and how fast the fleet calls it down), checked as the settings page checks them.
Authentication and JSON errors come from `web.api.api_middleware`; every answer matches
`web.openapi`: a field that breaks the document's patterns is a 400, a well-formed node the
fleet refuses (its pools do not fit, its name is taken) a 409.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from aiohttp import web
from sqlmodel import Session

from sslvpn.store import NotFoundError, queries
from sslvpn.store.models import GatewaySettings
from web import node_ops
from web.api import PREFIX, QUERY_PARAMETERS, BadRequest, body_of, error
from web.openapi_fleet import PATTERNS
from web.pages import audit, portal_of
from web.views.admin_ops import LIVENESS_FIELDS, parse_liveness

NODES = f"{PREFIX}/nodes"
KEEPALIVE = f"{PREFIX}/keepalive"
FORCE_VALUES = {"true": True, "false": False}
MAX_VPC_ADDRESSES = 2
QUERY_PARAMETERS[f"{NODES}/{{name}}"] = frozenset({"force"})


def _matching(value: str, field: str, pattern: str) -> str:
    if not re.fullmatch(PATTERNS[pattern], value):
        raise BadRequest(f"field {field!r} does not match {PATTERNS[pattern]}")
    return value


def _all_matching(body: dict[str, Any], field: str, pattern: str) -> list[str]:
    values = body.get(field, [])
    if not all(isinstance(value, str) for value in values):
        raise BadRequest(f"field {field!r} must be a list of strings")
    return [_matching(value, field, pattern) for value in values]


async def list_nodes(request: web.Request) -> web.StreamResponse:
    return web.json_response([n.as_json() for n in await node_ops.statuses(request)])


async def add_node(request: web.Request) -> web.StreamResponse:
    body = await body_of(request, {"name": str, "public_addresses": list, "pool": str,
                                   "pool6": str, "vpc_addresses": list})
    addresses = _all_matching(body, "public_addresses", "public_address")
    hops = _all_matching(body, "vpc_addresses", "vpc_address")
    if "name" not in body or not addresses or len(hops) > MAX_VPC_ADDRESSES:
        raise BadRequest("give a name, 1 or more public_addresses and at most 2 vpc_addresses")
    pool, pool6 = body.get("pool"), body.get("pool6")
    try:
        node = await node_ops.add(
            request, name=_matching(body["name"], "name", "name"), public_addresses=addresses,
            pool=None if pool is None else _matching(pool, "pool", "pool"),
            pool6=None if pool6 is None else _matching(pool6, "pool6", "pool6"),
            vpc_addresses=hops,
        )
    except node_ops.OperationError as exc:  # well-formed, but the fleet refuses it
        return error(409, str(exc))
    return web.json_response(node.as_json(), status=201)


async def remove_node(request: web.Request) -> web.StreamResponse:
    force = FORCE_VALUES.get(request.query.get("force", "false").lower())
    if force is None:
        raise BadRequest("force must be true or false")
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
    body = await body_of(request, dict.fromkeys(LIVENESS_FIELDS, int))
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
