"""The /api/v1 part for the fleet's nodes: list, add, remove, and the VPC routes they need,
with the same checks and audit as `sslvpn node` and the portal's nodes page (`web.node_ops`).
Authentication and JSON errors come from `web.api.api_middleware`; every answer matches
`web.openapi`: a field that breaks the document's patterns is a 400, a well-formed node the
fleet refuses (its pools do not fit, its name is taken) a 409.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from aiohttp import web

from sslvpn.store import NotFoundError
from web import node_ops
from web.api import PREFIX, QUERY_PARAMETERS, BadRequest, body_of, error
from web.openapi_fleet import PATTERNS

NODES = f"{PREFIX}/nodes"
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


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(NODES, list_nodes)
    r.add_post(NODES, add_node)
    r.add_delete(f"{NODES}/{{name}}", remove_node)
    r.add_get(f"{PREFIX}/node-routes", list_routes)
