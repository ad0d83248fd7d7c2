"""The portal's and the REST API's calls into the fleet's node registry (`client_profiles.fleet`),
with the actor and source address taken from the request. The store work runs in the
portal's store threads within the request's budget, never on the portal's event loop;
refusals are `OperationError`s with one line to show.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from client_profiles import fleet
from client_profiles.fleet import NodeStatus, RouteEntry
from web.pages import portal_of, user_of
from web.pki_ops import OperationError as OperationError
from web.security import client_address


def _actor(request: web.Request) -> str:
    user = user_of(request)
    return user.name if user else "anonymous"


async def add(
    request: web.Request,
    *,
    name: str,
    public_addresses: Sequence[str],
    pool: str | None,
    pool6: str | None,
    vpc_addresses: Sequence[str],
) -> NodeStatus:
    actor, address = _actor(request), client_address(request)
    return await portal_of(request).call(
        lambda engine: fleet.add_node(
            engine, name=name, public_addresses=public_addresses, pool=pool, pool6=pool6,
            vpc_addresses=vpc_addresses, actor=actor, source_address=address,
        )
    )


async def remove(request: web.Request, *, name: str, force: bool) -> int:
    """Remove a node; returns how many of its sessions a forced removal ended."""
    actor, address = _actor(request), client_address(request)
    return await portal_of(request).call(
        lambda engine: fleet.remove_node(
            engine, name=name, force=force, actor=actor, source_address=address
        )
    )


async def statuses(request: web.Request) -> list[NodeStatus]:
    return await portal_of(request).call(fleet.node_statuses, writes=False)


async def routes(request: web.Request) -> list[RouteEntry]:
    return await portal_of(request).read(fleet.route_entries)
