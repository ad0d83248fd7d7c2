"""Admin pages for running the gateway: dashboard (expiry health, traffic chart), live
sessions and kick, the audit log, gateway settings and per-admin API tokens.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from aiohttp import web
from sqlmodel import Session

from client_profiles.accounts import MAX_LIMIT
from client_profiles.fleet import pools_of
from client_profiles.inputs import (
    NO_VPC_WARNING,
    ClientNetworks,
    checked_groups,
    checked_keepalive,
    checked_networks,
)
from client_profiles.lifecycle import ClientCaps
from client_profiles.pkifiles import LifecycleError
from sslvpn.net.subpools import Fleet, NodePools, SubpoolError, check_fleet
from sslvpn.runtime.control import older_clients
from sslvpn.store import NotFoundError, StoreError, node_queries, queries
from sslvpn.store.models import API_SCOPE_VALUES, PROTOCOLS_VALUES, GatewaySettings
from web import pki_ops
from web.import_links import token_hash
from web.pages import (
    audit,
    current_user,
    current_user_id,
    flash,
    form_of,
    portal_of,
    render,
    require_admin,
)
from web.views.devices import now_of

AUDIT_PAGE = 200
MAX_TOKEN_DAYS = 3650
MAX_HEARTBEAT_TIMEOUT = 3600
RETENTION_FIELDS = {  # GatewaySettings field -> what the page calls it (store.retention)
    "audit_retention_days": "Audit log",
    "session_retention_days": "Session history",
    "import_link_retention_days": "Used or expired import links",
    "disabled_user_retention_days": "Disabled users",
}
MAX_RETENTION_DAYS = 36500
HOST = re.compile(r"[A-Za-z0-9.:_-]{1,253}")


@require_admin
async def dashboard(request: web.Request) -> web.StreamResponse:
    portal = portal_of(request)
    now = now_of(request)
    health = await pki_ops.expiry_health(request, now)
    sessions = await portal.live_sessions()
    name = portal.settings.gateway_name
    vpc = await portal.read(lambda s: queries.get_settings(s, name=name).vpc_networks)
    context = {
        "no_vpc": None if vpc else NO_VPC_WARNING,
        "health": health,
        "sessions": len(sessions),
        "gateway": portal.settings.gateway_name,
        "has_gateway": portal.control is not None,
        "warn_days": pki_ops.WARN_DAYS,
        "crl_warn_days": pki_ops.CRL_WARN_DAYS,
        "refresh": portal.settings.refresh_seconds,
    }
    return render(request, "admin_dashboard.html", context)


@require_admin
async def traffic_json(request: web.Request) -> web.StreamResponse:
    """Rate points for the dashboard chart (polled by static/portal.js)."""
    portal = portal_of(request)
    points = [
        {"at": p.at, "in": round(p.in_bps, 1), "out": round(p.out_bps, 1)}
        for p in portal.traffic.points()
    ]
    return web.json_response({"gateway": portal.settings.gateway_name, "points": points})


@require_admin
async def sessions_page(request: web.Request) -> web.StreamResponse:
    """Live sessions with their client software; ``?older_than=2.6`` keeps older clients."""
    older = request.query.get("older_than", "").strip()
    sessions = sorted(await portal_of(request).live_sessions(), key=lambda s: s.connected_at)
    try:
        sessions = older_clients(sessions, older or None)
    except ValueError as exc:
        flash(request, str(exc))
        raise web.HTTPSeeOther("/admin/sessions") from None
    context = {
        "sessions": sessions,
        "listeners": await portal_of(request).listener_status(),
        "older_than": older,
        "fleet": any(s.node is not None for s in sessions),
        "has_gateway": portal_of(request).control is not None,
        "refresh": portal_of(request).settings.refresh_seconds,
    }
    return render(request, "admin_sessions.html", context)


@require_admin
async def kick(request: web.Request) -> web.StreamResponse:
    portal = portal_of(request)
    session_id = request.match_info["session_id"]
    known = {s.session_id: s for s in await portal.live_sessions()}
    if session_id not in known:
        flash(request, "That session has already ended.")
        raise web.HTTPSeeOther("/admin/sessions")
    await portal.kick(session_id, f"kicked by {current_user(request).name}")
    info = known[session_id]
    await audit(request, "session.kick", target=info.certificate_serial, detail=f"user={info.user}")
    flash(request, f"Session of {info.user} ({info.device}) ended.")
    raise web.HTTPSeeOther("/admin/sessions")


@require_admin
async def audit_page(request: web.Request) -> web.StreamResponse:
    actor = request.query.get("actor", "").strip() or None
    action = request.query.get("action", "").strip() or None
    since_text = request.query.get("since", "").strip()
    errors, since = [], None
    if since_text:
        try:
            since = datetime.fromisoformat(since_text).replace(tzinfo=UTC)
        except ValueError:
            errors.append("Since must be a date like 2026-01-31.")
    entries = await portal_of(request).read(
        lambda s: queries.list_audit(s, actor=actor, action=action, since=since, limit=AUDIT_PAGE)
    )
    context = {
        "entries": entries,
        "actor": actor or "",
        "action": action or "",
        "since": since_text,
    }
    return render(request, "admin_audit.html", context, errors=errors)


# Settings ---------------------------------------------------------------------------------


async def load_settings(request: web.Request) -> GatewaySettings:
    name = portal_of(request).settings.gateway_name

    def stored(s: Session) -> GatewaySettings:
        try:
            return queries.get_settings(s, name=name)
        except NotFoundError:
            return GatewaySettings(name=name)

    return await portal_of(request).read(stored)


@require_admin
async def settings_page(request: web.Request) -> web.StreamResponse:
    context = {"settings": await load_settings(request), "retention": RETENTION_FIELDS}
    return render(request, "admin_settings.html", context)


def _words(text: str) -> list[str]:
    return [w for w in text.replace(",", " ").split() if w]


def parse_settings(
    form: dict[str, str], settings: GatewaySettings, nodes: Sequence[NodePools] = ()
) -> list[str]:
    """Apply the form to ``settings``; return what was wrong (nothing applied if anything).

    The pools and VPC networks go through the same check as `sslvpn init`, and must still
    hold every node's sub-pools. Keepalive and heartbeat fields left out keep their values.
    """
    errors: list[str] = []
    addresses = _words(form.get("public_addresses", ""))
    if not addresses:
        errors.append("Give at least one public address.")
    for value in addresses:
        if not HOST.fullmatch(value):
            errors.append(f"{value!r} is not a host name or IP address.")
    networks: ClientNetworks | None = None
    try:
        networks = checked_networks(
            pool=form.get("pool_cidr", "").strip(),
            vpc=_words(form.get("vpc_networks", "")),
            pool6=form.get("pool6_cidr", "").strip() or None,
        )
    except LifecycleError as exc:
        errors.append(_sentence(str(exc)))
    if networks is not None:
        try:
            check_fleet(Fleet(networks.pool, networks.pool6), nodes)
        except SubpoolError as exc:
            errors.append(_sentence(str(exc)))
    liveness = parse_liveness(form, settings, errors)
    dns = _words(form.get("dns_servers", ""))
    for value in dns:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            errors.append(f"{value!r} is not an IP address.")
    port, ttl = form.get("port", ""), form.get("import_token_ttl_seconds", "")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        errors.append("Port must be 1 to 65535.")
    if not ttl.isdigit() or not 60 <= int(ttl) <= 86400:
        errors.append("Import link lifetime must be 60 to 86400 seconds.")
    if form.get("protocols") not in PROTOCOLS_VALUES:
        errors.append("Protocols must be udp, tcp or both.")
    retention = _retention(form, settings, errors)
    limits = _user_limits(form, settings, errors)
    public_url = _public_url(form.get("portal_public_url", settings.portal_public_url or ""),
                             errors)
    caps = parse_caps(form, settings, errors)
    groups = form.get("tls_groups", settings.tls_groups)
    try:
        groups = checked_groups(groups)
    except LifecycleError as exc:
        errors.append(_sentence(str(exc)))
    if errors or networks is None or liveness is None or caps is None:
        return errors
    caps.apply(settings)
    for name, days in (retention | limits).items():
        setattr(settings, name, days)
    settings.portal_public_url = public_url
    settings.public_addresses, settings.dns_servers = addresses, dns
    settings.vpc_networks = [str(n) for n in networks.vpc]
    settings.pool_cidr = str(networks.pool)
    settings.pool6_cidr = None if networks.pool6 is None else str(networks.pool6)
    settings.port, settings.import_token_ttl_seconds = int(port), int(ttl)
    settings.protocols = form["protocols"]
    settings.keepalive_interval, settings.keepalive_timeout, settings.heartbeat_timeout = liveness
    settings.tls_groups = groups
    return []


def _retention(
    form: dict[str, str], settings: GatewaySettings, errors: list[str]
) -> dict[str, int]:
    """The retention days in the form (a field left out keeps its value)."""
    return _whole_numbers(form, settings, errors, RETENTION_FIELDS, MAX_RETENTION_DAYS,
                          "{label}: keep 0 (forever) to {most} days.")


def _whole_numbers(
    form: dict[str, str], settings: GatewaySettings, errors: list[str],
    fields: dict[str, str], most: int, refusal: str,
) -> dict[str, int]:
    """Whole numbers 0 to ``most`` from the form by field name (left out: the stored value)."""
    numbers: dict[str, int] = {}
    for name, label in fields.items():
        text = form.get(name, str(getattr(settings, name))).strip()
        if not (text.isascii() and text.isdigit()) or int(text) > most:
            errors.append(refusal.format(label=label, most=most))
        else:
            numbers[name] = int(text)
    return numbers


MAX_CLIENTS = 1_000_000


def parse_caps(
    form: dict[str, str], settings: GatewaySettings, errors: list[str]
) -> ClientCaps | None:
    """max-clients in all and per address (0: no cap) and tls-crypt-v2 force-cookie ("on"
    or "off"); a field left out keeps its value."""
    texts = [form.get(name, str(getattr(settings, name))).strip()
             for name in ("max_clients", "max_clients_per_address")]
    cookie = form.get("tls_crypt_v2_force_cookie",
                      "on" if settings.tls_crypt_v2_force_cookie else "off")
    if not all(t.isascii() and t.isdigit() and int(t) <= MAX_CLIENTS for t in texts):
        errors.append(f"Max clients must be 0 (no cap) to {MAX_CLIENTS:,}.")
        return None
    if cookie not in ("on", "off"):
        errors.append("tls-crypt-v2 force-cookie must be on or off.")
        return None
    return ClientCaps(int(texts[0]), int(texts[1]), cookie == "on")


def _public_url(text: str, errors: list[str]) -> str | None:
    """The portal's public URL (import links and QR codes use it): http(s), a host, maybe a
    port and path; empty clears it."""
    text = text.strip()
    if not text:
        return None
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        parts = None
    if (parts is None or parts.scheme not in ("https", "http") or not parts.hostname
            or parts.username or parts.query or parts.fragment or len(text) > 200):
        errors.append("Portal public URL must look like https://vpn.example.com[:port].")
        return None
    return text.rstrip("/")


USER_LIMIT_FIELDS = {"max_devices_per_user": "Devices per user",
                     "max_sessions_per_user": "VPN sessions per user"}


def _user_limits(
    form: dict[str, str], settings: GatewaySettings, errors: list[str]
) -> dict[str, int]:
    """The per-user limits in the form (a field left out keeps its value)."""
    return _whole_numbers(form, settings, errors, USER_LIMIT_FIELDS, MAX_LIMIT,
                          "{label}: 0 to {most}.")


LIVENESS_FIELDS = ("keepalive_interval", "keepalive_timeout", "heartbeat_timeout")


def parse_liveness(
    form: dict[str, str], settings: GatewaySettings, errors: list[str]
) -> tuple[int, int, int] | None:
    """The pushed ping and ping-restart seconds (checked as `sslvpn init --keepalive` is) and
    the node heartbeat timeout, for the settings page and the API; a field left out keeps
    its value."""
    texts = [form.get(name, str(getattr(settings, name))).strip() for name in LIVENESS_FIELDS]
    if not all(text.isascii() and text.isdigit() for text in texts):
        errors.append("Keepalive and heartbeat times must be whole seconds.")
        return None
    ping, restart, heartbeat = (int(text) for text in texts)
    if not 3 <= heartbeat <= MAX_HEARTBEAT_TIMEOUT:
        errors.append(f"Node heartbeat timeout must be 3 to {MAX_HEARTBEAT_TIMEOUT} seconds.")
        return None
    try:
        return (*checked_keepalive(ping, restart), heartbeat)
    except LifecycleError as exc:
        errors.append(_sentence(str(exc)))
        return None


def _sentence(message: str) -> str:
    """A one-line refusal from `client_profiles` as a sentence on the page."""
    return message[:1].upper() + message[1:] + "."


@require_admin
async def save_settings(request: web.Request) -> web.StreamResponse:
    """Apply the form to the stored settings under the writer lock (no lost update)."""
    portal = portal_of(request)
    form = await form_of(request)
    name = portal.settings.gateway_name

    def save(s: Session) -> tuple[GatewaySettings, list[str]]:
        try:
            settings = queries.get_settings(s, name=name)
        except NotFoundError:
            settings = GatewaySettings(name=name)
        nodes = [pools_of(node) for node in node_queries.list_nodes(s)]
        errors = parse_settings(form, settings, nodes)
        if not errors:
            queries.save_settings(s, settings=settings)
        return settings, errors

    settings, errors = await portal.write(save)
    if errors:
        fresh = await load_settings(request)
        return render(
            request, "admin_settings.html", {"settings": fresh, "retention": RETENTION_FIELDS},
            status=400, errors=errors,
        )
    await audit(request, "settings.change", target=settings.name)
    flash(request, "Settings saved. New profiles use them; existing profiles keep theirs.")
    raise web.HTTPSeeOther("/admin/settings")


# API tokens -------------------------------------------------------------------------------


@require_admin
async def api_tokens_page(request: web.Request) -> web.StreamResponse:
    return await render_api_tokens(request)


async def render_api_tokens(
    request: web.Request,
    *,
    token: str | None = None,
    status: int = 200,
    errors: list[str] | None = None,
) -> web.Response:
    me_id = current_user_id(request)
    tokens = await portal_of(request).read(lambda s: queries.list_api_tokens(s, user_id=me_id))
    context = {"tokens": tokens, "new_token": token, "scopes": API_SCOPE_VALUES,
               "now": now_of(request)}
    return render(request, "admin_api_tokens.html", context, status=status, errors=errors)


@require_admin
async def create_api_token(request: web.Request) -> web.StreamResponse:
    """Mint a bearer token for the REST API; shown once, stored hashed."""
    me_id = current_user_id(request)
    form = await form_of(request)
    name, scope = form.get("name", "").strip(), form.get("scope", "full")
    days = form.get("expires_days", "").strip()
    errors = []
    if not 1 <= len(name) <= 40:
        errors.append("Name the token (1-40 characters).")
    if scope not in API_SCOPE_VALUES:
        errors.append(f"Scope must be one of {', '.join(API_SCOPE_VALUES)}.")
    if days and not (days.isascii() and days.isdigit() and 1 <= int(days) <= MAX_TOKEN_DAYS):
        errors.append(f"Expiry must be 1 to {MAX_TOKEN_DAYS} days, or empty for none.")
    if errors:
        return await render_api_tokens(request, status=400, errors=errors)
    expires = now_of(request) + timedelta(days=int(days)) if days else None
    token = "svt_" + secrets.token_urlsafe(32)
    hashed = token_hash(token)
    try:
        await portal_of(request).write(
            lambda s: queries.add_api_token(s, user_id=me_id, name=name, token_hash=hashed,
                                            expires_at=expires, scope=scope)
        )
    except StoreError as exc:
        return await render_api_tokens(request, status=400, errors=[str(exc)])
    await audit(request, "api_token.create", target=name,
                detail=f"scope={scope} expires={expires.isoformat() if expires else 'never'}")
    return await render_api_tokens(request, token=token)


@require_admin
async def delete_api_token(request: web.Request) -> web.StreamResponse:
    me_id = current_user_id(request)
    try:
        token_id = int(request.match_info["token_id"])
        await portal_of(request).write(
            lambda s: queries.delete_api_token(s, token_id=token_id, user_id=me_id)
        )
    except (ValueError, NotFoundError):
        raise web.HTTPNotFound(text="No such token.") from None
    await audit(request, "api_token.delete", target=str(token_id))
    flash(request, "API token deleted.")
    raise web.HTTPSeeOther("/admin/api-tokens")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin", dashboard)
    app.router.add_get("/admin/traffic.json", traffic_json)
    app.router.add_get("/admin/sessions", sessions_page)
    app.router.add_post("/admin/sessions/{session_id}/kick", kick)
    app.router.add_get("/admin/audit", audit_page)
    app.router.add_get("/admin/settings", settings_page)
    app.router.add_post("/admin/settings", save_settings)
    app.router.add_get("/admin/api-tokens", api_tokens_page)
    app.router.add_post("/admin/api-tokens", create_api_token)
    app.router.add_post("/admin/api-tokens/{token_id}/delete", delete_api_token)
