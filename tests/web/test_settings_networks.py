"""The portal's settings page checks the client pools and VPC networks with the same rule as
`sslvpn init` (client_profiles.inputs.checked_networks): the IPv6 pool can be set and
cleared, and a refused value is one sentence with nothing written. Retention days and the
TLS key-exchange groups are shown and saved the same way."""

from __future__ import annotations

import html

import pytest
from aiohttp.test_utils import TestClient

from client_profiles.pkifiles import LifecycleError
from sslvpn.store import db, queries
from sslvpn.store.models import GatewaySettings
from tests.web.conftest import Site, issue_for, login

FORM = {
    "public_addresses": "vpn.example.test",
    "port": "1194",
    "protocols": "udp",
    "vpc_networks": "10.10.0.0/24",
    "dns_servers": "",
    "pool_cidr": "10.8.0.0/24",
    "pool6_cidr": "",
    "import_token_ttl_seconds": "600",
}


async def _save(client: TestClient, csrf: str, **changes: str) -> tuple[int, str]:
    response = await client.post("/admin/settings", data={"csrf_token": csrf, **FORM, **changes})
    return response.status, html.unescape(await response.text())


def _stored(site: Site) -> GatewaySettings:
    with db.session(site.engine, write=False) as s:
        return queries.get_settings(s)


async def test_the_ipv6_pool_is_saved_shown_and_cleared(client: TestClient, site: Site) -> None:
    csrf = await login(client, "root")
    status, page = await _save(client, csrf, pool6_cidr="fd00:8::/64",
                               vpc_networks="10.10.0.0/24 fd00:10:10::/64")
    assert status == 200 and "Settings saved." in page, page
    assert 'name="pool6_cidr" value="fd00:8::/64"' in page
    stored = _stored(site)
    assert stored.pool6_cidr == "fd00:8::/64"
    assert stored.vpc_networks == ["10.10.0.0/24", "fd00:10:10::/64"]
    status, page = await _save(client, csrf, pool6_cidr=" ")
    assert status == 200 and "Settings saved." in page, page
    assert _stored(site).pool6_cidr is None and _stored(site).vpc_networks == ["10.10.0.0/24"]


@pytest.mark.parametrize(
    ("changes", "sentence"),
    [
        ({"vpc_networks": "fd00:10:10::/64"},
         "VPC network fd00:10:10::/64 is IPv6: give an IPv6 client pool too."),
        ({"pool6_cidr": "fd00:8::/64", "vpc_networks": "fd00:8::/48"},
         "IPv6 pool fd00:8::/64 overlaps the VPC network fd00:8::/48."),
        ({"pool6_cidr": "fd00:8::/48"}, "IPv6 pool fd00:8::/48 must be a /64 to /112 network."),
        ({"pool6_cidr": "10.9.0.0/24"}, "IPv6 pool 10.9.0.0/24 is not an IPv6 network."),
        ({"pool6_cidr": "fe80::/64"}, "must be a global or unique-local (fd00::/8) network."),
        ({"vpc_networks": "10.8.0.0/16"}, "Pool 10.8.0.0/24 overlaps the VPC network 10.8.0.0/16."),
        ({"vpc_networks": "10.10.0.0/24 10.8.0.128/25"},
         "Pool 10.8.0.0/24 overlaps the VPC network 10.8.0.128/25."),
        ({"pool_cidr": "10.8.0.0/30"},
         "Pool 10.8.0.0/30 must be an IPv4 network of /29 or larger."),
        ({"pool_cidr": "fd00::/64"}, "Pool fd00::/64 must be an IPv4 network of /29 or larger."),
        ({"vpc_networks": "10.10.0.1/24"},
         "VPC network '10.10.0.1/24' is not a network in CIDR form."),
    ],
)
async def test_bad_networks_are_one_sentence_and_change_nothing(
    client: TestClient, site: Site, changes: dict[str, str], sentence: str
) -> None:
    csrf = await login(client, "root")
    before = _stored(site)
    status, page = await _save(client, csrf, **changes)
    assert status == 400 and sentence in page, page
    after = _stored(site)
    assert (after.pool_cidr, after.pool6_cidr, after.vpc_networks, after.updated_at) == (
        before.pool_cidr, before.pool6_cidr, before.vpc_networks, before.updated_at)



async def test_retention_days_are_shown_checked_and_saved(client: TestClient, site: Site) -> None:
    csrf = await login(client, "root")
    page = html.unescape(await (await client.get("/admin/settings")).text())
    assert 'name="audit_retention_days" type="number" min="0" max="36500" value="400"' in page
    assert 'name="import_link_retention_days" type="number" min="0" max="36500" value="7"' in page
    status, page = await _save(client, csrf, audit_retention_days="30",
                               session_retention_days="-1", import_link_retention_days="99999")
    assert status == 400 and "Session history: keep 0 (forever) to 36500 days." in page
    assert "Used or expired import links: keep 0 (forever) to 36500 days." in page
    assert _stored(site).audit_retention_days == 400  # nothing written
    status, page = await _save(client, csrf, audit_retention_days="30",
                               import_link_retention_days="0")
    assert status == 200 and "Settings saved." in page
    stored = _stored(site)
    assert (stored.audit_retention_days, stored.import_link_retention_days) == (30, 0)
    assert (stored.session_retention_days, stored.disabled_user_retention_days) == (400, 400)


async def test_tls_groups_are_shown_checked_and_saved(client: TestClient, site: Site) -> None:
    csrf = await login(client, "root")
    page = html.unescape(await (await client.get("/admin/settings")).text())
    assert 'name="tls_groups" value="X25519MLKEM768:X25519:P-256"' in page
    status, page = await _save(client, csrf, tls_groups="X25519:bogus")
    assert status == 400 and "TLS groups 'X25519:bogus': this OpenSSL does not know" in page
    assert _stored(site).tls_groups == "X25519MLKEM768:X25519:P-256"  # nothing written
    status, page = await _save(client, csrf, tls_groups=" X25519:P-256 ")
    assert status == 200 and "Settings saved." in page
    assert _stored(site).tls_groups == "X25519:P-256"


async def test_per_user_limits_are_saved_and_a_device_beyond_them_refused(
    client: TestClient, site: Site
) -> None:
    csrf = await login(client, "root")
    page = html.unescape(await (await client.get("/admin/settings")).text())
    assert 'name="max_devices_per_user" type="number" min="0" max="1000000" value="10"' in page
    status, page = await _save(client, csrf, max_devices_per_user="x", max_sessions_per_user="2")
    assert status == 400 and "Devices per user: 0 to 1000000." in page
    status, page = await _save(client, csrf, max_devices_per_user="1", max_sessions_per_user="2")
    assert status == 200 and "Settings saved." in page, page
    stored = _stored(site)
    assert (stored.max_devices_per_user, stored.max_sessions_per_user) == (1, 2)
    issue_for(site, "alice", "phone")
    with pytest.raises(LifecycleError, match="the most allowed"):
        issue_for(site, "alice", "laptop")
