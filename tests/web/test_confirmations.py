"""Delete user, Revoke and Kick ask first: every form that deletes, revokes, removes or kicks
carries the question static/portal.js puts to the person before it is sent (the browser
journey answers it both ways in Chromium)."""

from __future__ import annotations

import re

from aiohttp.test_utils import TestClient

from tests.web.conftest import FakeGateway, Site, issue_for, login

DESTRUCTIVE = re.compile(r'<form method="post" action="[^"]*/(delete|revoke|kick|remove)"[^>]*>')


async def forms_on(client: TestClient, path: str) -> list[str]:
    page = await (await client.get(path)).text()
    return [m.group(0) for m in DESTRUCTIVE.finditer(page)]


async def test_destructive_admin_forms_ask_first(
    client: TestClient, site: Site, gateway: FakeGateway
) -> None:
    serial = issue_for(site, "alice", "laptop")
    gateway.add("s1", "alice", serial)
    await login(client, "root")
    seen = {}
    for path in ("/admin/users", "/admin/certificates", "/admin/sessions"):
        seen[path] = await forms_on(client, path)
        assert seen[path], path
        assert all("data-confirm=" in form for form in seen[path]), seen[path]
    assert any('data-confirm="Delete user bob?' in f for f in seen["/admin/users"])
    assert any('data-confirm="Revoke the certificate of alice/laptop?' in f
               for f in seen["/admin/certificates"])
    assert any('data-confirm="Kick alice/phone (10.8.0.2)?' in f for f in seen["/admin/sessions"])


async def test_revoking_ones_own_device_asks_first(client: TestClient, site: Site) -> None:
    serial = issue_for(site, "alice", "laptop")
    await login(client, "alice")
    (form,) = await forms_on(client, f"/devices/{serial}")
    assert 'data-confirm="Revoke laptop?' in form


async def test_the_script_asks_before_sending(client: TestClient) -> None:
    script = await (await client.get("/static/portal.js")).text()
    assert "form[data-confirm]" in script and "window.confirm(" in script
