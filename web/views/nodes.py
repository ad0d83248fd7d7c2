"""The admin page for the fleet's nodes: each node's state, sub-pools and live sessions, the
VPC routes they need, and forms to add and remove nodes with the same checks as `sslvpn node`
(a refused form comes back with the reason and nothing changed).
"""

from __future__ import annotations

from aiohttp import web

from web import node_ops
from web.pages import flash, form_of, render, require_admin

PAGE = "/admin/nodes"


async def render_nodes(
    request: web.Request,
    *,
    status: int = 200,
    errors: list[str] | None = None,
    form: dict[str, str] | None = None,
) -> web.Response:
    context = {
        "nodes": await node_ops.statuses(request),
        "routes": await node_ops.routes(request),
        "form": form or {},
    }
    return render(request, "admin_nodes.html", context, status=status, errors=errors)


@require_admin
async def nodes_page(request: web.Request) -> web.StreamResponse:
    return await render_nodes(request)


@require_admin
async def add_node(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    try:
        node = await node_ops.add(
            request,
            name=form.get("name", "").strip(),
            public_addresses=form.get("public_addresses", "").replace(",", " ").split(),
            pool=form.get("pool", "").strip() or None,
            pool6=form.get("pool6", "").strip() or None,
            vpc_addresses=form.get("vpc_address", "").replace(",", " ").split(),
        )
    except node_ops.OperationError as exc:
        return await render_nodes(request, status=400, errors=[str(exc)], form=form)
    flash(request, f"Node {node.name} added with the client pool {node.pools}. Add its routes to "
                   "the VPC route table (below), then run `sslvpn serve --node "
                   f"{node.name}` on it.")
    raise web.HTTPSeeOther(PAGE)


@require_admin
async def remove_node(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    force = (await form_of(request)).get("force") == "yes"
    try:
        ended = await node_ops.remove(request, name=name, force=force)
    except node_ops.OperationError as exc:
        return await render_nodes(request, status=409, errors=[str(exc)])
    flash(request, f"Node {name} removed; {ended} session(s) ended.")
    raise web.HTTPSeeOther(PAGE)


def add_routes(app: web.Application) -> None:
    app.router.add_get(PAGE, nodes_page)
    app.router.add_post(PAGE, add_node)
    app.router.add_post(PAGE + "/{name}/remove", remove_node)
