"""The /api/v1 part for the access policy: groups, members, rules, the default and the "who
can reach what" check, with the same checks and audit as `sslvpn group/rule/policy` and the
portal's access page (`web.access_ops`). Authentication and JSON errors come from
`web.api.api_middleware`; every answer matches `web.openapi`: a field that breaks the
document's patterns is a 400, an unknown group or user a 404, a well-formed rule the policy
refuses (or a destination that is no address or port) a 409.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from sslvpn.net.access import AccessError, Rule
from sslvpn.store import DuplicateError, NotFoundError, StoreError
from web import access_ops
from web import api_models as m
from web.api import PREFIX, QUERIES, error
from web.api_models import parsed

GROUPS, RULES, DEFAULT, CHECK = (f"{PREFIX}/groups", f"{PREFIX}/rules",
                                 f"{PREFIX}/access-default", f"{PREFIX}/policy-check")
QUERIES[CHECK] = m.PolicyCheckQuery


def _refused(exc: StoreError | AccessError) -> web.Response:
    if isinstance(exc, NotFoundError):
        return error(404, str(exc))
    return error(409, str(exc))


def rule_json(rule: Rule, hits: dict[tuple[str, bool], int] | None) -> dict[str, Any]:
    kind, _, owner = rule.owner.partition(" ")
    return {"id": rule.id, "group": owner if kind == "group" else None,
            "user": owner if kind == "user" else None, "to": str(rule.network),
            "proto": rule.protocol, "ports": None if rule.ports is None else rule.ports_text,
            "action": "allow" if rule.allow else "deny", "priority": rule.priority,
            "packets": None if hits is None else hits.get((str(rule.id), rule.allow), 0)}


async def list_groups(request: web.Request) -> web.StreamResponse:
    overview = await access_ops.overview(request)
    return web.json_response([{"name": g.name, "members": g.members, "rules": g.rules}
                              for g in overview.groups])


async def add_group(request: web.Request) -> web.StreamResponse:
    name = (await parsed(request, m.NewGroup)).name
    try:
        await access_ops.add_group(request, name)
    except DuplicateError as exc:
        return error(409, str(exc))
    return web.json_response({"name": name, "members": [], "rules": 0}, status=201)


async def delete_group(request: web.Request) -> web.StreamResponse:
    try:
        await access_ops.delete_group(request, request.match_info["name"])
    except NotFoundError:
        raise web.HTTPNotFound() from None
    return web.json_response({"deleted": True})


async def user_groups(request: web.Request) -> web.StreamResponse:
    user = request.match_info["name"]
    try:
        groups = await access_ops.groups_of(request, user)
    except NotFoundError:
        raise web.HTTPNotFound() from None
    return web.json_response({"user": user, "groups": groups})


async def change_user_groups(request: web.Request) -> web.StreamResponse:
    body = await parsed(request, m.GroupChange)
    user = request.match_info["name"]
    try:
        groups = await access_ops.change_groups(request, user, add=body.add, remove=body.remove)
    except NotFoundError as exc:
        return error(404, str(exc))
    return web.json_response({"user": user, "groups": groups})


async def list_rules(request: web.Request) -> web.StreamResponse:
    overview = await access_ops.overview(request)
    return web.json_response([rule_json(r, overview.hits) for r in overview.rules])


async def add_rule(request: web.Request) -> web.StreamResponse:
    body = await parsed(request, m.NewRule)
    try:
        rule_id = await access_ops.add_rule(
            request, group=body.group, user=body.user, destination=body.to, protocol=body.proto,
            ports=body.port, allow=not body.deny, priority=body.priority)
    except (StoreError, AccessError) as exc:
        return _refused(exc)
    overview = await access_ops.overview(request)
    [rule] = [r for r in overview.rules if r.id == rule_id]
    return web.json_response(rule_json(rule, overview.hits), status=201)


async def delete_rule(request: web.Request) -> web.StreamResponse:
    try:
        await access_ops.delete_rule(request, int(request.match_info["rule_id"]))
    except (ValueError, NotFoundError):
        raise web.HTTPNotFound() from None
    return web.json_response({"deleted": True})


async def get_default(request: web.Request) -> web.StreamResponse:
    return web.json_response({"default": (await access_ops.overview(request)).default})


async def set_default(request: web.Request) -> web.StreamResponse:
    default = (await parsed(request, m.AccessDefault)).default
    await access_ops.set_default(request, default)
    return web.json_response({"default": default})


async def check(request: web.Request) -> web.StreamResponse:
    user, destination = request.query["user"], request.query["dest"]  # PolicyCheckQuery
    try:
        target, verdict = await access_ops.check(request, user, destination)
    except NotFoundError:
        raise web.HTTPNotFound() from None
    except AccessError as exc:  # matches the pattern, but no address or port
        return error(409, str(exc))
    return web.json_response({
        "allow": verdict.allow, "user": user, "destination": target,
        "decided_by": verdict.decided_by, "rule_id": verdict.rule_id, "route": verdict.route,
        "nodes": verdict.nodes, "pushed_routes": verdict.pushed})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(GROUPS, list_groups)
    r.add_post(GROUPS, add_group)
    r.add_delete(f"{GROUPS}/{{name}}", delete_group)
    r.add_get(f"{PREFIX}/users/{{name}}/groups", user_groups)
    r.add_post(f"{PREFIX}/users/{{name}}/groups", change_user_groups)
    r.add_get(RULES, list_rules)
    r.add_post(RULES, add_rule)
    r.add_delete(f"{RULES}/{{rule_id}}", delete_rule)
    r.add_get(DEFAULT, get_default)
    r.add_put(DEFAULT, set_default)
    r.add_get(CHECK, check)
