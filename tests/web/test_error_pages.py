"""403, 404 and 405 met in a browser are pages in the portal's layout (menu, stylesheet, a
way back) that keep their status and reason; machine faces keep their plain answers."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.web.conftest import Site, issue_for, login

LAYOUT = '<link rel="stylesheet" href="/static/portal.css">'


async def styled_page(client: TestClient, method: str, path: str, status: int,
                      **kwargs: object) -> str:
    response = await client.request(method, path, allow_redirects=False, **kwargs)  # type: ignore[arg-type]
    assert response.status == status
    assert response.content_type == "text/html"
    page = await response.text()
    assert LAYOUT in page and 'id="error-page"' in page
    return page


async def test_a_user_refused_an_admin_page_sees_it_in_the_layout(client: TestClient) -> None:
    await login(client, "alice")
    page = await styled_page(client, "GET", "/admin/users", 403)
    assert "403 · Not allowed" in page and "Administrators only." in page
    assert 'href="/devices">My devices<' in page and 'href="/devices">Back to' in page


async def test_unknown_addresses_and_other_peoples_devices_are_styled_404s(
    client: TestClient, site: Site
) -> None:
    page = await styled_page(client, "GET", "/no/such/page", 404)
    assert 'href="/login">Log in<' in page
    assert "Set-Cookie" not in (await client.get("/no/such/page")).headers  # nothing kept
    theirs = issue_for(site, "bob")
    await login(client, "alice")
    page = await styled_page(client, "GET", f"/devices/{theirs}", 404)
    assert "No such device." in page


async def test_a_wrong_method_is_a_styled_405_with_allow(client: TestClient) -> None:
    response = await client.get("/logout")
    assert response.status == 405 and "POST" in response.headers["Allow"]
    await styled_page(client, "GET", "/logout", 405)


async def test_an_expired_form_is_a_styled_403(client: TestClient) -> None:
    await login(client, "alice")
    page = await styled_page(client, "POST", "/devices", 403, data={"csrf_token": "forged"})
    assert "The form expired or did not come from this portal." in page


async def test_machine_faces_keep_plain_answers(client: TestClient) -> None:
    await login(client, "alice")
    for path in ("/api/v1/no-such", "/admin/traffic.json", "/rest/NoSuchCall"):
        response = await client.get(path)
        assert response.status in (401, 403, 404), path
        assert 'id="error-page"' not in await response.text(), path
