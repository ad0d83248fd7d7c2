"""Admin pages for site-to-site IPsec: VPN gateways, customer gateways, tunnels (with their
live status from the gateway) and SPD policies.

The forms mirror `sslvpn ipsec` on the CLI and share its checks through `web.ipsec_ops`; a
refused form is shown again on the same page with the reason and nothing changed. The
tunnel's pre-shared key is accepted in a password field and never rendered back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import web
from sqlmodel import Session

from sslvpn.ipsec.bandwidth import format_rate, parse_rate
from sslvpn.ipsec.tunnel_settings import DPD_ACTIONS, TunnelSettings, format_duration
from sslvpn.runtime.control import TUNNEL_ACTIONS
from sslvpn.store import NotFoundError, StoreError
from sslvpn.store import ipsec_queries as q
from sslvpn.store.models import START_ACTION_VALUES, CustomerGateway, SpdPolicy, VpnGateway
from web import ipsec_ops
from web.ipsec_ops import GatewayRefused, Invalid, TunnelRequest
from web.pages import flash, form_of, portal_of, render, require_admin

VIA = "portal"
CONFIG_FORMATS = {"swanctl": "strongSwan swanctl.conf", "strongswan-ipsec":
                  "strongSwan ipsec.conf (legacy)", "libreswan": "Libreswan ipsec.conf",
                  "text": "Parameter sheet (text)"}
GATEWAYS_PAGE = "/admin/ipsec"
TUNNELS_PAGE = "/admin/ipsec/tunnels"
START_LABELS = {"initiate": "initiate (we start it)", "wait": "wait (the peer starts it)",
                "trap": "on traffic (the first packet starts it)"}
ACTION_DONE = {"rekey-child": "CHILD_SA rekey started", "rekey-ike": "IKE SA rekey started",
               "restart": "restarting from IKE_SA_INIT",
               "down": "SAs deleted; it stays down until restarted or the peer initiates"}


def _bandwidth(text: str) -> int | None:
    """Empty means unlimited; otherwise the CLI's rate notation (100M, 1G)."""
    if not text.strip():
        return None
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def _tunnel_page(name: str) -> str:
    return f"{TUNNELS_PAGE}/{quote(name, safe='')}"


# Gateways and customer gateways -----------------------------------------------------------


async def render_gateways(
    request: web.Request,
    *,
    status: int = 200,
    errors: list[str] | None = None,
    form: dict[str, str] | None = None,
) -> web.Response:
    def listed(s: Session) -> tuple[list[VpnGateway], list[CustomerGateway]]:
        return q.list_vpn_gateways(s), q.list_customer_gateways(s)

    gateways, customers = await portal_of(request).read(listed)
    context = {
        "gateways": gateways,
        "customers": customers,
        "rates": {g.name: format_rate(g.bandwidth_bps) for g in gateways},
        "form": form or {},
    }
    return render(request, "ipsec_gateways.html", context, status=status, errors=errors)


@require_admin
async def gateways_page(request: web.Request) -> web.StreamResponse:
    return await render_gateways(request)


@require_admin
async def create_gateway(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    name = form.get("name", "").strip()
    try:
        await ipsec_ops.add_gateway(
            request,
            name=name,
            public_address=form.get("public_address", ""),
            bandwidth_bps=_bandwidth(form.get("bandwidth", "")),
            via=VIA,
            nodes=form.get("nodes", "").replace(",", " ").split(),
        )
    except (Invalid, StoreError) as exc:
        return await render_gateways(request, status=400, errors=[str(exc)], form=form)
    flash(request, f"VPN gateway {name} created.")
    raise web.HTTPSeeOther(GATEWAYS_PAGE)


@require_admin
async def change_bandwidth(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    form = await form_of(request)
    try:
        bps = _bandwidth(form.get("bandwidth", ""))
        await ipsec_ops.set_bandwidth(request, name=name, bandwidth_bps=bps, via=VIA)
    except NotFoundError:
        raise web.HTTPNotFound(text="No such VPN gateway.") from None
    except (Invalid, StoreError) as exc:
        return await render_gateways(request, status=400, errors=[str(exc)])
    flash(request, f"VPN gateway {name} bandwidth: {format_rate(bps)}. Tunnels keep their SAs.")
    raise web.HTTPSeeOther(GATEWAYS_PAGE)


async def _delete_listed(
    request: web.Request, delete: Callable[..., Awaitable[None]], what: str
) -> web.Response:
    """Delete either kind of gateway; one still in use is refused on the same page."""
    name = request.match_info["name"]
    try:
        await delete(request, name=name, via=VIA)
    except NotFoundError:
        raise web.HTTPNotFound(text=f"No such {what}.") from None
    except StoreError as exc:
        return await render_gateways(request, status=409, errors=[str(exc)])
    flash(request, f"{what[:1].upper()}{what[1:]} {name} deleted.")
    raise web.HTTPSeeOther(GATEWAYS_PAGE)


@require_admin
async def delete_gateway(request: web.Request) -> web.StreamResponse:
    return await _delete_listed(request, ipsec_ops.delete_gateway, "VPN gateway")


@require_admin
async def create_customer_gateway(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    name = form.get("customer_name", "").strip()
    try:
        address = form.get("address", "")
        await ipsec_ops.add_customer_gateway(request, name=name, address=address, via=VIA)
    except (Invalid, StoreError) as exc:
        return await render_gateways(request, status=400, errors=[str(exc)], form=form)
    flash(request, f"Customer gateway {name} created.")
    raise web.HTTPSeeOther(GATEWAYS_PAGE)


@require_admin
async def delete_customer_gateway(request: web.Request) -> web.StreamResponse:
    return await _delete_listed(request, ipsec_ops.delete_customer_gateway, "customer gateway")


# Tunnels ----------------------------------------------------------------------------------


async def render_tunnels(
    request: web.Request,
    *,
    status: int = 200,
    errors: list[str] | None = None,
    form: dict[str, str] | None = None,
) -> web.Response:
    def listed(s: Session) -> tuple[list[q.TunnelConfig], list[str], list[str]]:
        gateways = [g.name for g in q.list_vpn_gateways(s)]
        customers = [c.name for c in q.list_customer_gateways(s)]
        return q.tunnel_configs(s), gateways, customers

    configs, gateways, customers = await portal_of(request).read(listed)
    report = await ipsec_ops.tunnel_status(request)
    shown = {key: value for key, value in (form or {}).items() if key != "psk"}
    context = {
        "tunnels": configs,
        "status": {c.name: report.of(c.name) for c in configs},
        "gateways": gateways,
        "customers": customers,
        "start_actions": START_ACTION_VALUES,
        "START_LABELS": START_LABELS,
        "form": shown
        or {"ike": ipsec_ops.DEFAULT_IKE, "esp": ipsec_ops.DEFAULT_ESP, "start": "initiate"},
        "refresh": portal_of(request).settings.refresh_seconds,
    }
    return render(request, "ipsec_tunnels.html", context, status=status, errors=errors)


@require_admin
async def tunnels_page(request: web.Request) -> web.StreamResponse:
    return await render_tunnels(request)


@require_admin
async def create_tunnel(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    wanted = TunnelRequest(
        name=form.get("name", "").strip(),
        gateway=form.get("gateway", ""),
        customer_gateway=form.get("customer_gateway", ""),
        psk=form.get("psk", ""),
        ike_proposals=form.get("ike", ""),
        esp_proposals=form.get("esp", ""),
        start_action=form.get("start", ""),
    )
    try:
        await ipsec_ops.add_tunnel(request, wanted, via=VIA)
    except (Invalid, StoreError) as exc:
        return await render_tunnels(request, status=400, errors=[str(exc)], form=form)
    flash(request, f"Tunnel {wanted.name} created; add an SPD policy so traffic can use it.")
    raise web.HTTPSeeOther(_tunnel_page(wanted.name))


async def render_tunnel(
    request: web.Request,
    name: str,
    *,
    status: int = 200,
    errors: list[str] | None = None,
    form: dict[str, str] | None = None,
) -> web.Response:
    def listed(s: Session) -> tuple[q.TunnelConfig | None, list[SpdPolicy]]:
        configs = {c.name: c for c in q.tunnel_configs(s)}
        if name not in configs:
            return None, []
        return configs[name], [p for _, p in q.list_policies(s, tunnel=name)]

    tunnel, policies = await portal_of(request).read(listed)
    if tunnel is None:
        raise web.HTTPNotFound(text="No such tunnel.")
    settings = TunnelSettings(**tunnel.timers)
    shown = {name: _shown(name, value) for name, value in settings.as_dict().items()}
    context = {
        "tunnel": tunnel,
        "settings": {**shown, "start": tunnel.start_action, **(form or {})},
        "start_actions": START_ACTION_VALUES,
        "START_LABELS": START_LABELS,
        "dpd_actions": DPD_ACTIONS,
        "actions": TUNNEL_ACTIONS,
        "left": _left,
        "status": (await ipsec_ops.tunnel_status(request)).of(name),
        "policies": policies,
        "form": form or {},
        "refresh": portal_of(request).settings.refresh_seconds,
        "config_formats": CONFIG_FORMATS,
    }
    return render(request, "ipsec_tunnel.html", context, status=status, errors=errors)


@require_admin
async def tunnel_page(request: web.Request) -> web.StreamResponse:
    return await render_tunnel(request, request.match_info["name"])


@require_admin
async def download_config(request: web.Request) -> web.StreamResponse:
    """The tunnel page's download: the peer's configuration in the chosen format."""
    name, fmt = request.match_info["name"], request.query.get("format", "")
    try:
        text = await ipsec_ops.peer_config(request, name=name, fmt=fmt,
                                           include_psk=request.query.get("include_psk") == "1",
                                           via=VIA)
    except NotFoundError:
        raise web.HTTPNotFound(text="No such tunnel.") from None
    except Invalid as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    return ipsec_ops.config_download(name, fmt, text)


@require_admin
async def set_admin(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    up = request.match_info["action"] == "up"
    try:
        await ipsec_ops.set_admin_up(request, name=name, up=up, via=VIA)
    except NotFoundError:
        raise web.HTTPNotFound(text="No such tunnel.") from None
    flash(request, f"Tunnel {name} set {'up' if up else 'down'}; the running gateway follows.")
    raise web.HTTPSeeOther(_tunnel_page(name))


def _shown(name: str, value: object) -> str:
    """A setting as the form shows it (durations in strongSwan notation)."""
    if isinstance(value, float) and name != "retransmit_base":
        return format_duration(value)
    return str(value)


def _left(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(round(seconds))


@require_admin
async def change_settings(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    form = await form_of(request)
    given = {key: form[key].strip() for key in TunnelSettings.names() if form.get(key, "").strip()}
    try:
        await ipsec_ops.set_tunnel(request, name=name, settings=given,
                                   start_action=form.get("start") or None, via=VIA)
    except NotFoundError:
        raise web.HTTPNotFound(text="No such tunnel.") from None
    except (Invalid, StoreError) as exc:
        return await render_tunnel(request, name, status=400, errors=[str(exc)], form=form)
    flash(request, f"Tunnel {name}: settings saved; new SAs use them, current SAs keep "
                   "their keys.")
    raise web.HTTPSeeOther(_tunnel_page(name))


@require_admin
async def act(request: web.Request) -> web.StreamResponse:
    """Rekey, restart or take down the running tunnel (through the gateway)."""
    name, action = request.match_info["name"], request.match_info["action"]
    try:
        await ipsec_ops.tunnel_action(request, name=name, action=action, via=VIA)
    except NotFoundError:
        raise web.HTTPNotFound(text="No such tunnel.") from None
    except (Invalid, GatewayRefused) as exc:
        return await render_tunnel(request, name, status=409, errors=[str(exc)])
    flash(request, f"Tunnel {name}: {ACTION_DONE[action]}.")
    raise web.HTTPSeeOther(_tunnel_page(name))


@require_admin
async def delete_tunnel(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    try:
        await ipsec_ops.delete_tunnel(request, name=name, via=VIA)
    except NotFoundError:
        raise web.HTTPNotFound(text="No such tunnel.") from None
    flash(request, f"Tunnel {name} and its policies deleted.")
    raise web.HTTPSeeOther(TUNNELS_PAGE)


# SPD policies -----------------------------------------------------------------------------


@require_admin
async def add_policy(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    form = await form_of(request)
    try:
        policy = await ipsec_ops.add_policy(
            request,
            tunnel=name,
            local_cidr=form.get("local", ""),
            peer_cidr=form.get("peer", ""),
            via=VIA,
        )
    except NotFoundError:
        raise web.HTTPNotFound(text="No such tunnel.") from None
    except (Invalid, StoreError) as exc:
        return await render_tunnel(request, name, status=400, errors=[str(exc)], form=form)
    flash(request, f"Policy {policy.local_cidr} <-> {policy.peer_cidr} added to {name}.")
    raise web.HTTPSeeOther(_tunnel_page(name))


@require_admin
async def delete_policy(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    try:
        policy_id = int(request.match_info["policy_id"])
        await ipsec_ops.delete_policy(request, tunnel=name, policy_id=policy_id, via=VIA)
    except (ValueError, NotFoundError):
        raise web.HTTPNotFound(text="No such policy.") from None
    flash(request, f"Policy removed from {name}.")
    raise web.HTTPSeeOther(_tunnel_page(name))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(GATEWAYS_PAGE, gateways_page)
    r.add_post(f"{GATEWAYS_PAGE}/gateways", create_gateway)
    r.add_post(f"{GATEWAYS_PAGE}/gateways/{{name}}/bandwidth", change_bandwidth)
    r.add_post(f"{GATEWAYS_PAGE}/gateways/{{name}}/delete", delete_gateway)
    r.add_post(f"{GATEWAYS_PAGE}/customer-gateways", create_customer_gateway)
    r.add_post(f"{GATEWAYS_PAGE}/customer-gateways/{{name}}/delete", delete_customer_gateway)
    r.add_get(TUNNELS_PAGE, tunnels_page)
    r.add_post(TUNNELS_PAGE, create_tunnel)
    r.add_get(f"{TUNNELS_PAGE}/{{name}}", tunnel_page)
    r.add_get(f"{TUNNELS_PAGE}/{{name}}/config", download_config)
    r.add_post(f"{TUNNELS_PAGE}/{{name}}/{{action:up|down}}", set_admin)
    r.add_post(f"{TUNNELS_PAGE}/{{name}}/delete", delete_tunnel)
    r.add_post(f"{TUNNELS_PAGE}/{{name}}/settings", change_settings)
    r.add_post(f"{TUNNELS_PAGE}/{{name}}/actions/{{action:{'|'.join(TUNNEL_ACTIONS)}}}", act)
    r.add_post(f"{TUNNELS_PAGE}/{{name}}/policies", add_policy)
    r.add_post(f"{TUNNELS_PAGE}/{{name}}/policies/{{policy_id}}/delete", delete_policy)
