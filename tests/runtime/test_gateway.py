"""The gateway on MemoryTun with a scripted session core: routing, policy, registry."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Collection
from typing import Any

import pytest
import pytest_asyncio

from sslvpn.runtime.gateway import RETRY_AFTER, ClientSession, Gateway, GatewayOptions
from sslvpn.runtime.policy import Authorization
from sslvpn.runtime.tun import MemoryTun
from sslvpn.store import StoreError, StoreUnavailable
from tests.runtime.fakes import VERIFY, FakeCore, MemoryPolicy, decided, ipv4, ipv6

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
        self.sent: dict[str, list[bytes]] = {}
        self.gone: list[str] = []

    @classmethod
    async def started(cls, **options: Any) -> Harness:
        harness = cls(**options)
        await harness.gateway.start()
        return harness

    async def connect(self, serial: str, core: FakeCore | None = None
                      ) -> tuple[ClientSession, FakeCore]:
        """A session that presents ``serial``, once the gateway decided (off the loop)."""
        client, core = self.verify(serial, core)
        await decided(core)
        return client, core

    def verify(self, serial: str, core: FakeCore | None = None) -> tuple[ClientSession, FakeCore]:
        """A session that presents ``serial``; the gateway's answer comes later."""
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
    return await Harness.started()


async def test_accepted_client_gets_address_routes_and_is_listed(harness: Harness) -> None:
    harness.policy.add("a1", "alice")
    client, core = await harness.connect("a1")
    assert core.accepted is not None
    assert str(core.accepted.ifconfig) == "10.8.0.2/24"
    assert str(core.accepted.route_gateway) == "10.8.0.1"
    assert [str(n) for n in core.accepted.routes] == ["10.10.0.0/24"]
    assert harness.sent[client.session_id] == [b"PUSH_REPLY"]
    [info] = harness.gateway.list_sessions()
    assert (info.user, info.certificate_serial, info.vpn_address) == ("alice", "a1", "10.8.0.2")
    assert info.tls_group == "X25519MLKEM768"  # as the core's TLS handshake reported it
    assert harness.policy.opened == []  # written behind, in batches
    await harness.gateway.records.flush()
    [opened] = harness.policy.opened
    assert (opened.session_id, opened.vpn_address) == (client.session_id, "10.8.0.2")
    assert opened.tls_group == "X25519MLKEM768"
    assert (opened.client_version, opened.client_platform, opened.client_gui) == (
        info.client_version, info.client_platform, info.client_gui) == ("2.6.14", None, None)
    assert harness.policy.leases == {"a1": "10.8.0.2"}


async def test_packets_flow_both_ways(harness: Harness) -> None:
    harness.policy.add("a1", "alice")
    client, _ = await harness.connect("a1")
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
    client, _ = await harness.connect("a1", FastCore())
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
    client, _ = await harness.connect("a1")
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
        client, core = await harness.connect(serial)
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
    first, _ = await harness.connect("a1")
    assert harness.gateway.kick(first.session_id)
    _, bob = await harness.connect("b2")
    assert bob.accepted is not None
    assert str(bob.accepted.ifconfig.ip) == "10.8.0.3"  # alice's lease is avoided
    _, again = await harness.connect("a1")
    assert again.accepted is not None
    assert str(again.accepted.ifconfig.ip) == "10.8.0.2"


async def test_same_certificate_replaces_the_old_session(harness: Harness) -> None:
    harness.policy.add("a1", "alice")
    old, old_core = await harness.connect("a1")
    new, new_core = await harness.connect("a1")
    assert old_core.closed and old.session_id in harness.gone
    assert new_core.accepted is not None and str(new_core.accepted.ifconfig.ip) == "10.8.0.2"
    assert [s.session_id for s in harness.gateway.list_sessions()] == [new.session_id]
    harness.tun.inject(ipv4(VPC_HOST, "10.8.0.2"))
    assert harness.sent[new.session_id][-1].startswith(b"D")


async def test_kick_and_revocation_sweep(harness: Harness) -> None:
    harness.policy.add("a1", "alice")
    harness.policy.add("b2", "bob")
    alice, alice_core = await harness.connect("a1")
    bob, bob_core = await harness.connect("b2")
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
        h = await Harness.started(client_to_client=enabled)
        h.policy.add("a1", "alice")
        h.policy.add("b2", "bob")
        alice, _ = await h.connect("a1")
        bob, _ = await h.connect("b2")
        assert alice.driver is not None
        packet = ipv4("10.8.0.2", "10.8.0.3")
        alice.driver.feed(packet)
        assert (h.sent[bob.session_id][-1] == b"D" + packet) is enabled
        assert h.tun.written == []


async def test_shutdown_says_goodbye_and_closes_the_tun(harness: Harness) -> None:
    harness.policy.add("a1", "alice")
    client, core = await harness.connect("a1")
    await harness.gateway.shutdown()
    assert core.closed and harness.sent[client.session_id][-1] == b"EXIT"
    assert harness.tun.closed
    assert [r.reason for r in harness.policy.closed] == ["gateway shutting down"]  # flushed


async def test_driver_keeps_one_timer(harness: Harness) -> None:
    harness.policy.add("a1", "alice")
    client, core = await harness.connect("a1")
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
    h = await Harness.started(ipv6=True)
    h.policy.add("a1", "alice")
    await h.connect("a1")
    client, core = await h.connect("a1")  # replaces the first: same address again
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


async def test_a_session_the_fleet_asked_to_end_ends_at_the_sweep(harness: Harness) -> None:
    """A kick written to the store by another process (another node's portal) reaches the
    node holding the session at its sweep."""
    harness.policy.add("a1", "alice")
    harness.policy.add("b2", "bob")
    alice, alice_core = await harness.connect("a1")
    bob, bob_core = await harness.connect("b2")
    harness.policy.end_requests = {alice.session_id: "kicked by carol", "udp-gone": "x"}
    assert await harness.gateway.sweep() == 1
    assert alice_core.closed and not bob_core.closed
    await harness.gateway.records.flush()
    assert [(r.session_id, r.reason) for r in harness.policy.closed] == [
        (alice.session_id, "kicked by carol")]


async def test_a_woken_sweep_runs_at_once() -> None:
    h = await Harness.started(sweep_interval=3600.0)
    h.policy.add("a1", "alice")
    _, core = await h.connect("a1")
    sweeps = asyncio.create_task(h.gateway.run_sweeps())
    try:
        h.policy.add("a1", "alice", status="revoked")
        h.gateway.wake_sweep()
        async with asyncio.timeout(5):
            while not core.closed:
                await asyncio.sleep(0.01)
    finally:
        sweeps.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeps


class AwayPolicy(MemoryPolicy):
    """Every question raises ``error`` (the store facade gave up, or a bug)."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.asked = 0

    async def authorize(self, serial: str, credentials: object = None) -> Authorization:
        self.asked += 1
        raise self.error

    async def unauthorized(self, serials: Collection[str]) -> dict[str, str]:
        self.asked += 1
        raise self.error


async def _sweeping_while(h: Harness, policy: AwayPolicy, done: Callable[[], bool]) -> None:
    """Run the sweeps until ``done()``: they must survive the failing passes."""
    sweeps = asyncio.create_task(h.gateway.run_sweeps())
    async with asyncio.timeout(5):
        while not done():
            await asyncio.sleep(0.01)
    assert not sweeps.done()
    sweeps.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeps
    assert [s.user for s in h.gateway.list_sessions()] == ["alice"]
    assert h.gateway.pool.in_use() == {ipaddress.ip_address("10.8.0.2")}


@pytest.mark.parametrize("error", [StoreUnavailable("the store did not answer in time"),
                                   StoreError("database error: disk I/O error")])
async def test_an_unavailable_store_tells_new_peers_to_retry_and_keeps_serving(
    caplog: pytest.LogCaptureFixture, error: StoreError,
) -> None:
    h = await Harness.started(sweep_interval=0.01)
    h.policy.add("a1", "alice")
    await h.connect("a1")
    h.gateway.policy = away = AwayPolicy(error)
    _, core = await h.connect("b2")
    assert core.rejected == "the server cannot check certificates right now"
    assert core.retry_after == RETRY_AFTER and h.gateway.told_to_retry == 1
    await _sweeping_while(h, away, lambda: away.asked >= 4)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []  # the facade logs


async def test_a_bug_in_the_policy_refuses_for_good_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = await Harness.started(sweep_interval=0.01)
    h.policy.add("a1", "alice")
    await h.connect("a1")
    h.gateway.policy = away = AwayPolicy(RuntimeError("a bug"))
    _, core = await h.connect("b2")
    assert (core.rejected, core.retry_after) == ("server error", None)
    assert "policy check for" in caplog.text
    await _sweeping_while(h, away, lambda: caplog.text.count("revocation sweep failed") >= 2)


class HeldPolicy(MemoryPolicy):
    """Answers each question only when the test releases it (a slow store)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[asyncio.Event] = []

    async def authorize(self, serial: str, credentials: object = None) -> Authorization:
        release = asyncio.Event()
        self.held.append(release)
        await release.wait()
        return self.standing(serial)


async def _asked(policy: HeldPolicy, questions: int) -> None:
    async with asyncio.timeout(5):
        while len(policy.held) < questions:
            await asyncio.sleep(0)


async def test_the_handshake_waits_for_the_store_and_the_data_path_does_not() -> None:
    policy = HeldPolicy()
    h = await Harness.started(policy=policy)
    policy.add("a1", "alice")
    policy.add("b2", "bob")
    alice, alice_core = h.verify("a1")
    await _asked(policy, 1)
    policy.held.pop().set()
    await decided(alice_core)
    _, bob_core = h.verify("b2")
    await _asked(policy, 1)  # bob's question is out; alice's traffic goes on meanwhile
    assert alice.driver is not None
    alice.driver.feed(ipv4("10.8.0.2", VPC_HOST))
    h.tun.inject(ipv4(VPC_HOST, "10.8.0.2"))
    assert len(h.tun.written) == 1 and h.sent[alice.session_id][-1].startswith(b"D")
    assert bob_core.accepted is None and bob_core.rejected is None
    policy.held.pop().set()
    await decided(bob_core)
    assert bob_core.accepted is not None and str(bob_core.accepted.ifconfig.ip) == "10.8.0.3"


async def test_an_answer_for_a_session_gone_meanwhile_is_dropped() -> None:
    policy = HeldPolicy()
    h = await Harness.started(policy=policy)
    policy.add("a1", "alice")
    gone, gone_core = h.verify("a1")
    await _asked(policy, 1)
    h.gateway.transport_lost(gone)  # e.g. its TCP connection closed while the store was slow
    again, again_core = h.verify("a1")  # the client came back with the same certificate
    await _asked(policy, 2)
    late, current = policy.held
    current.set()
    await decided(again_core)
    late.set()
    await asyncio.sleep(0)  # the late answer's task runs to its end, and takes nothing
    await h.gateway.records.flush()
    assert gone_core.accepted is None and gone_core.rejected is None
    assert [s.session_id for s in h.gateway.list_sessions()] == [again.session_id]
    assert [r.session_id for r in policy.opened] == [again.session_id]
    assert h.gateway.pool.in_use() == {ipaddress.ip_address("10.8.0.2")}


class SnapshotPolicy(HeldPolicy):
    """A slow store (answers held) with an admission snapshot taken before the test's
    changes: ``known`` is what `admitted_now` says without asking the store."""

    def __init__(self) -> None:
        super().__init__()
        self.known: dict[str, Authorization] = {}
        self.forgotten: list[str] = []

    def admitted_now(self, serial: str) -> Authorization | None:
        return self.known.get(serial)

    def forget(self, *, serials: Collection[str] = (), user: str | None = None) -> None:
        self.forgotten.extend(serials)


async def test_a_snapshot_admission_does_not_wait_for_a_slow_store() -> None:
    """The PUSH_REPLY of a certificate the snapshot admits goes out while the store read is
    still under way; the read still decides: a refusal it brings ends that session, and a
    certificate the snapshot does not hold (a disabled user) waits for it and is refused."""
    policy = SnapshotPolicy()
    h = await Harness.started(policy=policy)
    for serial, user in (("a1", "alice"), ("b2", "bob"), ("c3", "carol")):
        policy.add(serial, user)
    policy.known = {"a1": Authorization("alice", "laptop"),
                    "c3": Authorization("carol", "laptop")}
    policy.disabled.add("bob")
    policy.certs["c3"] = ("carol", "revoked")  # since the snapshot's read
    alice, alice_core = h.verify("a1")
    assert alice_core.accepted is not None  # at once: no store round trip
    await _asked(policy, 1)  # the confirming read is out, and held
    _, bob_core = h.verify("b2")
    carol, carol_core = h.verify("c3")
    assert carol_core.accepted is not None
    await _asked(policy, 3)
    assert bob_core.accepted is None and bob_core.rejected is None  # waits for the store
    for release in policy.held:
        release.set()
    await decided(bob_core)
    assert bob_core.rejected == "user disabled"
    async with asyncio.timeout(5):
        while carol.session_id not in h.gone:
            await asyncio.sleep(0)
    assert carol.end_reason == "certificate revoked" and carol_core.closed
    assert [s.user for s in h.gateway.list_sessions()] == ["alice"]
    assert alice.session_id not in h.gone
    assert h.gateway.kick_certificate("A1") == 1 and policy.forgotten == ["A1"]
