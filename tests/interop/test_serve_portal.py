"""`sslvpn serve` with its portal and IPsec service, end to end, in network namespaces.

The gateway serves the portal on its "internet" address over HTTPS (a certificate from our
CA). A user made with `sslvpn user add --password-stdin` logs in from the client namespace,
creates a device and downloads its `.ovpn`; the real openvpn 2.6 client connects with exactly
that file and pings the VPC host; the admin (with the one-time password `serve` printed) sees
the session live in the portal and kicks it from there. IPsec tunnels configured in the store
start in `serve`, and their status reaches both `sslvpn ipsec status` (control socket) and the
portal (in-process). Namespaces use the prefix ``sx`` and are removed in finalizers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sslvpn.config import DataPaths
from tests.interop.conftest import (
    GATEWAY_OUTER,
    SSLVPN,
    VPC_HOST,
    Topology,
    add_waiting_tunnel,
    build_topology,
    sslvpn,
)
from tests.netns import file_contains, wait_until

pytestmark = pytest.mark.interop

PORTAL_LISTEN = f"{GATEWAY_OUTER}:8443"
PORTAL_CLIENT = str(Path(__file__).with_name("portal_client.py"))
CONNECTED = "Initialization Sequence Completed"
ALICE_PASSWORD = "alice-portal-pw-0123456789"  # noqa: S105 (a test credential)
PSK = "sx-lab-psk-0123456789abcdef-0123"  # noqa: S105


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    work = tmp_path_factory.mktemp("sx-portal")
    with build_topology(work, prefix="sx", serve_args=("--portal-listen", PORTAL_LISTEN)) as t:
        yield t


def _printed(topo: Topology, pattern: str) -> str:
    """A value `serve` printed on start (bounded wait for it to appear)."""
    def found() -> bool:
        return re.search(pattern, topo.gateway_log.read_text(), re.MULTILINE) is not None

    assert wait_until(found, 20), topo.gateway_log.read_text()
    match = re.search(pattern, topo.gateway_log.read_text(), re.MULTILINE)
    assert match is not None
    return match.group(1)


def _portal(topo: Topology, name: str, password: str, *action: str) -> str:
    """Run the portal client in the client namespace (over the "internet" link, HTTPS)."""
    url = _printed(topo, r"^portal: (\S+)$")
    ca = str(DataPaths(topo.data_dir).ca_cert)
    return topo.client_ns.run(sys.executable, PORTAL_CLIENT, url, ca, name, *action,
                              stdin=password + "\n", timeout=60)


def _admin_password(topo: Topology) -> str:
    return _printed(topo, r"one-time password (\S+)$")


def _session_ids(topo: Topology) -> list[str]:
    rows = json.loads(sslvpn(topo.data_dir, "sessions", "--json").output)["sessions"]
    return [str(row["session_id"]) for row in rows]


def test_serve_prints_the_gateway_and_the_https_portal(topo: Topology) -> None:
    assert _printed(topo, r"^portal: (\S+)$") == f"https://{PORTAL_LISTEN}/"
    assert _printed(topo, r"^gateway: OpenVPN on (.*)$") == \
        f"udp {GATEWAY_OUTER}:1194, tcp {GATEWAY_OUTER}:1194"
    assert len(_admin_password(topo)) >= 12


def test_portal_profile_connects_and_the_admin_kicks_it(topo: Topology) -> None:
    subprocess.run([SSLVPN, "--data-dir", str(topo.data_dir), "user", "add", "alice",
                    "--password-stdin"], input=ALICE_PASSWORD + "\n", text=True, check=True,
                   capture_output=True, timeout=60)
    profile = topo.work / "alice-laptop-portal.ovpn"
    serial = _portal(topo, "alice", ALICE_PASSWORD, "device", "laptop", str(profile)).strip()
    text = profile.read_text()
    assert f"remote {GATEWAY_OUTER} 1194 udp" in text and "<tls-crypt>" in text, text
    log = topo.work / "alice-laptop-portal.log"
    client = topo.client_ns.spawn(["openvpn", "--config", str(profile), "--disable-dco",
                                   "--verb", "3", "--log", str(log)])
    try:
        assert wait_until(file_contains(log, CONNECTED), 30), \
            log.read_text() + topo.gateway_log.read_text()[-3000:]
        assert topo.client_ns.ok("ping", "-c", "3", "-i", "0.2", "-W", "2", VPC_HOST)
        admin = _admin_password(topo)
        page = _portal(topo, "admin", admin, "get", "/admin/sessions")
        [session_id] = re.findall(r"/admin/sessions/([\w-]+)/kick", page)
        assert "alice" in page and "laptop" in page and re.search(r"10\.8\.0\.\d+", page)
        assert _session_ids(topo) == [session_id]
        [live] = topo.control.list_sessions()
        assert live.certificate_serial == serial
        landed = _portal(topo, "admin", admin, "kick", session_id)
        assert "Session of alice (laptop) ended." in landed, landed
        assert wait_until(lambda: session_id not in _session_ids(topo), 10)
    finally:
        topo.lab.stop(client)
    assert wait_until(lambda: _session_ids(topo) == [], 15)


def test_ipsec_tunnels_start_in_serve_and_report_their_status(topo: Topology) -> None:
    data = topo.data_dir
    add_waiting_tunnel(data, PSK)

    def waiting() -> bool:
        rows = json.loads(sslvpn(data, "ipsec", "status", "--json").output)
        return [(r["name"], r["state"], r["last_error"]) for r in rows] == \
            [("t1", "connecting", None)]

    assert wait_until(waiting, 15, 0.2), sslvpn(data, "ipsec", "status").output
    assert ":500 " in topo.gateway_ns.run("ss", "-uln")  # IKE listens on the gateway address
    page = _portal(topo, "admin", _admin_password(topo), "get", "/admin/ipsec/tunnels/t1")
    assert re.search(r'<td class="warn">connecting</td>', page), page
