"""An IPsec tunnel survives its node: nodes a and b of a fleet on one PostgreSQL (issue 10).

The fleet topology of tests/interop/fleet.py (prefix ``fi``), plus a customer site on the
internet segment::

    [lana] 10.1.0.10 -- 10.1.0.1 [site: charon] 198.18.0.100 -- internet -- node a 198.18.0.1
                                                                       -- node b 198.18.0.2
    VPC 10.10.0.10 -- 10.10.0.2 node a, 10.10.0.3 node b

The VPN gateway names both nodes; charon lists both as remote addresses. With only node a
running, a takes the tunnel's lease, initiates and runs the gateway's ``--on-activate`` hook,
which points the VPC's route to the customer's LAN at a. Node b, started again, stands by.
SIGKILL a: b takes the lease, runs the hook (the VPC route now via b), initiates, charon
replaces the old SA, and the hosts behind both sides ping again. The time from the kill until
both pings pass is the takeover time.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.conftest import VPC_HOST
from tests.interop.fleet import NODES, VPC_NETWORK, FleetLab, build_fleet
from tests.ipsec.strongswan_lab import (
    CHARON,
    GW_A,
    HOST_A,
    LAN_A,
    PSK,
    SWANCTL,
    Charon,
    CharonConfig,
)
from tests.netns import Namespace, file_contains, wait_until
from tests.pgcluster import PostgresCluster

pytestmark = pytest.mark.interop

SITE = "198.18.0.100"
IKE, ESP = "aes256gcm16-prfsha256-ecp256", "aes256gcm16"
TAKEOVER_LIMIT = 30.0  # seconds from SIGKILL until both sides ping again
# the gateway's hook: the VPC's route to the customer's CIDRs via the node that took it
HOOK = ("ip -n {vpc} route replace $SSLVPN_PEER_CIDRS via "
        "$(case $SSLVPN_NODE in a) echo {a};; b) echo {b};; esac)")


@pytest.fixture
def fleet(postgres: PostgresCluster, tmp_path: Path) -> Iterator[FleetLab]:
    for binary in (CHARON, Path(SWANCTL)):
        if not binary.exists():
            pytest.fail(f"{binary} is missing: run scripts/install-test-deps")
    with build_fleet(tmp_path / "fleet", postgres, prefix="fi") as lab:
        yield lab


def _site(fleet: FleetLab) -> tuple[Namespace, Namespace]:
    """The customer's gateway (charon's namespace) on the internet, and a host behind it."""
    lab = fleet.lab
    site, lana = lab.namespace("site"), lab.namespace("lana")
    lab.attach(site, f"{SITE}/24", fleet.internet, fleet.internet_bridge)
    lab.link(lana, f"{HOST_A}/24", site, f"{GW_A}/24")
    lana.run("ip", "route", "add", "default", "via", GW_A)
    for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0"):
        site.run("sysctl", "-qw", key)
    return site, lana


def _status(fleet: FleetLab, node: str) -> dict[str, object]:
    """`ipsec status --json` as node ``node`` reports it (its own control socket)."""
    data = str(fleet.nodes[node].data_dir)
    out = fleet.cli("--data-dir", data, "ipsec", "status", "--json").output
    [row] = json.loads(out)
    return dict(row)


def _pings(fleet: FleetLab, lana: Namespace) -> bool:
    return (lana.ok("ping", "-c", "1", "-W", "1", VPC_HOST)
            and fleet.vpc.ok("ping", "-c", "1", "-W", "1", HOST_A))


def test_a_standby_node_takes_the_tunnel_when_its_owner_is_killed(
    fleet: FleetLab, tmp_path: Path
) -> None:
    a, b = fleet.nodes["a"], fleet.nodes["b"]
    b.kill()  # a alone first, so a takes the tunnel
    site, lana = _site(fleet)
    hook = HOOK.format(vpc=fleet.vpc.name, a=a.vpc_address, b=b.vpc_address)
    fleet.cli("ipsec", "gateway", "add", "vgw", "--public-address", a.public_address,
              "--node", "a", "--node", "b", "--on-activate", hook)
    fleet.cli("ipsec", "customer-gateway", "add", "dc1", "--address", SITE)
    fleet.cli("ipsec", "tunnel", "add", "t1", "--gateway", "vgw", "--customer-gateway", "dc1",
              "--psk-stdin", "--ike", IKE, "--esp", ESP, "--initiate", stdin=PSK + "\n")
    fleet.cli("ipsec", "policy", "add", "t1", "--local", VPC_NETWORK, "--peer", LAN_A)
    charon = Charon(site, tmp_path / "charon", CharonConfig(
        ike_proposals=IKE, esp_proposals=ESP, local_addr=SITE,
        remote_addrs=",".join(address for address, _, _ in NODES.values()),
        remote_id=a.public_address, remote_ts=VPC_NETWORK, unique="replace"))
    charon.start()

    def up_on(node: str) -> bool:
        row = _status(fleet, node)
        return row["state"] == "up" and row["node"] == node

    assert wait_until(lambda: up_on("a"), 30, 0.2), a.log.read_text()[-3000:] + charon.tail()
    assert wait_until(lambda: _pings(fleet, lana), 15, 0.2), a.log.read_text()[-3000:]
    assert f"via {a.vpc_address}" in fleet.vpc.run("ip", "route", "show", LAN_A)  # a's hook

    b.start()
    assert wait_until(file_contains(b.log, "node b stands by for tunnel t1"), 30), \
        b.log.read_text()[-3000:]
    standby = _status(fleet, "b")
    assert (standby["state"], standby["node"]) == ("elsewhere", "a")

    a.kill()
    killed = time.monotonic()
    assert wait_until(lambda: _pings(fleet, lana), TAKEOVER_LIMIT, 0.1), \
        b.log.read_text()[-3000:] + charon.tail()
    takeover = time.monotonic() - killed
    sys.stderr.write(f"\n[ipsec-failover] {takeover:.2f} s from SIGKILL of node a until the "
                     "hosts behind both sides ping again\n")

    assert wait_until(lambda: up_on("b"), 10, 0.2), b.log.read_text()[-3000:]
    assert f"via {b.vpc_address}" in fleet.vpc.run("ip", "route", "show", LAN_A)  # b's hook
    sas = charon.list_sas()
    assert b.public_address in sas and "ESTABLISHED" in sas, sas
    assert "node b took the lease of tunnel t1" in b.log.read_text()
    charon.stop()
