"""The admin page for the access policy: groups and their members, the rules in evaluation
order with their hit counters (from this host's gateway), the default, and a "who can reach
what" form that answers as `sslvpn policy check` does. Every form is checked as the CLI
checks it (a refused form comes back with the reason and nothing changed) and audited.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from sslvpn.net.access import DEFAULTS, PROTOCOLS, AccessError
from sslvpn.store import StoreError
from web import access_ops
from web.pages import flash, form_of, render, require_admin

PAGE = "/admin/access"
MAX_FIELD = 200  # characters in any one form field


async def render_access(request: web.Request, *, status: int = 200,
                        errors: list[str] | None = None,
                        context: dict[str, Any] | None = None) -> web.Response:
    overview = await access_ops.overview(request)
    return render(request, "admin_access.html",
                  {"o": overview, "protocols": PROTOCOLS, "defaults": DEFAULTS,
                   "form": {}, **(context or {})}, status=status, errors=errors)


async def _apply(request: web.Request, change: Awaitable[object], done: str,
                 form: dict[str, str]) -> web.StreamResponse:
    """Run one change; a refusal re-renders the page with the reason (400)."""
    try:
        await change
    except (StoreError, AccessError) as exc:
        return await render_access(request, status=400, errors=[str(exc)],
                                   context={"form": form})
    flash(request, done)
    raise web.HTTPSeeOther(PAGE)


async def _form(request: web.Request) -> dict[str, str]:
    form = await form_of(request)
    return {k: v.strip() for k, v in form.items() if len(v) <= MAX_FIELD}


@require_admin
async def access_page(request: web.Request) -> web.StreamResponse:
    return await render_access(request)


@require_admin
async def add_group(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    name = form.get("name", "")
    return await _apply(request, access_ops.add_group(request, name), f"Group {name} added.",
                        form)


@require_admin
async def delete_group(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    return await _apply(request, access_ops.delete_group(request, name),
                        f"Group {name} and its rules deleted.", {})


@require_admin
async def change_members(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    user, group = form.get("user", ""), form.get("group", "")
    leave = form.get("action") == "remove"
    change = access_ops.change_groups(request, user, add=[] if leave else [group],
                                      remove=[group] if leave else [])
    return await _apply(request, change, f"{user} {'left' if leave else 'joined'} {group}; "
                        "live sessions follow within 5 s.", form)


@require_admin
async def add_rule(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    owner_kind, owner = form.get("owner_kind", "group"), form.get("owner", "")
    try:
        priority = int(form.get("priority") or "100")
    except ValueError:
        return await render_access(request, status=400, errors=["a priority is a number"],
                                   context={"form": form})
    change = access_ops.add_rule(
        request, group=owner if owner_kind == "group" else None,
        user=owner if owner_kind == "user" else None, destination=form.get("to", ""),
        protocol=form.get("proto", "any"), ports=form.get("port") or None,
        allow=form.get("action") != "deny", priority=priority)
    return await _apply(request, change, "Rule added: live sessions follow within 5 s, "
                        "pushed routes at their next connect.", form)


@require_admin
async def delete_rule(request: web.Request) -> web.StreamResponse:
    try:
        rule_id = int(request.match_info["rule_id"])
    except ValueError:
        raise web.HTTPNotFound() from None
    return await _apply(request, access_ops.delete_rule(request, rule_id),
                        f"Rule {rule_id} deleted.", {})


@require_admin
async def set_default(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    default = form.get("default", "")
    return await _apply(request, access_ops.set_default(request, default),
                        f"Default set to {default}.", form)


@require_admin
async def check(request: web.Request) -> web.StreamResponse:
    """The "who can reach what" form (GET: it changes nothing)."""
    user, destination = (request.query.get("user", "").strip()[:MAX_FIELD],
                         request.query.get("dest", "").strip()[:MAX_FIELD])
    try:
        target, verdict = await access_ops.check(request, user, destination)
    except (StoreError, AccessError) as exc:
        return await render_access(request, status=400, errors=[str(exc)],
                                   context={"check": {"user": user, "dest": destination}})
    return await render_access(request, context={"check": {
        "user": user, "dest": destination, "target": target, "verdict": verdict}})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(PAGE, access_page)
    r.add_get(PAGE + "/check", check)
    r.add_post(PAGE + "/groups", add_group)
    r.add_post(PAGE + "/groups/{name}/delete", delete_group)
    r.add_post(PAGE + "/members", change_members)
    r.add_post(PAGE + "/rules", add_rule)
    r.add_post(PAGE + "/rules/{rule_id}/delete", delete_rule)
    r.add_post(PAGE + "/default", set_default)
