"""SNAT toward a VPC that has no route back to the client pool (settings.snat)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.conftest import VPC_HOST, Topology, build_topology
from tests.interop.test_openvpn_client import CONNECTED, OpenVpnClient

pytestmark = pytest.mark.interop


@pytest.fixture
def snat_topology(tmp_path: Path) -> Iterator[Topology]:
    with build_topology(tmp_path, snat=True) as topo:
        yield topo


def test_masquerade_reaches_a_vpc_without_return_route(snat_topology: Topology) -> None:
    topo = snat_topology
    topo.issue("alice", "laptop")
    client = OpenVpnClient(topo, topo.profile("alice", "laptop", "udp"))
    client.wait_for(CONNECTED)
    # the VPC host has no route to 10.8.0.0/24 (nor a default route): a reply can only
    # come back if the gateway rewrote the source to its own VPC address
    routes = topo.vpc_ns.run("ip", "-4", "route").splitlines()
    assert len(routes) == 1 and routes[0].startswith("10.10.0.0/24 ")
    assert topo.client_ns.ok("ping", "-c", "2", "-i", "0.2", "-W", "2", VPC_HOST)
    assert "masquerade" in topo.gateway_ns.run("nft", "list", "table", "ip", "sslvpn")
    client.stop()
