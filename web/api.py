"""The JSON REST API under /api/v1 for automation: users, certificates, profiles, sessions
and kick. Callers authenticate with a per-admin bearer token (stored hashed); every answer
is JSON (profiles excepted) and matches the OpenAPI document in `web.openapi`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from sqlmodel import Session

from client_profiles import two_factor
from client_profiles.passwords import generate_password
from sslvpn.runtime.control import SessionInfo, older_clients
from sslvpn.store import NotFoundError, StoreError, queries
from sslvpn.store.models import ApiToken, Certificate, User
from web import api_models as m
from web import pki_ops
from web.api_models import BadRequest, parsed, parsed_query
from web.import_links import token_hash
from web.openapi import document
from web.pages import act_as, audit, portal_of, user_of
from web.views.devices import profile_response

PREFIX = "/api/v1"
SERIAL = re.compile(r"[0-9a-f]{1,64}")
# The query each route takes, declared once: the middleware validates it, the OpenAPI
# document lists its fields; a route not named here takes none.
QUERIES: dict[str, type[m.Query]] = {
    f"{PREFIX}/certificates": m.CertificateQuery,
    f"{PREFIX}/sessions": m.SessionQuery,
    f"{PREFIX}/ipsec/tunnels/{{name}}/config": m.PeerConfigQuery,
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def user_json(user: User) -> dict[str, Any]:
    return {
        "name": user.name,
        "role": user.role,
        "email": user.email,
        "disabled": user.disabled,
        "created_at": _iso(user.created_at),
        "two_factor_enrolled": user.totp_secret is not None,
        "two_factor_required": user.two_factor_required,
    }


def certificate_json(c: Certificate, owners: dict[int | None, str]) -> dict[str, Any]:
    return {
        "serial": c.serial,
        "user": owners.get(c.user_id),
        "device": c.device,
        "subject_cn": c.subject_cn,
        "status": c.status,
        "not_before": _iso(c.not_before),
        "not_after": _iso(c.not_after),
        "revoked_at": _iso(c.revoked_at),
        "revocation_reason": c.revocation_reason,
        "superseded_by": c.superseded_by,
        "overlap_until": _iso(c.overlap_until) if c.status == "valid" else None,
    }


def session_json(s: SessionInfo) -> dict[str, Any]:
    return {
        "session_id": s.session_id,
        "user": s.user,
        "device": s.device,
        "certificate_serial": s.certificate_serial,
        "real_address": s.real_address,
        "vpn_address": s.vpn_address,
        "protocol": s.protocol,
        "connected_at": _iso(s.connected_at),
        "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out,
        "tls_group": s.tls_group,
        "node": s.node,
        "client_version": s.client_version,
        "client_platform": s.client_platform,
        "client_gui": s.client_gui,
    }


async def owners(request: web.Request) -> dict[int | None, str]:
    return await portal_of(request).read(lambda s: {u.id: u.name for u in queries.list_users(s)})


# What an issue-only token may do besides reading certificates: issue one, fetch a profile.
ISSUE_ONLY = re.compile(rf"(GET|HEAD) {PREFIX}/certificates(/[0-9a-fA-F]+(/profile)?)?"
                        rf"|POST {PREFIX}/certificates")


# Reads that hand out a secret (a profile's private key, a tunnel's PSK): a read-only token
# (a dashboard's, a monitor's) reads the state, never the keys to the network.
SECRET_READS = re.compile(rf"{PREFIX}/certificates/[0-9a-fA-F]+/profile")


def in_scope(scope: str, request: web.Request) -> bool:
    """Whether a token of ``scope`` may make this request (full: anything)."""
    if scope == "read-only":
        return (request.method in ("GET", "HEAD")
                and SECRET_READS.fullmatch(request.path) is None
                and request.query.get("include_psk") != "true")
    if scope == "issue-only":
        return ISSUE_ONLY.fullmatch(f"{request.method} {request.path}") is not None
    return scope == "full"


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer-token authentication for admins, and JSON errors for everything under /api."""
    if not request.path.startswith(PREFIX + "/") or request.path == PREFIX + "/openapi.json":
        return await handler(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return error(401, "bearer token required")
    portal = portal_of(request)
    now = datetime.fromtimestamp(portal.clock(), UTC)
    hashed = token_hash(token.strip())

    def token_owner(s: Session) -> tuple[ApiToken, User] | None:
        try:
            row = queries.get_api_token_by_hash(s, token_hash=hashed)
            owner = queries.get_user_by_id(s, user_id=row.user_id)
        except NotFoundError:
            return None
        if row.id is not None and (row.expires_at is None or row.expires_at > now):
            queries.touch_api_token(s, token_id=row.id, at=now)
        return row, owner

    found = await portal.write(token_owner)
    if found is None:
        return error(401, "unknown API token")
    row, owner = found
    if row.expires_at is not None and row.expires_at <= now:
        return error(401, "this API token has expired")
    if owner.disabled or owner.role != "admin":
        return error(403, "the API is for enabled administrators")
    if not in_scope(row.scope, request):
        return error(403, f"this API token is {row.scope}: it may not {request.method} "
                          f"{request.path}")
    act_as(request, owner)
    route = request.match_info.route.resource
    query = QUERIES.get(route.canonical if route else "", m.Query)
    routed = request.match_info.http_exception is None
    try:
        if routed:
            parsed_query(request, query)
        return await handler(request)
    except BadRequest as exc:
        return error(400, str(exc))
    except web.HTTPNotFound:
        return error(404, "not found")
    except web.HTTPMethodNotAllowed as exc:
        answer = error(405, "method not allowed")
        answer.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        return answer


async def openapi_json(request: web.Request) -> web.StreamResponse:
    return web.json_response(document())


# Users ------------------------------------------------------------------------------------


async def _user(request: web.Request) -> User:
    name = request.match_info["name"]
    try:
        return await portal_of(request).read(lambda s: queries.get_user(s, name=name))
    except NotFoundError:
        raise web.HTTPNotFound() from None


async def list_users(request: web.Request) -> web.StreamResponse:
    users = await portal_of(request).read(queries.list_users)
    return web.json_response([user_json(u) for u in users])


async def create_user(request: web.Request) -> web.StreamResponse:
    body = await parsed(request, m.NewUser)
    generated = body.password is None
    password = body.password if body.password is not None else generate_password()
    try:
        user = await pki_ops.add_user(
            request, name=body.name, role=body.role, email=body.email, password=password,
            one_time=generated,
        )
    except StoreError as exc:
        return error(409, str(exc))
    except pki_ops.OperationError as exc:
        return error(400, str(exc))
    answer = user_json(user) | ({"password": password} if generated else {})
    return web.json_response(answer, status=201)


async def get_user(request: web.Request) -> web.StreamResponse:
    return web.json_response(user_json(await _user(request)))


async def update_user(request: web.Request) -> web.StreamResponse:
    user = await _user(request)
    body = await parsed(request, m.UserChange)
    me = user_of(request)
    if me is not None and me.id == user.id and (body.disabled or body.role == "user"):
        return error(409, "an administrator cannot disable or demote themselves")

    def update(s: Session) -> User:
        changed = user
        if body.disabled is not None:
            changed = queries.set_user_disabled(s, name=user.name, disabled=body.disabled)
        if body.role is not None:
            changed = queries.set_user_role(s, name=user.name, role=body.role)
        if body.two_factor_required is not None:
            changed = two_factor.set_required(s, name=user.name,
                                              required=body.two_factor_required)
        return changed

    user = await portal_of(request).write(update)
    if user.disabled and user.id is not None:
        await portal_of(request).sessions.drop_user(user.id)
    given = sorted(body.model_dump(exclude_none=True).items())
    await audit(request, "user.update", target=user.name, detail=f"{given} via=api")
    return web.json_response(user_json(user))


async def reset_two_factor(request: web.Request) -> web.StreamResponse:
    """The user's authenticator is lost: they enrol again."""
    user = await _user(request)
    user = await portal_of(request).write(lambda s: two_factor.reset(s, name=user.name))
    await audit(request, "user.2fa_reset", target=user.name, detail="via=api")
    return web.json_response(user_json(user))


async def delete_user(request: web.Request) -> web.StreamResponse:
    user = await _user(request)
    me = user_of(request)
    if me is not None and me.id == user.id:
        return error(409, "an administrator cannot delete themselves")
    revoked, ended = await pki_ops.delete_user(request, user.name)  # audited there
    if user.id is not None:
        await portal_of(request).sessions.drop_user(user.id)
    return web.json_response({"certificates_revoked": revoked, "sessions_ended": ended})


# Certificates -----------------------------------------------------------------------------


async def _certificate(request: web.Request) -> Certificate:
    serial = request.match_info["serial"].lower()
    if not SERIAL.fullmatch(serial):
        raise web.HTTPNotFound()
    try:
        row = await portal_of(request).read(lambda s: queries.get_certificate(s, serial=serial))
    except NotFoundError:
        raise web.HTTPNotFound() from None
    if row.kind != "client":
        raise web.HTTPNotFound()
    return row


async def list_certificates(request: web.Request) -> web.StreamResponse:
    status = request.query.get("status")  # checked by the middleware (CertificateQuery)
    owner = request.query.get("user")

    def listed(s: Session) -> list[Certificate]:
        user_id = None if owner is None else queries.get_user(s, name=owner).id
        return queries.list_certificates(s, user_id=user_id, kind="client", status=status)

    try:
        rows = await portal_of(request).read(listed)
    except NotFoundError:
        return web.json_response([])
    names = await owners(request)
    return web.json_response([certificate_json(c, names) for c in rows])


async def issue_certificate(request: web.Request) -> web.StreamResponse:
    body = await parsed(request, m.NewCertificate)
    try:
        row = await pki_ops.issue(request, user_name=body.user, device=body.device,
                                  days=body.days)
    except NotFoundError:
        return error(404, "no such user")
    except pki_ops.OperationError as exc:
        return error(409, str(exc))
    return web.json_response(certificate_json(row, await owners(request)), status=201)


async def get_certificate(request: web.Request) -> web.StreamResponse:
    row = await _certificate(request)
    return web.json_response(certificate_json(row, await owners(request)))


async def revoke_certificate(request: web.Request) -> web.StreamResponse:
    row = await _certificate(request)
    reason = (await parsed(request, m.Revocation)).reason
    if row.status == "revoked":
        return error(409, "already revoked")
    try:
        ended = await pki_ops.revoke(request, row.serial, reason)
    except pki_ops.OperationError as exc:
        return error(409, str(exc))
    revoked = await _certificate(request)
    return web.json_response(
        {
            "certificate": certificate_json(revoked, await owners(request)),
            "sessions_ended": ended,
        }
    )


async def renew_certificate(request: web.Request) -> web.StreamResponse:
    row = await _certificate(request)
    overlap = (await parsed(request, m.Renewal)).overlap_days
    try:
        new = await pki_ops.renew(request, row.serial, overlap_days=overlap)
    except pki_ops.OperationError as exc:
        return error(409, str(exc))
    return web.json_response(certificate_json(new, await owners(request)), status=201)


async def certificate_profile(request: web.Request) -> web.StreamResponse:
    row = await _certificate(request)
    try:
        profile = await pki_ops.render_profile(request, row.serial)
    except pki_ops.OperationError as exc:
        return error(409, str(exc))
    return profile_response(profile)


# Sessions ---------------------------------------------------------------------------------


async def list_sessions(request: web.Request) -> web.StreamResponse:
    try:
        sessions = older_clients(await portal_of(request).live_sessions(),
                                 request.query.get("older_than"))
    except ValueError as exc:
        raise BadRequest(f"older_than: {exc}") from None
    return web.json_response([session_json(s) for s in sessions])


async def kick_session(request: web.Request) -> web.StreamResponse:
    portal = portal_of(request)
    session_id = request.match_info["session_id"]
    known = {s.session_id: s for s in await portal.live_sessions()}
    if session_id not in known:
        return error(404, "no such live session")
    kicked = await portal.kick(session_id, "kicked by admin (api)")
    serial = known[session_id].certificate_serial
    await audit(request, "session.kick", target=serial, detail="via=api")
    return web.json_response({"kicked": kicked})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{PREFIX}/openapi.json", openapi_json)
    r.add_get(f"{PREFIX}/users", list_users)
    r.add_post(f"{PREFIX}/users", create_user)
    r.add_get(f"{PREFIX}/users/{{name}}", get_user)
    r.add_patch(f"{PREFIX}/users/{{name}}", update_user)
    r.add_delete(f"{PREFIX}/users/{{name}}", delete_user)
    r.add_post(f"{PREFIX}/users/{{name}}/two-factor/reset", reset_two_factor)
    r.add_get(f"{PREFIX}/certificates", list_certificates)
    r.add_post(f"{PREFIX}/certificates", issue_certificate)
    r.add_get(f"{PREFIX}/certificates/{{serial}}", get_certificate)
    r.add_post(f"{PREFIX}/certificates/{{serial}}/revoke", revoke_certificate)
    r.add_post(f"{PREFIX}/certificates/{{serial}}/renew", renew_certificate)
    r.add_get(f"{PREFIX}/certificates/{{serial}}/profile", certificate_profile)
    r.add_get(f"{PREFIX}/sessions", list_sessions)
    r.add_post(f"{PREFIX}/sessions/{{session_id}}/kick", kick_session)
