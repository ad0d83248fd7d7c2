"""The portal's alarm page: admins only, CSRF like every form, current state shown, a
setting changed and audited, a secret never echoed back."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

from sslvpn.store import alarm_queries, db
from sslvpn.store.alarm_queries import Observation
from tests.web.conftest import Site, audit_actions, csrf_from, login
from tests.web.test_admin import post


def _settings(site: Site) -> dict[str, str]:
    with db.session(site.engine, write=False) as s:
        return alarm_queries.alarm_settings(s)


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_only_admins_reach_the_alarm_page(client: TestClient, site: Site,
                                                method: str) -> None:
    anonymous = await client.request(method, "/admin/alarms", allow_redirects=False)
    assert anonymous.status in (303, 403)
    token = await login(client, "alice")
    answer = await client.request(method, "/admin/alarms", data={
        "csrf_token": token, "key": "ipsec-down.seconds", "value": "5"})
    assert answer.status == 403
    assert _settings(site)["ipsec-down.seconds"] == "60"


async def test_a_form_without_the_csrf_token_changes_nothing(client: TestClient,
                                                             site: Site) -> None:
    await login(client, "root")
    answer = await client.post("/admin/alarms", data={"key": "ipsec-down.seconds",
                                                      "value": "5"})
    assert answer.status == 403
    assert _settings(site)["ipsec-down.seconds"] == "60"


async def test_admin_sees_the_raised_alarm_and_sets_a_rule_and_a_secret(
        client: TestClient, site: Site) -> None:
    with db.session(site.engine, write=True) as s:
        alarm_queries.observe(s, Observation(bad={"ipsec-down/a12-hq": (
            "ipsec-down", "a12-hq", "IPsec tunnel a12-hq down for 61 s", [])}))
    await login(client, "root")
    token = await csrf_from(client, "/admin/alarms")
    page = await (await client.get("/admin/alarms")).text()
    assert "RAISED" in page and "IPsec tunnel a12-hq down for 61 s" in page
    status, page = await post(client, "/admin/alarms", token, key="ipsec-down.seconds",
                              value="120")
    assert status == 200 and "ipsec-down.seconds set." in page
    status, page = await post(client, "/admin/alarms", token, key="webhook.secret",
                              value="a12-not-shown")
    assert status == 200 and "a12-not-shown" not in page
    assert _settings(site)["ipsec-down.seconds"] == "120"
    assert _settings(site)["webhook.secret"] == "a12-not-shown"
    status, _ = await post(client, "/admin/alarms", token, key="no.such", value="1")
    assert status == 400
    status, page = await post(client, "/admin/alarms", token, key="ipsec-down.seconds",
                              value="soon")
    assert status == 400 and "ipsec-down.seconds must be a number" in page
    assert _settings(site)["ipsec-down.seconds"] == "120"
    assert audit_actions(site, actor="root").count("alarm.set") == 2
