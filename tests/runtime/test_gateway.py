"""The gateway on MemoryTun with a scripted session core: routing, policy, registry."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress

import pytest
import pytest_asyncio

from sslvpn.runtime.gateway import ClientSession, Gateway, GatewayOptions
from sslvpn.runtime.tun import MemoryTun
from tests.runtime.fakes import VERIFY, FakeCore, MemoryPolicy, ipv4, ipv6

VPC_HOST = "10.10.0.10"


class Harness:
    def __init__(
        self, *, client_to_client: bool = False, ipv6: bool = False, sweep_interval: float = 2.0,
        policy: MemoryPolicy | None = None, pool: str = "10.8.0.0/24",
        accounting_interval: float = 60.0,
    ) -> None:
        self.tun = MemoryTun()
        self.policy = policy or MemoryPolicy()
        vpc = ("10.10.0.0/24", "fd10::/64") if ipv6 else ("10.10.0.0/24",)
        self.gateway = Gateway(
            self.tun,
            GatewayOptions(
                pool=ipaddress.IPv4Network(pool),
                vpc_networks=tuple(ipaddress.ip_network(n) for n in vpc),
                client_to_client=client_to_client,
                pool6=ipaddress.IPv6Network("fd08::/64") if ipv6 else None,
                sweep_interval=sweep_interval,
                accounting_interval=accounting_interval,
            ),
            self.policy,
        )
        self.gateway.start()
        self.sent: dict[str, list[bytes]] = {}
        self.gone: list[str] = []

    def connect(self, serial: str, core: FakeCore | None = None) -> tuple[ClientSession, FakeCore]:
        core = core or FakeCore()
        wire: list[bytes] = []
        client = self.gateway.new_session(
            core,
            transmit=wire.append,
            protocol="udp",
            real_address=f"198.18.0.2:{1000 + len(self.sent)}",
            on_closed=lambda: self.gone.append(client.session_id),
        )
        self.sent[client.session_id] = wire
        assert client.driver is not None
        client.driver.feed(VERIFY + serial.encode())
        return client, core


class FastCore(FakeCore):
    """A FakeCore with the driver's fast path: IP packets come straight back from open_data."""

    def open_data(self, data: bytes, now: float) -> bytes | None:
        if data.startswith(VERIFY):
            self.receive_datagram(data, now)
            return None
        return data


@pytest_asyncio.fixture
async def harness() -> Harness:
    return Harness()


async def test_accepted_client_gets_address_routes_and_is_listed(harness: Harness) -> None:
    harness.policy.add("a1", "alice")
    client, core = harness.connect("a1")
    assert core.accepted is not None
    assert str(core.accepted.ifconfig) == "10.8.0.2/24"
    assert str(core.accepted.route_gateway) == "10.8.0.1"
    assert [str(n) for n in core.accepted.routes] == ["10.10.0.0/24"]
    assert harness.sent[client.session_id] == [b"PUSH_REPLY"]
    [info] = harness.gateway.list_sessions()
    assert (info.user, info.certificate_serial, info.vpn_address) == ("alice", "a1", "10.8.0.2")
    assert harness.policy.opened == []  # written behind, in batches
    await harness.gateway.records.flush()
    [opened] = harness.policy.opened
    assert (opened.session_id, opened.vpn_address) == (client.session_id, "10.8.0.2")
    assert harness.policy.leases == {"a1": "10.8.0.2"}


async def test_packets_flow_both_ways(harness: Harness) -> None:
    harness.policy.add("a1", "alice")
    client, _ = harness.connect("a1")
    assert client.driver is not None
    outbound = ipv4("10.8.0.2", VPC_HOST)
    client.driver.feed(outbound)
    assert harness.tun.written == [outbound]
    inbound = ipv4(VPC_HOST, "10.8.0.2", b"pong")
    harness.tun.inject(inbound)
    assert harness.sent[client.session_id][-1] == b"D" + inbound
    [info] = harness.gateway.list_sessions()
    assert (info.bytes_in, info.bytes_out) == (len(outbound), len(inbound))
    traffic = harness.gateway.traffic()
    assert (traffic.bytes_in, traffic.bytes_out) == (len(outbound), len(inbound))


async def test_fast_path_keeps_every_check(harness: Harness) -> None:
    """The per-session sink the driver feeds opened packets to drops what the full path does."""
    harness.policy.add("a1", "alice")
    client, _ = harness.connect("a1", FastCore())
    assert client.driver is not None
    good = ipv4("10.8.0.2", VPC_HOST)
    plain = ipv4("10.8.0.2", "10.10.0.11")
    with_options = bytes([0x46]) + plain[1:20] + bytes([1, 1, 1, 0]) + plain[20:]
    for packet in (good, ipv4("10.8.0.99", VPC_HOST), ipv4("10.8.0.2", "8.8.8.8"),
                   ipv4("10.8.0.2", "8.8.8.8"), ipv4("10.8.0.2", "10.8.0.1"), b"\x00garbage",
                   good[:19], with_options, good):
        client.driver.feed(packet)
    assert harness.tun.written == [good, with_options, good]
    assert harness.gateway.drops == {"spoofed-source": 1, "outside-vpc": 3, "not-ip": 2}
    [info] = harness.gateway.list_sessions()
    assert info.bytes_in == 2 * len(good) + len(with_options)


async def test_spoofed_source_and_non_vpc_destination_are_dropped(harness: Harness) -> None:
    harness.policy.add("a1", "alice")
    client, _ = harness.connect("a1")
    assert client.driver is not None
    client.driver.feed(ipv4("10.8.0.99", VPC_HOST))
    client.driver.feed(ipv4("10.8.0.2", "8.8.8.8"))
    client.driver.feed(ipv4("10.8.0.2", "10.8.0.1"))
    client.driver.feed(b"\x00garbage")
    assert harness.tun.written == []
    assert harness.gateway.drops == {"spoofed-source": 1, "outside-vpc": 2, "not-ip": 1}
    harness.tun.inject(ipv4(VPC_HOST, "10.8.0.77"))
    assert harness.gateway.drops["tun-no-session"] == 1


async def test_refused_certificates_get_the_reason(harness: Harness) -> None:
    harness.policy.add("b2", "bob", status="revoked")
    harness.policy.add("c3", "carol")
    harness.policy.disabled.add("carol")
    for serial, reason in (("b2", "certificate revoked"), ("c3", "user disabled"),
                           ("ff", "certificate unknown")):
        client, core = harness.connect(serial)
        assert core.rejected == reason
        assert harness.sent[client.session_id] == [b"AUTH_FAILED," + reason.encode()]
    assert harness.gateway.list_sessions() == []
    assert len(harness.gone) == 3
    await harness.gateway.records.flush()
    assert harness.policy.leases == {}
    assert harness.policy.opened == []


async def test_lease_is_kept_across_reconnects(harness: Harness) -> None:
    harness.policy.add("a1", "alice")
    harness.policy.add("b2", "bob")
    first, _ = harness.connect("a1")
    assert harness.gateway.kick(first.session_id)
    _, bob = harness.connect("b2")
    assert bob.accepted is not None
    assert str(bob.accepted.ifconfig.ip) == "10.8.0.3"  # alice's lease is avoided
    _, again = harness.connect("a1")
    assert again.accepted is not None
    assert str(again.accepted.ifconfig.ip) == "10.8.0.2"


async def test_same_certificate_replaces_the_old_session(harness: Harness) -> None:
    harness.policy.add("a1", "alice")
    old, old_core = harness.connect("a1")
    new, new_core = harness.connect("a1")
    assert old_core.closed and old.session_id in harness.gone
    assert new_core.accepted is not None and str(new_core.accepted.ifconfig.ip) == "10.8.0.2"
    assert [s.session_id for s in harness.gateway.list_sessions()] == [new.session_id]
    harness.tun.inject(ipv4(VPC_HOST, "10.8.0.2"))
    assert harness.sent[new.session_id][-1].startswith(b"D")


async def test_kick_and_revocation_sweep(harness: Harness) -> None:
    harness.policy.add("a1", "alice")
    harness.policy.add("b2", "bob")
    alice, alice_core = harness.connect("a1")
    bob, bob_core = harness.connect("b2")
    assert await harness.gateway.sweep() == 0
    harness.policy.add("a1", "alice", status="revoked")
    assert await harness.gateway.sweep() == 1
    assert alice_core.closed and harness.sent[alice.session_id][-1] == b"EXIT"
    assert harness.gateway.kick_user("bob") == 1
    assert bob_core.closed
    await harness.gateway.records.flush()
    assert [(r.session_id, r.reason) for r in harness.policy.closed] == [
        (alice.session_id, "certificate revoked"), (bob.session_id, "kicked by admin")]
    assert harness.gateway.list_sessions() == []
    assert not harness.gateway.kick("udp-99")
    # addresses are free again
    assert harness.gateway.pool.in_use() == set()


async def test_client_to_client_only_when_enabled() -> None:
    for enabled in (False, True):
        h = Harness(client_to_client=enabled)
        h.policy.add("a1", "alice")
        h.policy.add("b2", "bob")
        alice, _ = h.connect("a1")
        bob, _ = h.connect("b2")
        assert alice.driver is not None
        packet = ipv4("10.8.0.2", "10.8.0.3")
        alice.driver.feed(packet)
        assert (h.sent[bob.session_id][-1] == b"D" + packet) is enabled
        assert h.tun.written == []


async def test_shutdown_says_goodbye_and_closes_the_tun(harness: Harness) -> None:
    harness.policy.add("a1", "alice")
    client, core = harness.connect("a1")
    await harness.gateway.shutdown()
    assert core.closed and harness.sent[client.session_id][-1] == b"EXIT"
    assert harness.tun.closed
    assert [r.reason for r in harness.policy.closed] == ["gateway shutting down"]  # flushed


async def test_driver_keeps_one_timer(harness: Harness) -> None:
    harness.policy.add("a1", "alice")
    client, core = harness.connect("a1")
    assert client.driver is not None
    loop = asyncio.get_running_loop()
    core.timer = loop.time() + 0.01
    client.driver.pump()
    core.timer = loop.time() + 0.02  # moved: the earlier one must not fire
    client.driver.pump()
    async with asyncio.timeout(5):
        while not core.timer_fired:
            await asyncio.sleep(0.005)
    assert len(core.timer_fired) == 1
    assert core.timer_fired[0] >= loop.time() - 1


async def test_ipv6_pool_mirrors_the_ipv4_host_number() -> None:
    h = Harness(ipv6=True)
    h.policy.add("a1", "alice")
    h.connect("a1")
    client, core = h.connect("a1")  # replaces the first: same address again
    assert client.driver is not None and core.accepted is not None
    assert str(core.accepted.ifconfig_ipv6) == "fd08::2/64"
    assert str(core.accepted.gateway_ipv6) == "fd08::1"
    assert [str(n) for n in core.accepted.routes] == ["10.10.0.0/24"]
    assert [str(n) for n in core.accepted.routes_ipv6] == ["fd10::/64"]
    outbound = ipv6("fd08::2", "fd10::a")
    client.driver.feed(outbound)
    client.driver.feed(ipv6("fd08::3", "fd10::a"))
    client.driver.feed(ipv6("fd08::2", "2001:db8::1"))
    assert h.tun.written == [outbound]
    assert h.gateway.drops == {"spoofed-source": 1, "outside-vpc": 1}
    inbound = ipv6("fd10::a", "fd08::2")
    h.tun.inject(inbound)
    assert h.sent[client.session_id][-1] == b"D" + inbound
    assert h.gateway.kick(client.session_id)
    h.tun.inject(inbound)
    assert h.gateway.drops["tun-no-session"] == 1


class BrokenPolicy(MemoryPolicy):
    def authorize(self, serial: str):  # type: ignore[no-untyped-def]
        raise RuntimeError("database is locked")

    def unauthorized(self, serials):  # type: ignore[no-untyped-def]
        raise RuntimeError("database is locked")


async def test_a_broken_store_refuses_new_peers_and_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness(sweep_interval=0.01)
    h.policy.add("a1", "alice")
    h.connect("a1")
    h.gateway.policy = BrokenPolicy()
    _, core = h.connect("a1")
    assert core.rejected == "server temporarily unavailable"
    assert "policy check" in caplog.text
    # the sweep task survives failing passes
    sweeps = asyncio.create_task(h.gateway.run_sweeps())
    async with asyncio.timeout(5):
        while caplog.text.count("revocation sweep failed") < 2:
            await asyncio.sleep(0.01)
    assert not sweeps.done()
    sweeps.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeps
    assert [s.user for s in h.gateway.list_sessions()] == ["alice"]
    assert h.gateway.pool.in_use() == {ipaddress.ip_address("10.8.0.2")}
