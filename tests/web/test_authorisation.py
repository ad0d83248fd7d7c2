"""The authorisation matrix: every page and action for anonymous, owner, other user, admin."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

from tests.web.conftest import Site, issue_for, login

ANON, OWNER, OTHER, ADMIN = "anonymous", "alice", "bob", "root"
LOGIN = 303  # anonymous visitors are sent to /login

# path template -> expected status per role; {serial} is alice's device
GET_MATRIX: dict[str, dict[str, int]] = {
    "/devices": {ANON: LOGIN, OWNER: 200, OTHER: 200, ADMIN: 200},
    "/devices/{serial}": {ANON: LOGIN, OWNER: 200, OTHER: 404, ADMIN: 404},
    "/devices/{serial}/profile.ovpn": {ANON: LOGIN, OWNER: 200, OTHER: 404, ADMIN: 404},
    "/devices/{serial}/import-links/1": {ANON: LOGIN, OWNER: 404, OTHER: 404, ADMIN: 404},
    "/account/password": {ANON: LOGIN, OWNER: 200, OTHER: 200, ADMIN: 200},
    "/admin": {ANON: LOGIN, OWNER: 403, OTHER: 403, ADMIN: 200},
    "/admin/users": {ANON: LOGIN, OWNER: 403, OTHER: 403, ADMIN: 200},
    "/admin/certificates": {ANON: LOGIN, OWNER: 403, OTHER: 403, ADMIN: 200},
    "/admin/certificates/{serial}/profile.ovpn": {ANON: LOGIN, OWNER: 403, OTHER: 403, ADMIN: 200},
    "/admin/certificates/{serial}/import-links/1": {ANON: LOGIN, OWNER: 403, OTHER: 403,
                                                    ADMIN: 404},
    "/admin/crl.pem": {ANON: LOGIN, OWNER: 403, OTHER: 403, ADMIN: 200},
    "/admin/sessions": {ANON: LOGIN, OWNER: 403, OTHER: 403, ADMIN: 200},
    "/admin/traffic.json": {ANON: LOGIN, OWNER: 403, OTHER: 403, ADMIN: 200},
    "/admin/audit": {ANON: LOGIN, OWNER: 403, OTHER: 403, ADMIN: 200},
    "/admin/settings": {ANON: LOGIN, OWNER: 403, OTHER: 403, ADMIN: 200},
    "/admin/api-tokens": {ANON: LOGIN, OWNER: 403, OTHER: 403, ADMIN: 200},
    # the API never accepts a portal cookie, only an admin's bearer token
    "/api/v1/users": {ANON: 401, OWNER: 401, OTHER: 401, ADMIN: 401},
    "/api/v1/openapi.json": {ANON: 200, OWNER: 200, OTHER: 200, ADMIN: 200},
    "/openvpn-api/profile": {ANON: 200, OWNER: 200, OTHER: 200, ADMIN: 200},
    "/rest/GetUserlogin": {ANON: 401, OWNER: 401, OTHER: 401, ADMIN: 401},
}

POST_MATRIX: dict[str, dict[str, int]] = {
    "/devices/{serial}/import-links": {OWNER: 303, OTHER: 404, ADMIN: 404},
    "/devices/{serial}/import-links/1/revoke": {OTHER: 404, ADMIN: 404},
    "/devices/{serial}/revoke": {OTHER: 404, ADMIN: 404},
    "/admin/users": {OWNER: 403, OTHER: 403},
    "/admin/users/bob/disable": {OWNER: 403, OTHER: 403},
    "/admin/users/bob/password": {OWNER: 403, OTHER: 403},
    "/admin/users/bob/delete": {OWNER: 403, OTHER: 403},
    "/admin/certificates": {OWNER: 403, OTHER: 403},
    "/admin/certificates/{serial}/renew": {OWNER: 403, OTHER: 403},
    "/admin/certificates/{serial}/import-links": {OWNER: 403, OTHER: 403},
    "/admin/certificates/{serial}/revoke": {OWNER: 403, OTHER: 403},
    "/admin/sessions/s1/kick": {OWNER: 403, OTHER: 403},
    "/admin/settings": {OWNER: 403, OTHER: 403},
    "/admin/api-tokens": {OWNER: 403, OTHER: 403},
    "/admin/api-tokens/1/delete": {OWNER: 403, OTHER: 403},
}


@pytest.mark.parametrize("path", sorted(GET_MATRIX))
@pytest.mark.parametrize("role", [ANON, OWNER, OTHER, ADMIN])
async def test_get_matrix(client: TestClient, site: Site, path: str, role: str) -> None:
    serial = issue_for(site, "alice")
    if role != ANON:
        await login(client, role)
    response = await client.get(path.format(serial=serial), allow_redirects=False)
    assert response.status == GET_MATRIX[path][role]
    if response.status == LOGIN:
        assert response.headers["Location"] == "/login"


POST_CASES = [(path, role) for path, roles in sorted(POST_MATRIX.items()) for role in roles]


@pytest.mark.parametrize(("path", "role"), POST_CASES)
async def test_post_matrix(client: TestClient, site: Site, path: str, role: str) -> None:
    expected = POST_MATRIX[path][role]
    serial = issue_for(site, "alice")
    csrf = await login(client, role)
    response = await client.post(
        path.format(serial=serial), data={"csrf_token": csrf}, allow_redirects=False
    )
    assert response.status == expected


async def test_anonymous_posts_are_rejected_without_a_session(
    client: TestClient, site: Site
) -> None:
    serial = issue_for(site, "alice")
    for path in POST_MATRIX:
        response = await client.post(path.format(serial=serial), allow_redirects=False)
        assert response.status == 403, path


async def test_revoked_device_stays_hidden_from_other_users(client: TestClient, site: Site) -> None:
    serial = issue_for(site, "alice")
    await login(client, "bob")
    page = await (await client.get("/devices")).text()
    assert serial not in page
