"""The IPsec admin pages: authorisation for every route, the same checks as the CLI with the
reason on the same page and nothing changed, the PSK never shown, and live tunnel status."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sslvpn.runtime.control import TunnelStatus
from sslvpn.store import db, node_queries
from sslvpn.store import ipsec_queries as q
from tests.web.conftest import PATIENT, FakeGateway, Site, audit_actions, login
from web.app import create_app
from web.portal import PortalSettings

PSK = "Zq8-fT3#pLw9!vR2@mKx7"
ANON, USER, ADMIN = "anonymous", "alice", "root"
LOGIN = 303

GET_PAGES = ["/admin/ipsec", "/admin/ipsec/tunnels", "/admin/ipsec/tunnels/t1",
             "/admin/ipsec/tunnels/t1/config?format=libreswan"]
POST_ACTIONS = [
    "/admin/ipsec/gateways",
    "/admin/ipsec/gateways/gw1/bandwidth",
    "/admin/ipsec/gateways/gw1/delete",
    "/admin/ipsec/customer-gateways",
    "/admin/ipsec/customer-gateways/dc1/delete",
    "/admin/ipsec/tunnels",
    "/admin/ipsec/tunnels/t1/up",
    "/admin/ipsec/tunnels/t1/down",
    "/admin/ipsec/tunnels/t1/delete",
    "/admin/ipsec/tunnels/t1/settings",
    "/admin/ipsec/tunnels/t1/actions/restart",
    "/admin/ipsec/tunnels/t1/policies",
    "/admin/ipsec/tunnels/t1/policies/1/delete",
]


@dataclass
class StatusGateway(FakeGateway):
    """A gateway double that also reports tunnel status (or fails to, when told)."""

    tunnels: list[TunnelStatus] = field(default_factory=list)
    broken: bool = False
    actions: list[tuple[str, str]] = field(default_factory=list)

    def tunnel_status(self) -> list[TunnelStatus]:
        if self.broken:
            raise ConnectionRefusedError("control socket gone")
        return list(self.tunnels)

    def tunnel_action(self, name: str, action: str) -> str:
        """Acts on a tunnel it reports up; refuses others as the gateway does."""
        if not any(t.name == name and t.state == "up" for t in self.tunnels):
            raise ValueError(f"tunnel {name!r} is not up (down)")
        self.actions.append((name, action))
        return f"tunnel {name}: {action}"


@pytest.fixture
def gateway() -> StatusGateway:
    return StatusGateway()


def up_status(name: str) -> TunnelStatus:
    return TunnelStatus(
        name=name,
        state="up",
        last_error=None,
        established_at=datetime(2026, 11, 24, 20, 0, 5, tzinfo=UTC),
        spi_in="c1a2b3d4",
        spi_out="0badcafe",
        bytes_in=4242,
        bytes_out=8484,
        packets_in=42,
        packets_out=84,
        ike_proposal="aes256-sha256-modp2048",
        esp_proposal="aes256gcm16",
    )


def seed(site: Site) -> None:
    """gw1 and dc1 joined by tunnel t1 with one policy; dc2 spare."""
    with db.session(site.engine, write=True) as s:
        q.create_vpn_gateway(s, name="gw1", public_address="198.18.0.1")
        q.create_customer_gateway(s, name="dc1", address="198.19.0.2")
        q.create_customer_gateway(s, name="dc2", address="198.19.0.3")
    add_tunnel(site, "t1", "dc1")
    with db.session(site.engine, write=True) as s:
        q.add_policy(s, tunnel="t1", local_cidr="10.0.0.0/16", peer_cidr="192.168.1.0/24")


def add_tunnel(site: Site, name: str, customer_gateway: str) -> None:
    """A tunnel from gw1 with the default proposals and no policies."""
    with db.session(site.engine, write=True) as s:
        q.create_tunnel(
            s,
            name=name,
            gateway="gw1",
            customer_gateway=customer_gateway,
            psk=PSK,
            ike_proposals="aes256gcm16-prfsha256-ecp256",
            esp_proposals="aes256gcm16",
        )


async def post(client: TestClient, path: str, csrf: str, **form: str) -> tuple[int, str]:
    """Submit a form and follow the redirect; (final status, page text)."""
    response = await client.post(path, data={"csrf_token": csrf, **form})
    return response.status, await response.text()


def stored(site: Site) -> tuple[list[str], list[str], list[str], list[tuple[str, str, str]]]:
    with db.session(site.engine, write=False) as s:
        return (
            [g.name for g in q.list_vpn_gateways(s)],
            [c.name for c in q.list_customer_gateways(s)],
            [t.name for t in q.list_tunnels(s)],
            [(t, p.local_cidr, p.peer_cidr) for t, p in q.list_policies(s)],
        )


# Authorisation --------------------------------------------------------------------------


@pytest.mark.parametrize("path", GET_PAGES)
@pytest.mark.parametrize(("role", "expected"), [(ANON, LOGIN), (USER, 403), (ADMIN, 200)])
async def test_get_matrix(
    client: TestClient, site: Site, path: str, role: str, expected: int
) -> None:
    seed(site)
    if role != ANON:
        await login(client, role)
    response = await client.get(path, allow_redirects=False)
    assert response.status == expected
    if expected == LOGIN:
        assert response.headers["Location"] == "/login"


@pytest.mark.parametrize("path", POST_ACTIONS)
async def test_post_matrix(client: TestClient, site: Site, path: str) -> None:
    seed(site)
    anonymous = await client.post(path, allow_redirects=False)
    assert anonymous.status == 403  # no session, no CSRF token
    csrf = await login(client, USER)
    response = await client.post(path, data={"csrf_token": csrf}, allow_redirects=False)
    assert response.status == 403
    assert stored(site) == (
        ["gw1"],
        ["dc1", "dc2"],
        ["t1"],
        [("t1", "10.0.0.0/16", "192.168.1.0/24")],
    )


async def test_admin_forms_need_the_csrf_token(client: TestClient, site: Site) -> None:
    await login(client, ADMIN)
    response = await client.post(
        "/admin/ipsec/gateways", data={"name": "gw9", "public_address": "198.18.0.9"}
    )
    assert response.status == 403
    assert stored(site)[0] == []


async def test_navigation_links_to_ipsec_for_admins_only(client: TestClient) -> None:
    await login(client, USER)
    assert 'href="/admin/ipsec"' not in await (await client.get("/devices")).text()
    await login(client, ADMIN)
    assert 'href="/admin/ipsec"' in await (await client.get("/devices")).text()


# Gateways and customer gateways ---------------------------------------------------------


async def test_gateways_are_created_checked_and_deleted(client: TestClient, site: Site) -> None:
    csrf = await login(client, ADMIN)
    status, page = await post(
        client,
        "/admin/ipsec/gateways",
        csrf,
        name="gw1",
        public_address="198.18.0.1",
        bandwidth="100M",
    )
    assert status == 200 and "VPN gateway gw1 created." in page and "100M" in page
    refusals = {
        "127.0.0.1": "loopback",
        "224.0.0.5": "multicast",
        "not-an-ip": "is not an IP address",
    }
    for address, reason in refusals.items():
        status, page = await post(
            client, "/admin/ipsec/gateways", csrf, name="gw2", public_address=address
        )
        assert status == 400 and reason in page and 'role="alert"' in page
        assert f'value="{address}"' in page  # the form keeps what was typed
    status, page = await post(
        client,
        "/admin/ipsec/gateways",
        csrf,
        name="gw2",
        public_address="198.18.0.2",
        bandwidth="fast",
    )
    assert status == 400 and "is not a rate like 100M" in page
    status, page = await post(
        client, "/admin/ipsec/gateways", csrf, name="bad name", public_address="198.18.0.2"
    )
    assert status == 400 and "is not allowed" in page
    status, page = await post(
        client, "/admin/ipsec/gateways", csrf, name="gw1", public_address="198.18.0.3"
    )
    assert status == 400 and "already exists" in page
    assert stored(site)[0] == ["gw1"]
    status, page = await post(client, "/admin/ipsec/gateways/gw1/bandwidth", csrf, bandwidth="1G")
    assert status == 200 and "bandwidth: 1G" in page
    status, page = await post(client, "/admin/ipsec/gateways/gw1/bandwidth", csrf, bandwidth="")
    assert "bandwidth: unlimited" in page
    status, _ = await post(client, "/admin/ipsec/gateways/nope/bandwidth", csrf, bandwidth="1G")
    assert status == 404
    status, page = await post(client, "/admin/ipsec/gateways/gw1/delete", csrf)
    assert status == 200 and "VPN gateway gw1 deleted." in page
    assert stored(site)[0] == []
    actions = audit_actions(site, actor="root")
    assert {"ipsec.gateway.create", "ipsec.gateway.bandwidth", "ipsec.gateway.delete"} <= set(
        actions
    )


async def test_objects_in_use_are_not_deleted(client: TestClient, site: Site) -> None:
    seed(site)
    csrf = await login(client, ADMIN)
    status, page = await post(client, "/admin/ipsec/gateways/gw1/delete", csrf)
    assert status == 409 and "still has tunnels: t1" in page
    status, page = await post(client, "/admin/ipsec/customer-gateways/dc1/delete", csrf)
    assert status == 409 and "still has tunnels: t1" in page
    status, page = await post(client, "/admin/ipsec/customer-gateways/dc2/delete", csrf)
    assert status == 200 and "Customer gateway dc2 deleted." in page
    assert stored(site)[:2] == (["gw1"], ["dc1"])


async def test_customer_gateway_needs_a_usable_unicast_address(
    client: TestClient, site: Site
) -> None:
    csrf = await login(client, ADMIN)
    unspecified = "0.0.0.0"  # noqa: S104 - an address to refuse, nothing binds to it
    for address in (unspecified, "169.254.1.1", "255.255.255.255", "198.19.0.256"):
        status, page = await post(
            client, "/admin/ipsec/customer-gateways", csrf, customer_name="dc1", address=address
        )
        assert status == 400 and 'role="alert"' in page, address
    status, page = await post(
        client, "/admin/ipsec/customer-gateways", csrf, customer_name="dc1", address=" 198.19.0.2 "
    )
    assert status == 200 and "Customer gateway dc1 created." in page and "198.19.0.2" in page
    assert stored(site)[1] == ["dc1"]


# Tunnels ---------------------------------------------------------------------------------


def tunnel_form(**changes: str) -> dict[str, str]:
    form = {
        "name": "t2",
        "gateway": "gw1",
        "customer_gateway": "dc2",
        "psk": PSK,
        "ike": "aes256gcm16-prfsha256-ecp256",
        "esp": "aes256gcm16",
        "start": "wait",
    }
    return form | changes


async def test_tunnel_form_refuses_bad_input_and_never_echoes_the_key(
    client: TestClient, site: Site
) -> None:
    seed(site)
    csrf = await login(client, ADMIN)
    refusals = [
        (tunnel_form(psk="short-key"), "pre-shared key too short"),
        (tunnel_form(psk="a" * 30), "pre-shared key too weak"),
        (tunnel_form(ike="aes256gcm16-prfmd5-ecp256"), "IKE proposals"),
        (tunnel_form(esp="des"), "ESP proposals"),
        (tunnel_form(start="sometimes"), "start action must be one of"),
        (tunnel_form(customer_gateway="dc1"), "already connects"),
        (tunnel_form(gateway="nope"), "no VPN gateway named"),
        (tunnel_form(name="t1"), "already exists"),
    ]
    for form, reason in refusals:
        status, page = await post(client, "/admin/ipsec/tunnels", csrf, **form)
        assert status == 400 and reason in page, reason
        assert form["psk"] not in page
    assert stored(site)[2] == ["t1"]
    status, page = await post(client, "/admin/ipsec/tunnels", csrf, **tunnel_form())
    assert status == 200 and "Tunnel t2 created" in page and PSK not in page
    with db.session(site.engine, write=False) as s:
        made = q.get_tunnel(s, name="t2")
    assert made.psk == PSK and made.start_action == "wait"
    for path in ("/admin/ipsec/tunnels", "/admin/ipsec/tunnels/t2", "/admin/audit"):
        assert PSK not in await (await client.get(path)).text()


async def test_tunnel_admin_switch_and_delete(client: TestClient, site: Site) -> None:
    seed(site)
    csrf = await login(client, ADMIN)
    status, page = await post(client, "/admin/ipsec/tunnels/t1/down", csrf)
    assert status == 200 and "Tunnel t1 set down" in page and "Bring up" in page
    with db.session(site.engine, write=False) as s:
        assert q.get_tunnel(s, name="t1").admin_up is False
    status, page = await post(client, "/admin/ipsec/tunnels/t1/up", csrf)
    assert "Take down" in page
    with db.session(site.engine, write=False) as s:
        assert q.get_tunnel(s, name="t1").admin_up is True
    assert (await post(client, "/admin/ipsec/tunnels/nope/up", csrf))[0] == 404
    status, page = await post(client, "/admin/ipsec/tunnels/t1/delete", csrf)
    assert status == 200 and "Tunnel t1 and its policies deleted." in page
    assert stored(site)[2:] == ([], [])
    assert (await client.get("/admin/ipsec/tunnels/t1")).status == 404
    assert {"ipsec.tunnel.down", "ipsec.tunnel.up", "ipsec.tunnel.delete"} <= set(
        audit_actions(site, actor="root")
    )


# Policies --------------------------------------------------------------------------------


async def test_policies_follow_the_overlap_rules(client: TestClient, site: Site) -> None:
    seed(site)
    add_tunnel(site, "t2", "dc2")
    csrf = await login(client, ADMIN)
    path = "/admin/ipsec/tunnels/t2/policies"
    refusals = [
        ("10.0.0.0/16", "192.168.1.128/25", "a peer range of tunnel &#39;t1&#39;"),
        ("192.168.1.0/24", "172.16.0.0/24", "a peer range of tunnel &#39;t1&#39;"),
        ("10.0.0.0/16", "10.0.5.0/24", "overlaps peer range"),
        ("10.0.0.1/16", "172.16.0.0/24", "has host bits set; did you mean 10.0.0.0/16?"),
        ("10.0.0.0/16", "banana", "is not a network like"),
        ("10.0.0.0/16", "2001:db8::/64", "different IP versions"),
    ]
    for local, peer, reason in refusals:
        status, page = await post(client, path, csrf, local=local, peer=peer)
        assert status == 400 and reason in page, reason
        assert f'value="{peer}"' in page
    assert stored(site)[3] == [("t1", "10.0.0.0/16", "192.168.1.0/24")]
    status, page = await post(client, path, csrf, local="10.0.0.0/16", peer="172.16.0.0/24")
    assert status == 200 and "Policy 10.0.0.0/16 &lt;-&gt; 172.16.0.0/24 added to t2." in page
    status, page = await post(client, path, csrf, local="10.0.0.0/16", peer="172.16.0.0/24")
    assert status == 400 and "already has policy" in page
    with db.session(site.engine, write=False) as s:
        ((_, policy),) = q.list_policies(s, tunnel="t2")
    assert (await post(client, f"{path}/999/delete", csrf))[0] == 404
    assert (await post(client, f"{path}/x/delete", csrf))[0] == 404
    status, page = await post(client, f"{path}/{policy.id}/delete", csrf)
    assert status == 200 and "Policy removed from t2." in page
    assert stored(site)[3] == [("t1", "10.0.0.0/16", "192.168.1.0/24")]
    assert {"ipsec.policy.add", "ipsec.policy.delete"} <= set(audit_actions(site, actor="root"))


# Status ----------------------------------------------------------------------------------


async def test_tunnel_status_from_the_gateway(
    client: TestClient, site: Site, gateway: StatusGateway
) -> None:
    seed(site)
    gateway.tunnels = [up_status("t1")]
    await login(client, ADMIN)
    page = await (await client.get("/admin/ipsec/tunnels/t1")).text()
    for shown in ("c1a2b3d4", "0badcafe", "4242 bytes, 42 packets", "8484 bytes, 84 packets",
                  "aes256-sha256-modp2048 / aes256gcm16"):
        assert shown in page
    assert "2026-11-24 20:00:05" in page and 'class="ok">up<' in page
    listing = await (await client.get("/admin/ipsec/tunnels")).text()
    assert 'data-refresh="5.0"' in listing and "4242 / 8484" in listing
    gateway.tunnels = []
    page = await (await client.get("/admin/ipsec/tunnels/t1")).text()
    assert 'class="bad">down<' in page and "not running" in page
    gateway.broken = True
    page = await (await client.get("/admin/ipsec/tunnels/t1")).text()
    assert "the gateway did not answer" in page and "control socket" not in page


async def test_status_without_a_gateway(site: Site) -> None:
    seed(site)
    settings = PortalSettings(store_budget=PATIENT)
    app = create_app(engine=site.engine, paths=site.paths, control=None, settings=settings)
    async with TestClient(TestServer(app)) as client:
        await login(client, ADMIN)
        page = await (await client.get("/admin/ipsec/tunnels")).text()
    assert "no gateway is attached to this portal" in page


async def test_names_with_url_characters_stay_reachable(client: TestClient, site: Site) -> None:
    """Names the CLI allows but a URL must escape still lead to their own pages."""
    seed(site)
    with db.session(site.engine, write=True) as s:
        q.create_customer_gateway(s, name="dc 3?", address="198.19.0.4")
        q.create_tunnel(
            s,
            name="t 3?",
            gateway="gw1",
            customer_gateway="dc 3?",
            psk=PSK,
            ike_proposals="aes256gcm16-prfsha256-ecp256",
            esp_proposals="aes256gcm16",
        )
    await login(client, ADMIN)
    listing = await (await client.get("/admin/ipsec/tunnels")).text()
    assert 'href="/admin/ipsec/tunnels/t%203%3F"' in listing
    page = await client.get("/admin/ipsec/tunnels/t%203%3F")
    assert page.status == 200 and "Tunnel t 3?" in await page.text()


async def test_fleet_gateways_name_their_nodes_and_tunnels_show_who_holds_them(
    client: TestClient, site: Site, gateway: StatusGateway
) -> None:
    with db.session(site.engine, write=True) as s:
        node_queries.add_node(s, name="a", public_addresses=["198.18.0.1"],
                              pool_cidr="10.8.0.0/26")
        node_queries.add_node(s, name="b", public_addresses=["198.18.0.2"],
                              pool_cidr="10.8.0.64/26")
    csrf = await login(client, ADMIN)
    status, page = await post(client, "/admin/ipsec/gateways", csrf, name="gw2",
                              public_address="198.18.0.9", nodes="a nowhere")
    assert status == 400 and "no node named &#39;nowhere&#39;" in page
    status, page = await post(client, "/admin/ipsec/gateways", csrf, name="gw2",
                              public_address="198.18.0.9", nodes="a, b")
    assert status == 200 and "<td>a, b</td>" in page
    seed(site)
    with db.session(site.engine, write=True) as s:
        q.set_tunnel_owner(s, tunnel_id=q.get_tunnel(s, name="t1").id or 0, node="b")
    page = await (await client.get("/admin/ipsec/tunnels/t1")).text()
    assert "<th>Node</th><td>b</td>" in page and 'class="warn">elsewhere<' in page
    gateway.tunnels = [replace(up_status("t1"), node="a")]  # a took it and runs it here
    listing = await (await client.get("/admin/ipsec/tunnels")).text()
    assert "<td>a</td>" in listing and 'class="ok">up<' in listing


async def test_tunnel_settings_and_actions_on_the_tunnel_page(
    client: TestClient, site: Site, gateway: StatusGateway
) -> None:
    seed(site)
    csrf = await login(client, ADMIN)
    page = await (await client.get("/admin/ipsec/tunnels/t1")).text()
    assert 'name="dpd_delay" class="mono" value="30s"' in page
    assert 'name="retransmit_base" class="mono" value="1.8"' in page
    assert 'name="fragment_size" class="mono" value="1280"' in page
    code, page = await post(client, "/admin/ipsec/tunnels/t1/settings", csrf,
                            dpd_delay="10s", dpd_action="clear", start="trap",
                            fragment_size="1400")
    assert code == 200 and "settings saved" in page
    with db.session(site.engine, write=False) as s:
        row = q.get_tunnel(s, name="t1")
        assert (row.dpd_delay, row.dpd_action, row.start_action) == (10.0, "clear", "trap")
        assert row.fragment_size == 1400
    code, page = await post(client, "/admin/ipsec/tunnels/t1/settings", csrf,
                            rekey_margin="50m")
    assert code == 400
    assert "rekey margin 50m plus 100% fuzz must be shorter than the child lifetime 1h" in page
    with db.session(site.engine, write=False) as s:
        assert q.get_tunnel(s, name="t1").rekey_margin == 540.0  # nothing changed
    code, page = await post(client, "/admin/ipsec/tunnels/t1/actions/restart", csrf)
    assert code == 409 and "is not up" in page and not gateway.actions
    gateway.tunnels = [up_status("t1")]
    code, page = await post(client, "/admin/ipsec/tunnels/t1/actions/rekey-ike", csrf)
    assert code == 200 and "IKE SA rekey started" in page
    assert gateway.actions == [("t1", "rekey-ike")]
    assert {"ipsec.tunnel.settings", "ipsec.tunnel.rekey-ike"} <= set(
        audit_actions(site, actor="root"))


async def test_the_tunnel_page_downloads_the_peers_configuration(
    client: TestClient, site: Site
) -> None:
    seed(site)
    await login(client, ADMIN)
    page = await (await client.get("/admin/ipsec/tunnels/t1")).text()
    assert 'action="/admin/ipsec/tunnels/t1/config"' in page and 'value="swanctl"' in page
    response = await client.get("/admin/ipsec/tunnels/t1/config",
                                params={"format": "strongswan-ipsec"})
    assert response.status == 200
    assert response.headers["Content-Disposition"] == 'attachment; filename="t1.ipsec.conf"'
    text = await response.text()
    assert "conn t1\n" in text and "right=198.18.0.1\n" in text and PSK not in text
    with_psk = await client.get("/admin/ipsec/tunnels/t1/config",
                                params={"format": "swanctl", "include_psk": "1"})
    assert "secret = 0x" + PSK.encode().hex() in await with_psk.text()  # '#' in the PSK
    assert "ipsec.tunnel.psk_shown" in audit_actions(site, actor="root")
    bad = await client.get("/admin/ipsec/tunnels/t1/config", params={"format": "x"})
    assert bad.status == 400
    assert (await client.get("/admin/ipsec/tunnels/nope/config?format=text")).status == 404
