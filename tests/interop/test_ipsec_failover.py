"""An IPsec tunnel survives its node: two `sslvpn serve --node` hosts on one PostgreSQL.

Namespaces (prefix ``fi``)::

    [lana] 10.1.0.10 -- [sitea: charon] 198.18.0.1 (bridge) == 198.18.0.2 [nodea: serve A]
                                                           == 198.18.0.3 [nodeb: serve B]
    [nodea] 10.2.0.2 == (bridge) 10.2.0.10 [vpc] == 10.2.0.3 [nodeb]

charon lists both nodes as remote addresses. Node A takes the tunnel's lease, initiates and
runs its ``--on-activate`` hook, which points the VPC's route to the customer's LAN at A.
Node B stands by. SIGKILL A: B takes the lease, runs its hook (the VPC route now via B),
initiates, charon replaces the old SA, and the hosts behind both sides ping again. The time
from the kill until both pings pass is the takeover time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.interop.conftest import SSLVPN
from tests.ipsec.strongswan_lab import (
    CHARON,
    GW_A,
    HOST_A,
    LAN_A,
    LAN_B,
    PSK,
    SWANCTL,
    WAN_A,
    Charon,
    CharonConfig,
)
from tests.netns import Namespace, NetnsLab, file_contains, wait_until
from tests.pgcluster import postgres_cluster

pytestmark = pytest.mark.interop

NODE_A, NODE_B = "198.18.0.2", "198.18.0.3"  # A's address is also the gateway's IKE identity
VPC_A, VPC_B, VPC_HOST = "10.2.0.2", "10.2.0.3", "10.2.0.10"
IKE, ESP = "aes256gcm16-prfsha256-ecp256", "aes256gcm16"
TAKEOVER_LIMIT = 30.0  # seconds from SIGKILL until both sides ping again


@dataclass
class Fleet:
    lab: NetnsLab
    lana: Namespace
    sitea: Namespace
    nodea: Namespace
    nodeb: Namespace
    vpc: Namespace


def _bridge(ns: Namespace, address: str) -> None:
    ns.run("ip", "link", "add", "br0", "type", "bridge")
    ns.run("ip", "addr", "add", address, "dev", "br0")
    ns.run("ip", "link", "set", "br0", "up")


def _port(lab: NetnsLab, hub: Namespace, member: Namespace, address: str, n: int) -> None:
    """A veth from ``member`` (with ``address``) into ``hub``'s bridge."""
    inner, outer = f"fi{n}m{lab.tag}", f"fi{n}h{lab.tag}"
    subprocess.run(["ip", "link", "add", inner, "netns", member.name, "type", "veth",
                    "peer", "name", outer, "netns", hub.name], check=True, capture_output=True)
    member.run("ip", "addr", "add", address, "dev", inner)
    member.run("ip", "link", "set", inner, "up")
    hub.run("ip", "link", "set", outer, "master", "br0")
    hub.run("ip", "link", "set", outer, "up")


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    for binary in (CHARON, Path(SWANCTL)):
        if not binary.exists():
            pytest.fail(f"{binary} is missing: run scripts/install-test-deps")
    lab = NetnsLab("fi")
    try:
        lana, sitea, nodea, nodeb, vpc = (lab.namespace(r) for r in
                                          ("lana", "sitea", "nodea", "nodeb", "vpc"))
        lab.link(lana, f"{HOST_A}/24", sitea, f"{GW_A}/24")
        lana.run("ip", "route", "add", "default", "via", GW_A)
        _bridge(sitea, f"{WAN_A}/24")
        _bridge(vpc, f"{VPC_HOST}/24")
        for n, (node, wan, inside) in enumerate(((nodea, NODE_A, VPC_A),
                                                 (nodeb, NODE_B, VPC_B))):
            _port(lab, sitea, node, f"{wan}/24", n * 2)
            _port(lab, vpc, node, f"{inside}/24", n * 2 + 1)
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0"):
            sitea.run("sysctl", "-qw", key)
        yield Fleet(lab, lana, sitea, nodea, nodeb, vpc)
    finally:
        lab.close()


def _cli(data: Path, url: str, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run([SSLVPN, "--data-dir", str(data), "--database-url", url, *args],
                            input=stdin, text=True, capture_output=True, timeout=120,
                            check=False)
    assert result.returncode == 0, f"sslvpn {' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout


def _tunnel(data: Path, url: str) -> dict[str, object]:
    [row] = json.loads(_cli(data, url, "ipsec", "status", "--json"))
    return dict(row)


def _serve(fleet: Fleet, ns: Namespace, data: Path, url: str, node: str, address: str,
           vpc_side: str, log: Path) -> subprocess.Popen[bytes]:
    hook = f"ip -n {fleet.vpc.name} route replace $SSLVPN_PEER_CIDRS via {vpc_side}"
    return ns.spawn([SSLVPN, "--data-dir", str(data), "--database-url", url, "serve",
                     "--node", node, "--listen", address, "--no-portal",
                     "--on-activate", hook], log=log)


def _pings(fleet: Fleet) -> bool:
    return (fleet.lana.ok("ping", "-c", "1", "-W", "1", VPC_HOST)
            and fleet.vpc.ok("ping", "-c", "1", "-W", "1", HOST_A))


def test_a_standby_node_takes_the_tunnel_when_its_owner_is_killed(
    fleet: Fleet, tmp_path: Path
) -> None:
    with postgres_cluster() as cluster:
        url = cluster.socket_url  # a unix socket reaches it from every namespace
        data_a, data_b = tmp_path / "node-a", tmp_path / "node-b"
        _cli(data_a, url, "init", "--public-address", NODE_A, "--proto", "udp", "--vpc", LAN_B)
        _cli(data_a, url, "node", "add", "A", "--public-address", NODE_A)
        _cli(data_a, url, "node", "add", "B", "--public-address", NODE_B)
        _cli(data_a, url, "ipsec", "gateway", "add", "vgw", "--public-address", NODE_A,
             "--node", "A", "--node", "B")
        _cli(data_a, url, "ipsec", "customer-gateway", "add", "dc1", "--address", WAN_A)
        _cli(data_a, url, "ipsec", "tunnel", "add", "t1", "--gateway", "vgw",
             "--customer-gateway", "dc1", "--psk-stdin", "--ike", IKE, "--esp", ESP,
             "--initiate", stdin=PSK + "\n")
        _cli(data_a, url, "ipsec", "policy", "add", "t1", "--local", LAN_B, "--peer", LAN_A)
        shutil.copytree(data_a, data_b)  # the fleet's PKI: the same on every node
        charon = Charon(fleet.sitea, tmp_path / "charon", CharonConfig(
            ike_proposals=IKE, esp_proposals=ESP, remote_addrs=f"{NODE_A},{NODE_B}",
            unique="replace"))
        charon.start()
        log_a, log_b = tmp_path / "serve-a.log", tmp_path / "serve-b.log"
        serve_a = _serve(fleet, fleet.nodea, data_a, url, "A", NODE_A, VPC_A, log_a)

        def up_on(node: str, data: Path) -> bool:
            row = _tunnel(data, url)
            return row["state"] == "up" and row["node"] == node

        assert wait_until(lambda: serve_a.poll() is not None or up_on("A", data_a), 30, 0.2), \
            log_a.read_text()[-3000:] + charon.tail()
        assert wait_until(lambda: _pings(fleet), 15, 0.2), log_a.read_text()[-3000:]
        assert f"via {VPC_A}" in fleet.vpc.run("ip", "route", "show", LAN_A)  # A's hook

        serve_b = _serve(fleet, fleet.nodeb, data_b, url, "B", NODE_B, VPC_B, log_b)
        assert wait_until(file_contains(log_b, "node B stands by for tunnel t1"), 30), \
            log_b.read_text()[-3000:]
        standby = _tunnel(data_b, url)
        assert (standby["state"], standby["node"]) == ("elsewhere", "A")

        os.killpg(serve_a.pid, signal.SIGKILL)
        killed = time.monotonic()
        assert wait_until(lambda: _pings(fleet), TAKEOVER_LIMIT, 0.1), \
            log_b.read_text()[-3000:] + charon.tail()
        takeover = time.monotonic() - killed
        print(f"IPsec takeover: {takeover:.2f} s from SIGKILL of node A until both sides "  # noqa: T201
              "ping again")

        assert wait_until(lambda: up_on("B", data_b), 10, 0.2), log_b.read_text()[-3000:]
        assert f"via {VPC_B}" in fleet.vpc.run("ip", "route", "show", LAN_A)  # B's hook
        sas = charon.list_sas()
        assert NODE_B in sas and "ESTABLISHED" in sas, sas
        assert "took the lease of tunnel t1" in log_b.read_text()
        assert fleet.lab.stop(serve_b, timeout=20) == 0, log_b.read_text()[-3000:]
        charon.stop()
