"""The portal's and the REST API's calls into the fleet's node registry (`client_profiles.fleet`),
with the actor and source address taken from the request. The store work runs in a thread,
never on the portal's event loop; refusals are `OperationError`s with one line to show.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiohttp import web

from client_profiles import fleet
from client_profiles.fleet import NodeStatus, RouteEntry
from sslvpn.store import db
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
    return await asyncio.to_thread(
        fleet.add_node, portal_of(request).engine, name=name, public_addresses=public_addresses,
        pool=pool, pool6=pool6, vpc_addresses=vpc_addresses, actor=_actor(request),
        source_address=client_address(request),
    )


async def remove(request: web.Request, *, name: str, force: bool) -> int:
    """Remove a node; returns how many of its sessions a forced removal ended."""
    return await asyncio.to_thread(
        fleet.remove_node, portal_of(request).engine, name=name, force=force,
        actor=_actor(request), source_address=client_address(request),
    )


async def statuses(request: web.Request) -> list[NodeStatus]:
    return await asyncio.to_thread(fleet.node_statuses, portal_of(request).engine)


async def routes(request: web.Request) -> list[RouteEntry]:
    def read() -> list[RouteEntry]:
        with db.session(portal_of(request).engine, write=False) as s:
            return fleet.route_entries(s)

    return await asyncio.to_thread(read)
