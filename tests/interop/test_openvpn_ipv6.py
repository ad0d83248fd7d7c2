"""The real openvpn 2.6 client gets an IPv6 address from `sslvpn init --pool6` and reaches an
IPv6 VPC host through the tunnel, in network namespaces (prefix "sr").

    sr-cli 198.18.0.2 ---- 198.18.0.1 sr-gw 10.10.0.1, fd00:10:10::1 ---- sr-vpc
                                     (serve, tun 10.8.0.1/24,    10.10.0.10, fd00:10:10::10
                                      fd00:8::1/64)

The VPC host routes the IPv6 pool back through the gateway (no NAT), so it can also reach
the client's own address. Everything is removed in the finalizer, even when a test fails.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.interop.conftest import GATEWAY_OUTER, SSLVPN, sslvpn
from tests.netns import Namespace, NetnsLab, file_contains, wait_until

pytestmark = pytest.mark.interop

POOL = ipaddress.IPv4Network("10.8.0.0/24")
POOL6 = ipaddress.IPv6Network("fd00:8::/64")
VPC6 = ipaddress.IPv6Network("fd00:10:10::/64")
VPC_HOST = "10.10.0.10"
VPC_HOST6 = "fd00:10:10::10"
CONNECTED = "Initialization Sequence Completed"


@dataclass
class Lab6:
    lab: NetnsLab
    client_ns: Namespace
    vpc_ns: Namespace
    data_dir: Path
    work: Path
    gateway_log: Path


def _v6(ns: Namespace, address: str, ifname: str) -> None:
    """A static IPv6 address, usable at once (no duplicate address detection wait)."""
    ns.run("ip", "-6", "addr", "add", address, "dev", ifname, "nodad")


@pytest.fixture
def lab6(tmp_path: Path) -> Iterator[Lab6]:
    for binary in ("openvpn", "ip", "ping"):
        if shutil.which(binary) is None:
            pytest.fail(f"{binary} is not installed (run scripts/install-test-deps)")
    lab = NetnsLab("sr")
    try:
        cli, gw, vpc = (lab.namespace(role) for role in ("cli", "gw", "vpc"))
        lab.link(cli, "198.18.0.2/24", gw, f"{GATEWAY_OUTER}/24")
        gw_side, vpc_side = lab.link(gw, "10.10.0.1/24", vpc, f"{VPC_HOST}/24")
        _v6(gw, "fd00:10:10::1/64", gw_side)
        _v6(vpc, f"{VPC_HOST6}/64", vpc_side)
        vpc.run("ip", "route", "add", str(POOL), "via", "10.10.0.1")
        vpc.run("ip", "-6", "route", "add", str(POOL6), "via", "fd00:10:10::1")
        data_dir = tmp_path / "data"
        sslvpn(data_dir, "init", "--public-address", GATEWAY_OUTER, "--proto", "udp",
               "--pool", str(POOL), "--pool6", str(POOL6),
               "--vpc", "10.10.0.0/24", "--vpc", str(VPC6))
        log = tmp_path / "gateway.log"
        gw.spawn([SSLVPN, "--data-dir", str(data_dir), "serve", "--listen", GATEWAY_OUTER,
                  "--no-portal", "--workers", "1"], log=log)
        if not wait_until(file_contains(log, "listening on udp"), 20):
            pytest.fail("gateway did not start:\n" + log.read_text(errors="replace"))
        yield Lab6(lab, cli, vpc, data_dir, tmp_path, log)
    finally:
        lab.close()


def _connect(lab: Lab6) -> Path:
    """Issue a certificate, start the client with its profile, wait until it is up."""
    sslvpn(lab.data_dir, "user", "add", "alice")
    sslvpn(lab.data_dir, "cert", "issue", "alice", "--device", "v6")
    profile = lab.work / "alice-v6.ovpn"
    sslvpn(lab.data_dir, "profile", "alice", "--device", "v6", "--proto", "udp",
           "-o", str(profile))
    client_log = lab.work / "client.log"
    lab.client_ns.spawn(["openvpn", "--config", str(profile), "--disable-dco", "--verb", "3",
                         "--log", str(client_log)])
    if not wait_until(file_contains(client_log, CONNECTED), 20):
        pytest.fail(f"client did not connect:\n{client_log.read_text(errors='replace')[-3000:]}"
                    f"\n--- gateway log ---\n{lab.gateway_log.read_text(errors='replace')}")
    return client_log


def test_client_gets_an_ipv6_address_and_pings_the_ipv6_vpc(lab6: Lab6) -> None:
    _connect(lab6)
    [session] = json.loads(sslvpn(lab6.data_dir, "sessions", "--json").output)["sessions"]
    host_number = int(ipaddress.IPv4Address(session["vpn_address"])) - int(POOL.network_address)
    address6 = POOL6.network_address + host_number
    assert f"inet6 {address6}/{POOL6.prefixlen}" in lab6.client_ns.run(
        "ip", "-6", "addr", "show", "dev", "tun0")
    assert "dev tun0" in lab6.client_ns.run("ip", "-6", "route", "show", str(VPC6))
    assert lab6.client_ns.ok("ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", VPC_HOST6)
    assert lab6.client_ns.ok("ping", "-c", "1", "-W", "2", VPC_HOST)
    # no NAT: the VPC host reaches the client by the address the pool gave it
    assert lab6.vpc_ns.ok("ping", "-6", "-c", "1", "-W", "2", str(address6))
