"""The /api/v1/ipsec part of the REST API: VPN gateways, customer gateways, tunnels (with
their live status) and SPD policies, with the same checks and audit as the admin pages
(`web.ipsec_ops`). Authentication and JSON errors come from `web.api.api_middleware`;
every answer matches `web.openapi`. A tunnel's pre-shared key is accepted in a request body
and never appears in an answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from sqlmodel import Session

from sslvpn.runtime.control import TunnelStatus
from sslvpn.store import NotFoundError, StoreError
from sslvpn.store import ipsec_queries as q
from sslvpn.store.models import CustomerGateway, SpdPolicy, VpnGateway, VpnTunnel
from web import api_models as m
from web import ipsec_ops
from web.api import PREFIX, error
from web.api_models import parsed
from web.ipsec_ops import GatewayRefused, Invalid, TunnelRequest, config_download
from web.pages import portal_of

BASE = f"{PREFIX}/ipsec"
VIA = "api"
Row = TypeVar("Row", VpnGateway, CustomerGateway)


def refusal(exc: Exception) -> web.Response:
    """Bad input 400, unknown names 404, duplicates and objects in use 409."""
    if isinstance(exc, Invalid):
        return error(400, str(exc))
    if isinstance(exc, NotFoundError):
        return error(404, str(exc))
    return error(409, str(exc))  # also GatewayRefused: not running, not up, no gateway


def gateway_json(g: VpnGateway) -> dict[str, Any]:
    return {"name": g.name, "public_address": g.public_address, "bandwidth_bps": g.bandwidth_bps,
            "nodes": list(g.nodes)}


def customer_gateway_json(c: CustomerGateway) -> dict[str, Any]:
    return {"name": c.name, "address": c.address}


def policy_json(p: SpdPolicy) -> dict[str, Any]:
    return {"id": p.id, "local_cidr": p.local_cidr, "peer_cidr": p.peer_cidr}


def status_json(t: TunnelStatus) -> dict[str, Any]:
    return {
        "state": t.state,
        "node": t.node,
        "last_error": t.last_error,
        "established_at": t.established_at.isoformat() if t.established_at else None,
        "spi_in": t.spi_in,
        "spi_out": t.spi_out,
        "bytes_in": t.bytes_in,
        "bytes_out": t.bytes_out,
        "packets_in": t.packets_in,
        "packets_out": t.packets_out,
        "ike_rekey_in": t.ike_rekey_in,
        "child_rekey_in": t.child_rekey_in,
        "child_expires_in": t.child_expires_in,
        "ike_proposal": t.ike_proposal,
        "esp_proposal": t.esp_proposal,
    }


async def tunnels_json(request: web.Request, only: str | None = None) -> list[dict[str, Any]]:
    """Tunnels (never their PSK) with policies and what the gateway reports about them."""

    def listed(s: Session) -> tuple[dict[int | None, VpnGateway],
                                    dict[int | None, CustomerGateway],
                                    list[VpnTunnel], dict[str, list[SpdPolicy]]]:
        gateways = {g.id: g for g in q.list_vpn_gateways(s)}
        customers = {c.id: c for c in q.list_customer_gateways(s)}
        tunnels = [t for t in q.list_tunnels(s) if only is None or t.name == only]
        policies: dict[str, list[SpdPolicy]] = {}
        for name, policy in q.list_policies(s, tunnel=only) if tunnels else ():
            policies.setdefault(name, []).append(policy)
        return gateways, customers, tunnels, policies

    gateways, customers, tunnels, policies = await portal_of(request).read(listed)
    report = await ipsec_ops.tunnel_status(request)
    return [
        {
            "name": t.name,
            "gateway": gateways[t.gateway_id].name,
            "customer_gateway": customers[t.customer_gateway_id].name,
            "peer_address": customers[t.customer_gateway_id].address,
            "ike_proposals": t.ike_proposals,
            "esp_proposals": t.esp_proposals,
            "start_action": t.start_action,
            "settings": q.tunnel_timers(t),
            "admin_up": t.admin_up,
            "policies": [policy_json(p) for p in policies.get(t.name, [])],
            "status": status_json(report.of(t.name)),
        }
        for t in tunnels
    ]


async def _named(request: web.Request, get: Callable[..., Row], name: str) -> Row:
    """One gateway of either kind by name, or 404."""
    try:
        return await portal_of(request).read(lambda s: get(s, name=name))
    except NotFoundError:
        raise web.HTTPNotFound() from None


async def _deleted(request: web.Request, delete: Callable[..., Awaitable[None]]) -> web.Response:
    """Delete the object named in the path; in use is 409, as for every refusal."""
    try:
        await delete(request, name=request.match_info["name"], via=VIA)
    except StoreError as exc:
        return refusal(exc)
    return web.json_response({"deleted": True})


# VPN gateways ------------------------------------------------------------------------------


async def list_gateways(request: web.Request) -> web.StreamResponse:
    rows = await portal_of(request).read(q.list_vpn_gateways)
    return web.json_response([gateway_json(g) for g in rows])


async def _gateway(request: web.Request, name: str) -> VpnGateway:
    return await _named(request, q.get_vpn_gateway, name)


async def create_gateway(request: web.Request) -> web.StreamResponse:
    body = await parsed(request, m.NewVpnGateway)
    try:
        await ipsec_ops.add_gateway(request, name=body.name, public_address=body.public_address,
                                    bandwidth_bps=body.bandwidth_bps, via=VIA, nodes=body.nodes)
    except (Invalid, StoreError) as exc:
        return refusal(exc)
    return web.json_response(gateway_json(await _gateway(request, body.name)), status=201)


async def get_gateway(request: web.Request) -> web.StreamResponse:
    return web.json_response(gateway_json(await _gateway(request, request.match_info["name"])))


async def update_gateway(request: web.Request) -> web.StreamResponse:
    """Only the bandwidth cap changes (null lifts it); running tunnels keep their SAs."""
    name = (await _gateway(request, request.match_info["name"])).name
    body = await parsed(request, m.VpnGatewayChange)
    if "bandwidth_bps" in body.model_fields_set:
        try:
            await ipsec_ops.set_bandwidth(request, name=name, bandwidth_bps=body.bandwidth_bps,
                                          via=VIA)
        except (Invalid, StoreError) as exc:
            return refusal(exc)
    return web.json_response(gateway_json(await _gateway(request, name)))


async def delete_gateway(request: web.Request) -> web.StreamResponse:
    return await _deleted(request, ipsec_ops.delete_gateway)


# Customer gateways -------------------------------------------------------------------------


async def list_customer_gateways(request: web.Request) -> web.StreamResponse:
    rows = await portal_of(request).read(q.list_customer_gateways)
    return web.json_response([customer_gateway_json(c) for c in rows])


async def _customer_gateway(request: web.Request, name: str) -> CustomerGateway:
    return await _named(request, q.get_customer_gateway, name)


async def create_customer_gateway(request: web.Request) -> web.StreamResponse:
    body = await parsed(request, m.NewCustomerGateway)
    try:
        await ipsec_ops.add_customer_gateway(request, name=body.name, address=body.address,
                                             via=VIA)
    except (Invalid, StoreError) as exc:
        return refusal(exc)
    created = await _customer_gateway(request, body.name)
    return web.json_response(customer_gateway_json(created), status=201)


async def get_customer_gateway(request: web.Request) -> web.StreamResponse:
    found = await _customer_gateway(request, request.match_info["name"])
    return web.json_response(customer_gateway_json(found))


async def delete_customer_gateway(request: web.Request) -> web.StreamResponse:
    return await _deleted(request, ipsec_ops.delete_customer_gateway)


# Tunnels -----------------------------------------------------------------------------------


async def _tunnel(request: web.Request, name: str) -> dict[str, Any]:
    found = await tunnels_json(request, only=name)
    if not found:
        raise web.HTTPNotFound()
    return found[0]


async def list_tunnels(request: web.Request) -> web.StreamResponse:
    return web.json_response(await tunnels_json(request))


async def create_tunnel(request: web.Request) -> web.StreamResponse:
    body = await parsed(request, m.NewTunnel)
    given = body.model_dump(exclude_none=True, exclude={"settings"})
    wanted = TunnelRequest(**given, settings=_settings(body.settings))
    try:
        await ipsec_ops.add_tunnel(request, wanted, via=VIA)
    except (Invalid, StoreError) as exc:
        return refusal(exc)
    return web.json_response(await _tunnel(request, wanted.name), status=201)


async def get_tunnel(request: web.Request) -> web.StreamResponse:
    return web.json_response(await _tunnel(request, request.match_info["name"]))


def _settings(settings: m.TunnelSettingsChange) -> dict[str, Any]:
    """The settings given: each value a number (seconds) or a string such as ``30s``."""
    return settings.model_dump(exclude_none=True)


async def update_tunnel(request: web.Request) -> web.StreamResponse:
    """The admin switch (``admin_up``), the start action and timers (``settings``, merged
    over the stored ones); the running IPsec service follows them."""
    name = (await _tunnel(request, request.match_info["name"]))["name"]
    body = await parsed(request, m.TunnelChange)
    try:
        if body.model_fields_set & {"settings", "start_action"}:
            await ipsec_ops.set_tunnel(request, name=name, settings=_settings(body.settings),
                                       start_action=body.start_action, via=VIA)
        if body.admin_up is not None:
            await ipsec_ops.set_admin_up(request, name=name, up=body.admin_up, via=VIA)
    except (Invalid, StoreError) as exc:
        return refusal(exc)
    return web.json_response(await _tunnel(request, name))


async def _act(request: web.Request, action: str) -> web.StreamResponse:
    name = (await _tunnel(request, request.match_info["name"]))["name"]
    try:
        done = await ipsec_ops.tunnel_action(request, name=name, action=action, via=VIA)
    except (Invalid, StoreError, GatewayRefused) as exc:
        return refusal(exc)
    return web.json_response({"message": done})


async def rekey_tunnel(request: web.Request) -> web.StreamResponse:
    """Rekey the CHILD_SA, or with ``{"ike": true}`` the IKE SA, of a running tunnel."""
    body = await parsed(request, m.Rekey)
    return await _act(request, "rekey-ike" if body.ike else "rekey-child")


async def restart_tunnel(request: web.Request) -> web.StreamResponse:
    return await _act(request, "restart")


async def take_tunnel_down(request: web.Request) -> web.StreamResponse:
    return await _act(request, "down")


async def delete_tunnel(request: web.Request) -> web.StreamResponse:
    return await _deleted(request, ipsec_ops.delete_tunnel)


# SPD policies ------------------------------------------------------------------------------


async def tunnel_config(request: web.Request) -> web.StreamResponse:
    """The customer gateway's configuration (``format``; the PSK with ``include_psk=true``)."""
    name, fmt = request.match_info["name"], request.query.get("format", "")
    include_psk = request.query.get("include_psk") == "true"  # or false: PeerConfigQuery
    try:
        text = await ipsec_ops.peer_config(request, name=name, fmt=fmt,
                                           include_psk=include_psk, via=VIA)
    except NotFoundError:
        raise web.HTTPNotFound() from None
    except Invalid as exc:
        return error(400, str(exc))
    return config_download(name, fmt, text)


async def list_policies(request: web.Request) -> web.StreamResponse:
    return web.json_response((await _tunnel(request, request.match_info["name"]))["policies"])


async def add_policy(request: web.Request) -> web.StreamResponse:
    name = (await _tunnel(request, request.match_info["name"]))["name"]
    body = await parsed(request, m.NewSpdPolicy)
    try:
        row = await ipsec_ops.add_policy(request, tunnel=name, local_cidr=body.local_cidr,
                                         peer_cidr=body.peer_cidr, via=VIA)
    except (Invalid, StoreError) as exc:
        return refusal(exc)
    return web.json_response(policy_json(row), status=201)


async def delete_policy(request: web.Request) -> web.StreamResponse:
    try:
        policy_id = int(request.match_info["policy_id"])
        await ipsec_ops.delete_policy(
            request, tunnel=request.match_info["name"], policy_id=policy_id, via=VIA
        )
    except (ValueError, NotFoundError):
        raise web.HTTPNotFound() from None
    return web.json_response({"deleted": True})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{BASE}/gateways", list_gateways)
    r.add_post(f"{BASE}/gateways", create_gateway)
    r.add_get(f"{BASE}/gateways/{{name}}", get_gateway)
    r.add_patch(f"{BASE}/gateways/{{name}}", update_gateway)
    r.add_delete(f"{BASE}/gateways/{{name}}", delete_gateway)
    r.add_get(f"{BASE}/customer-gateways", list_customer_gateways)
    r.add_post(f"{BASE}/customer-gateways", create_customer_gateway)
    r.add_get(f"{BASE}/customer-gateways/{{name}}", get_customer_gateway)
    r.add_delete(f"{BASE}/customer-gateways/{{name}}", delete_customer_gateway)
    r.add_get(f"{BASE}/tunnels", list_tunnels)
    r.add_post(f"{BASE}/tunnels", create_tunnel)
    r.add_get(f"{BASE}/tunnels/{{name}}", get_tunnel)
    r.add_patch(f"{BASE}/tunnels/{{name}}", update_tunnel)
    r.add_delete(f"{BASE}/tunnels/{{name}}", delete_tunnel)
    r.add_post(f"{BASE}/tunnels/{{name}}/rekey", rekey_tunnel)
    r.add_post(f"{BASE}/tunnels/{{name}}/restart", restart_tunnel)
    r.add_post(f"{BASE}/tunnels/{{name}}/down", take_tunnel_down)
    r.add_get(f"{BASE}/tunnels/{{name}}/config", tunnel_config)
    r.add_get(f"{BASE}/tunnels/{{name}}/policies", list_policies)
    r.add_post(f"{BASE}/tunnels/{{name}}/policies", add_policy)
    r.add_delete(f"{BASE}/tunnels/{{name}}/policies/{{policy_id}}", delete_policy)
