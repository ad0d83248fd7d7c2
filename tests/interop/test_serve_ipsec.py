"""`sslvpn serve` brings configured IPsec tunnels up with a real strongSwan peer.

The strongSwan lab's layout, in namespaces with the prefix ``sx``::

    [lana] 10.1.0.10 -- [sitea: charon] 198.18.0.1 == 198.18.0.2 [siteb: sslvpn serve] -- [lanb]

The tunnel is made with the CLI and set to initiate; `serve` must start it, carry pings both
ways, report it "up" through `sslvpn ipsec status` (control socket) and the portal
(in-process), and on SIGTERM delete the SA at the peer and leave no TUN behind.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from sslvpn.cli import main
from sslvpn.config import DataPaths
from tests.interop.conftest import SSLVPN
from tests.ipsec.strongswan_lab import (
    CHARON,
    GW_A,
    GW_B,
    HOST_A,
    HOST_B,
    LAN_A,
    LAN_B,
    PSK,
    SWANCTL,
    WAN_A,
    WAN_B,
    Charon,
    CharonConfig,
)
from tests.netns import Namespace, NetnsLab, file_contains, wait_until

pytestmark = pytest.mark.interop

PORTAL_CLIENT = str(Path(__file__).with_name("portal_client.py"))
IKE, ESP = "aes256gcm16-prfsha256-ecp256", "aes256gcm16"


@dataclass
class Sites:
    lab: NetnsLab
    lana: Namespace
    sitea: Namespace
    siteb: Namespace
    lanb: Namespace


@contextlib.contextmanager
def site_lab(prefix: str) -> Iterator[Sites]:
    """The four namespaces (names starting with ``prefix``), linked and routed."""
    for binary in (CHARON, Path(SWANCTL)):
        if not binary.exists():
            pytest.fail(f"{binary} is missing: run scripts/install-test-deps")
    lab = NetnsLab(prefix)
    try:
        lana, sitea, siteb, lanb = (lab.namespace(r) for r in ("lana", "sitea", "siteb", "lanb"))
        lab.link(sitea, f"{WAN_A}/24", siteb, f"{WAN_B}/24")
        lab.link(lana, f"{HOST_A}/24", sitea, f"{GW_A}/24")
        lab.link(siteb, f"{GW_B}/24", lanb, f"{HOST_B}/24")
        lana.run("ip", "route", "add", "default", "via", GW_A)
        lanb.run("ip", "route", "add", "default", "via", GW_B)
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0"):
            sitea.run("sysctl", "-qw", key)
        yield Sites(lab, lana, sitea, siteb, lanb)
    finally:
        lab.close()


@pytest.fixture
def sites() -> Iterator[Sites]:
    with site_lab("sx") as found:
        yield found


def configure_tunnel(data: Path, *timers: str) -> None:
    """A data folder whose tunnel t1 (with ``timers``, tunnel add options) initiates to
    charon in sitea."""
    _cli(data, "init", "--public-address", WAN_B, "--proto", "udp", "--vpc", LAN_B)
    _cli(data, "ipsec", "gateway", "add", "vgw", "--public-address", WAN_B)
    _cli(data, "ipsec", "customer-gateway", "add", "dc1", "--address", WAN_A)
    _cli(data, "ipsec", "tunnel", "add", "t1", "--gateway", "vgw", "--customer-gateway", "dc1",
         "--psk-stdin", "--ike", IKE, "--esp", ESP, "--initiate", *timers, stdin=PSK + "\n")
    _cli(data, "ipsec", "policy", "add", "t1", "--local", LAN_B, "--peer", LAN_A)


def _cli(data: Path, *args: str, stdin: str | None = None) -> str:
    """The real CLI, run in-process (click's runner): the same commands without a Python
    start-up per call, which under load cost seconds each and lengthened every poll."""
    result = CliRunner().invoke(main, ["--data-dir", str(data), *args], input=stdin)
    assert result.exit_code == 0, f"sslvpn {' '.join(args)}: {result.output}"
    return result.stdout


def _state(data: Path) -> tuple[str, int]:
    [row] = json.loads(_cli(data, "ipsec", "status", "--json"))
    return str(row["state"]), int(row.get("packets_in", 0))


def test_serve_starts_the_tunnel_reports_it_and_deletes_it_on_stop(
    sites: Sites, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    configure_tunnel(data)
    charon = Charon(sites.sitea, tmp_path / "charon", CharonConfig(ike_proposals=IKE,
                                                                   esp_proposals=ESP))
    charon.start()
    log = tmp_path / "serve.log"
    serve = sites.siteb.spawn([SSLVPN, "--data-dir", str(data), "serve", "--listen", WAN_B,
                               "--portal-listen", "127.0.0.1:0"], log=log)

    assert wait_until(lambda: serve.poll() is not None or _state(data)[0] == "up", 30, 0.2), \
        log.read_text()[-3000:] + charon.tail()
    for src, dst in ((sites.lanb, HOST_A), (sites.lana, HOST_B)):
        assert wait_until(lambda s=src, d=dst: s.ok("ping", "-c", "1", "-W", "1", d), 15, 0.2)
    assert _state(data)[1] >= 1 and charon.established()

    assert wait_until(file_contains(log, "one-time password "), 20), log.read_text()
    text = log.read_text()
    url = re.search(r"^portal: (\S+)$", text, re.MULTILINE)
    password = re.search(r"one-time password (\S+)$", text, re.MULTILINE)
    assert url and password
    page = sites.siteb.run(sys.executable, PORTAL_CLIENT, url.group(1),
                           str(DataPaths(data).ca_cert), "admin", "get", "/admin/ipsec/tunnels/t1",
                           stdin=password.group(1) + "\n", timeout=60)
    assert '<td class="ok">up</td>' in page, page

    assert sites.lab.stop(serve, timeout=20) == 0, log.read_text()[-3000:]
    assert wait_until(lambda: "ESTABLISHED" not in charon.list_sas(), 10, 0.2), charon.tail()
    assert "sslipsec" not in sites.siteb.run("ip", "-o", "link", "show")
    assert "sslvpn" not in sites.siteb.run("ip", "-o", "link", "show")
