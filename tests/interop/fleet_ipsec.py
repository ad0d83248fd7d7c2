"""A customer site with strongSwan's charon facing a two-node fleet's IPsec tunnel.

On the fleet topology of tests/interop/fleet.py::

    [lana] 10.1.0.10 -- 10.1.0.1 [site: charon] 198.18.0.100 -- internet -- node a 198.18.0.1
                                                                       -- node b 198.18.0.2
    VPC 10.10.0.10 -- 10.10.0.2 node a, 10.10.0.3 node b

The VPN gateway names both nodes; charon lists both as remote addresses. ``standby_pair``
brings the tunnel up on node a (b stopped meanwhile, so a takes the lease) with the gateway's
``--on-activate`` hook pointing the VPC's route to the customer's LAN at a, then starts b,
which stands by. Killing a then measures the takeover; the interop test and the bench both
start from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tests.interop.conftest import VPC_HOST
from tests.interop.fleet import NODES, VPC_NETWORK, FleetLab
from tests.ipsec.strongswan_lab import GW_A, HOST_A, LAN_A, PSK, Charon, CharonConfig
from tests.netns import Namespace, file_contains, wait_until

SITE = "198.18.0.100"
IKE, ESP = "aes256gcm16-prfsha256-ecp256", "aes256gcm16"
# the gateway's hook: the VPC's route to the customer's CIDRs via the node that took it
HOOK = ("ip -n {vpc} route replace $SSLVPN_PEER_CIDRS via "
        "$(case $SSLVPN_NODE in a) echo {a};; b) echo {b};; esac)")


@dataclass
class IpsecSite:
    """The customer's charon and the host behind it, facing the fleet."""

    fleet: FleetLab
    site: Namespace
    lana: Namespace
    charon: Charon

    def pings(self) -> bool:
        """Whether the hosts behind both sides reach each other now."""
        return (self.lana.ok("ping", "-c", "1", "-W", "1", VPC_HOST)
                and self.fleet.vpc.ok("ping", "-c", "1", "-W", "1", HOST_A))

    def up_on(self, node: str) -> bool:
        """Whether ``node`` reports the tunnel up and itself as its holder."""
        row = status(self.fleet, node)
        return row["state"] == "up" and row["node"] == node


def status(fleet: FleetLab, node: str) -> dict[str, object]:
    """`ipsec status --json` as node ``node`` reports it (its own control socket)."""
    data = str(fleet.nodes[node].data_dir)
    out = fleet.cli("--data-dir", data, "ipsec", "status", "--json").output
    [row] = json.loads(out)
    return dict(row)


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


def standby_pair(fleet: FleetLab, work: Path) -> IpsecSite:
    """Tunnel t1 up on node a (its hook ran, the hosts ping), node b standing by for it."""
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
    charon = Charon(site, work / "charon", CharonConfig(
        ike_proposals=IKE, esp_proposals=ESP, local_addr=SITE,
        remote_addrs=",".join(address for address, _, _ in NODES.values()),
        remote_id=a.public_address, remote_ts=VPC_NETWORK, unique="replace"))
    charon.start()
    pair = IpsecSite(fleet, site, lana, charon)
    assert wait_until(lambda: pair.up_on("a"), 30, 0.2), a.log.read_text()[-3000:] + charon.tail()
    assert wait_until(pair.pings, 15, 0.2), a.log.read_text()[-3000:]
    assert f"via {a.vpc_address}" in fleet.vpc.run("ip", "route", "show", LAN_A)  # a's hook
    b.start()
    assert wait_until(file_contains(b.log, "node b stands by for tunnel t1"), 30), \
        b.log.read_text()[-3000:]
    standby = status(fleet, "b")
    assert (standby["state"], standby["node"]) == ("elsewhere", "a")
    return pair
