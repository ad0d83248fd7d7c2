"""The portal's and the REST API's calls into the access policy (`sslvpn.store.access_queries`),
with the actor and source address taken from the request, in the portal's store threads.
Refusals are store errors (`RejectedError`, `NotFoundError`, `DuplicateError`) or an
`AccessError` for a destination that cannot be read, each with one line to show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web
from sqlmodel import Session

from sslvpn.net.access import Rule, format_destination, parse_destination
from sslvpn.store import access_queries, queries
from sslvpn.store.access_queries import Actor, GroupRow, Verdict
from web.pages import portal_of, user_of
from web.security import client_address


@dataclass(frozen=True)
class Overview:
    """What the access page shows."""

    groups: list[GroupRow]
    rules: list[Rule]
    default: str
    users: list[str]
    hits: dict[tuple[str, bool], int] | None  # None: no gateway attached to this portal


def actor(request: web.Request) -> Actor:
    user = user_of(request)
    return Actor(user.name if user else "anonymous", client_address(request))


async def overview(request: web.Request) -> Overview:
    def read(s: Session) -> tuple[list[GroupRow], list[Rule], str, list[str]]:
        return (access_queries.list_groups(s), access_queries.list_rules(s),
                access_queries.load_policy(s).default,
                [u.name for u in queries.list_users(s)])

    groups, rules, default, users = await portal_of(request).read(read)
    return Overview(groups, rules, default, users, await portal_of(request).access_hits())


async def add_group(request: web.Request, name: str) -> None:
    by = actor(request)
    await portal_of(request).write(lambda s: access_queries.add_group(s, name=name, by=by))


async def delete_group(request: web.Request, name: str) -> None:
    by = actor(request)
    await portal_of(request).write(lambda s: access_queries.delete_group(s, name=name, by=by))


async def groups_of(request: web.Request, user: str) -> list[str]:
    return await portal_of(request).read(lambda s: access_queries.groups_of(s, user=user))


async def change_groups(request: web.Request, user: str, *, add: Sequence[str] = (),
                        remove: Sequence[str] = ()) -> list[str]:
    by = actor(request)
    return await portal_of(request).write(lambda s: access_queries.change_groups(
        s, user=user, add=add, remove=remove, by=by))


async def add_rule(request: web.Request, *, group: str | None, user: str | None,
                   destination: str, protocol: str, ports: str | None, allow: bool,
                   priority: int) -> int:
    """The new rule's id."""
    by, gateway = actor(request), portal_of(request).settings.gateway_name
    return await portal_of(request).write(lambda s: access_queries.add_rule(
        s, group=group, user=user, destination=destination, protocol=protocol, ports=ports,
        allow=allow, priority=priority, gateway_name=gateway, by=by).id or 0)


async def delete_rule(request: web.Request, rule_id: int) -> None:
    by = actor(request)
    await portal_of(request).write(lambda s: access_queries.delete_rule(s, rule_id=rule_id,
                                                                        by=by))


async def set_default(request: web.Request, default: str) -> None:
    by = actor(request)
    await portal_of(request).write(lambda s: access_queries.set_default(s, default=default,
                                                                        by=by))


async def check(request: web.Request, user: str, destination: str) -> tuple[str, Verdict]:
    """The destination as understood, and the verdict `sslvpn policy check` would give."""
    protocol, address, port, name = parse_destination(destination)
    gateway = portal_of(request).settings.gateway_name
    verdict = await portal_of(request).read(lambda s: access_queries.check(
        s, user=user, protocol=protocol, address=address, port=port, gateway_name=gateway))
    return format_destination(address, port, name), verdict
