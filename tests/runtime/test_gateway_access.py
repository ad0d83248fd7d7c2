"""Access rules on the gateway's data path (MemoryTun, scripted cores): both of the client
sink's paths, the symmetric replies, pushed routes, counters and live reloads."""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import replace

import pytest

from sslvpn.net.access import ICMP, TCP, AccessPolicy, Rule
from sslvpn.runtime.metrics import gateway_source
from tests.net.test_access import packet
from tests.runtime.fakes import FakeCore
from tests.runtime.test_gateway import FastCore, Harness

CLIENT = ipaddress.ip_address("10.8.0.2")
DB = ipaddress.ip_address("10.10.0.10")
OTHER = ipaddress.ip_address("10.10.0.11")


def db_policy(revision: int = 1) -> AccessPolicy:
    """Group db reaches DB:5432/tcp and pings DB; everything else falls to "nothing"."""
    host = ipaddress.ip_network(f"{DB}/32")
    return AccessPolicy(default="nothing", revision=revision, members={"ann": ["db"]},
                        group_rules={"db": [Rule(1, host, "tcp", (5432, 5432), owner="group db"),
                                            Rule(2, host, "icmp", owner="group db")]})


@pytest.mark.parametrize("core_type", [FakeCore, FastCore], ids=["slow-path", "fast-path"])
async def test_rules_decide_each_packet_and_replies_mirror_them(core_type: type[FakeCore],
                                                                ) -> None:
    harness = Harness()
    harness.policy.access = db_policy()
    await harness.gateway.start()
    harness.policy.add("a1", "ann")
    client, core = await harness.connect("a1", core_type())
    assert core.accepted is not None and [str(n) for n in core.accepted.routes] == [
        "10.10.0.10/32"]  # pushed routes follow the rules
    assert client.driver is not None
    allowed = [packet(CLIENT, DB, TCP, dport=5432), packet(CLIENT, DB, ICMP)]
    denied = [packet(CLIENT, DB, TCP, dport=22), packet(CLIENT, OTHER, TCP, dport=5432),
              packet(CLIENT, OTHER, ICMP)]
    for data in (allowed + denied) * 2:  # the second time from the flow cache (fast path)
        client.driver.feed(data)
    assert harness.tun.written == allowed * 2
    assert harness.gateway.drops["access-denied"] == 6
    hits = {rule: (allow, count) for rule, allow, count in harness.gateway.access_hits()}
    assert hits == {"1": (True, 2), "2": (True, 2), "default": (False, 6)}
    [family] = [f for f in gateway_source(harness.gateway.counters, "n1")()
                if f.name == "sslvpn_access_rule_packets"]
    assert {(s.labels["rule"], s.labels["action"]): s.value for s in family.samples} == {
        ("1", "allow"): 2, ("2", "allow"): 2, ("default", "deny"): 6}
    wire = harness.sent[client.session_id]
    before = len(wire)
    for _ in range(2):  # the second time from the reply cache
        harness.tun.inject(packet(DB, CLIENT, TCP, sport=5432, dport=40000))  # a reply: passes
        harness.tun.inject(packet(DB, CLIENT, TCP, sport=22, dport=40000))  # not a mirror: no
        harness.tun.inject(packet(OTHER, CLIENT, ICMP, icmp_type=3))  # an ICMP error: passes
    assert len(wire) == before + 4
    assert harness.gateway.drops["access-denied"] == 8
    hits = {rule: (allow, count) for rule, allow, count in harness.gateway.access_hits()}
    assert hits == {"1": (True, 4), "2": (True, 2), "default": (False, 8)}


@pytest.mark.parametrize("core_type", [FakeCore, FastCore], ids=["slow-path", "fast-path"])
async def test_a_cached_flow_still_stays_inside_the_vpc(core_type: type[FakeCore]) -> None:
    """Under rules with the default all-vpc, the flow cache never lets a packet past the VPC
    check: only flows found inside the VPC are cached for the one-probe path."""
    harness = Harness()
    harness.policy.access = replace(db_policy(), default="all-vpc")
    await harness.gateway.start()
    harness.policy.add("a1", "ann")
    client, _ = await harness.connect("a1", core_type())
    assert client.access is not None and client.driver is not None
    outside = packet(CLIENT, ipaddress.ip_address("192.0.2.1"), TCP, dport=443)
    inside = packet(CLIENT, OTHER, TCP, dport=443)  # the default allows it
    for data in (outside, inside) * 3:
        client.driver.feed(data)
    assert harness.tun.written == [inside] * 3
    assert harness.gateway.drops["outside-vpc"] == 3


async def test_unrestricted_users_keep_the_old_path() -> None:
    harness = Harness()
    harness.policy.access = db_policy()
    await harness.gateway.start()
    harness.policy.add("b1", "bob")  # in no group: the default (nothing) decides
    client, core = await harness.connect("b1")
    assert core.accepted is not None and core.accepted.routes == ()
    assert client.access is not None
    harness.policy.access = replace(db_policy(2), default="all-vpc")
    harness.gateway.set_access(harness.policy.access)
    assert client.access is None  # no rules, default all-vpc: nothing to check
    assert client.driver is not None
    client.driver.feed(packet(CLIENT, OTHER, TCP, dport=22))
    assert len(harness.tun.written) == 1


async def test_a_change_reaches_a_live_session_without_reconnecting() -> None:
    harness = Harness()
    harness.policy.access = db_policy()
    await harness.gateway.start()
    harness.policy.add("a1", "ann")
    client, _ = await harness.connect("a1")
    assert client.driver is not None
    refresh = asyncio.create_task(harness.gateway.run_access_refresh(interval=0.01))
    ssh = packet(CLIENT, DB, TCP, dport=22)
    try:
        client.driver.feed(ssh)
        assert harness.tun.written == []
        policy = db_policy(2)
        policy.group_rules["db"].append(  # type: ignore[attr-defined]
            Rule(3, ipaddress.ip_network("10.10.0.0/24"), "tcp", (22, 22), owner="group db"))
        harness.policy.access = policy
        async with asyncio.timeout(5):
            while client.access is None or client.access.rules[-1].id != 3:
                await asyncio.sleep(0.01)
        client.driver.feed(ssh)
        assert harness.tun.written == [ssh]
        harness.policy.access = replace(db_policy(3), members={})  # ann leaves db
        async with asyncio.timeout(5):
            while harness.gateway.access.revision != 3:
                await asyncio.sleep(0.01)
        client.driver.feed(packet(CLIENT, DB, TCP, dport=5432))
        assert harness.tun.written == [ssh]
        assert harness.gateway.access_hits()[0] == ("default", False, 2)  # counters kept
    finally:
        refresh.cancel()
