"""LinuxTun and NetConfig for real, inside a private network namespace (root)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from tests.netns import Namespace, NetnsLab

pytestmark = pytest.mark.interop

SCRIPT = r"""
import asyncio, ipaddress, json, subprocess, sys
from pathlib import Path
from sslvpn.net import ippacket
from sslvpn.runtime.netconf import NetConfig
from sslvpn.runtime.tun import LinuxTun

def sh(*args):
    return subprocess.run(args, capture_output=True, text=True).stdout

async def main():
    forwarding = Path("/proc/sys/net/ipv4/ip_forward")
    forwarding.write_text("0")
    tun = LinuxTun("svtest%d")
    def config():
        return NetConfig(tun_name=tun.name, pool=ipaddress.IPv4Network("10.8.0.0/24"),
                         gateway_address=ipaddress.IPv4Address("10.8.0.1"),
                         vpc_networks=[ipaddress.ip_network("10.10.0.0/24")], snat=True)
    config()._install_snat()  # the table a gateway killed with SIGKILL leaves behind
    conf = config()
    conf.apply()
    got = asyncio.get_running_loop().create_future()
    def on_packet(packet):
        if not got.done() and ippacket.destination(packet) == ippacket.pack_address("10.8.0.2"):
            got.set_result(packet)
    tun.start(on_packet)
    ping = await asyncio.create_subprocess_exec("ping", "-c", "2", "-i", "0.2", "-W", "1",
                                                "10.8.0.2", stdout=subprocess.DEVNULL)
    packet = await asyncio.wait_for(got, 5)
    await ping.wait()
    up = {"name": tun.name, "addr": sh("ip", "-br", "addr", "show", "dev", tun.name),
          "forwarding": forwarding.read_text().strip(), "nft": sh("nft", "list", "ruleset"),
          "src": ippacket.format_address(ippacket.addresses(packet)[0])}
    conf.remove()
    tun.close()
    down = {"links": sh("ip", "-br", "link"), "forwarding": forwarding.read_text().strip(),
            "nft": sh("nft", "list", "ruleset")}
    print(json.dumps({"up": up, "down": down}))

asyncio.run(main())
"""


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    lab = NetnsLab("sv")
    try:
        yield lab.namespace("tun")
    finally:
        lab.close()


def test_tun_addresses_forwarding_and_snat_come_and_go(namespace: Namespace) -> None:
    result = json.loads(namespace.run(sys.executable, "-c", SCRIPT))
    up, down = result["up"], result["down"]
    assert up["name"].startswith("svtest")
    assert "10.8.0.1/24" in up["addr"]
    assert up["forwarding"] == "1"
    assert up["nft"].count("masquerade") == 1 and "10.10.0.0/24" in up["nft"]
    assert up["src"] == "10.8.0.1"  # the kernel routed the ping into our device
    assert up["name"] not in down["links"]
    assert down["forwarding"] == "0"
    assert "sslvpn" not in down["nft"]


LOSE_SCRIPT = r"""
import asyncio, errno, json, subprocess
from sslvpn.net import ippacket
from sslvpn.runtime.tun import LinuxTun

def sh(*args):
    return subprocess.run(args, capture_output=True, text=True).stdout

async def main():
    tun = LinuxTun("svlost%d")
    losses, packets = [], []
    tun.on_lost = losses.append
    tun.start(packets.append)
    subprocess.run(["ip", "link", "delete", tun.name], check=True)
    async with asyncio.timeout(5):
        while not losses:
            await asyncio.sleep(0.01)
    tun.write(bytes(28))  # dropped, and no second loss
    await asyncio.sleep(0)
    tun.reopen()
    sh("ip", "addr", "add", "10.8.0.1/24", "dev", tun.name)
    sh("ip", "link", "set", tun.name, "up")
    ping = await asyncio.create_subprocess_exec("ping", "-c", "1", "-W", "1", "10.8.0.2",
                                                stdout=subprocess.DEVNULL)
    await ping.wait()
    arrived = [p for p in packets
               if ippacket.destination(p) == ippacket.pack_address("10.8.0.2")]
    tun.close()
    print(json.dumps({"losses": [errno.errorcode[e.errno] for e in losses],
                      "drops": tun.drops, "arrived": len(arrived)}))

asyncio.run(main())
"""


def test_a_deleted_device_is_reported_once_and_can_be_opened_again(
    namespace: Namespace,
) -> None:
    result = json.loads(namespace.run(sys.executable, "-c", LOSE_SCRIPT))
    assert result["losses"] == ["EBADFD"]
    assert result["drops"] == 1
    assert result["arrived"] >= 1  # the recreated device is read like the first
