"""The supervisor's view of its workers: one control over every worker's control socket, the
node's revocation sweep ending a session on whichever worker holds it, and the metrics and
alarms adding up every worker's counters."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from sslvpn.cli.serve_node import alarm_inputs
from sslvpn.net.access import AccessPolicy
from sslvpn.runtime.alarms import Evaluator
from sslvpn.runtime.control import GatewayCounters, summed
from sslvpn.runtime.control_server import ControlError, ControlServer
from sslvpn.runtime.gateway import ClientSession, Gateway, GatewayOptions
from sslvpn.runtime.metrics import Metrics, gateway_source, ipsec_source, listener_source
from sslvpn.runtime.tun import MemoryTun
from sslvpn.runtime.workers_control import NodeSweep, WorkersControl
from sslvpn.store import db, fleet_queries, gateway_queries, queries
from sslvpn.store.async_store import AsyncStore
from sslvpn.store.db import open_engine, upgrade
from sslvpn.store.gateway_queries import SessionOpened
from tests.runtime.fakes import VERIFY, FakeCore, MemoryPolicy, decided, ipv4
from tests.runtime.test_alarms import _facts
from tests.runtime.test_metrics import promtool_check, samples, scrape, value

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SECOND = ipaddress.IPv4Network("10.8.0.128/25")  # the second worker's slice


class Worker:
    """A gateway on a MemoryTun answering on its own control socket, as a worker does."""

    def __init__(self, index: int, socket: Path) -> None:
        self.policy = MemoryPolicy()
        self.gateway = Gateway(
            MemoryTun(),
            GatewayOptions(pool=ipaddress.IPv4Network(f"10.8.0.{index * 128}/25"),
                           vpc_networks=(ipaddress.ip_network("10.10.0.0/24"),),
                           sweep_interval=None),
            self.policy,
        )
        self.server = ControlServer(self.gateway, socket)
        self.cores: dict[str, FakeCore] = {}

    async def start(self) -> None:
        await self.gateway.start()
        await self.server.start()

    async def connect(self, serial: str, user: str, *, known: bool = True) -> ClientSession:
        """A session of ``serial`` sending one packet to the VPC (refused when unknown)."""
        if known:
            self.policy.add(serial, user)
        core = FakeCore()
        client = self.gateway.new_session(core, transmit=lambda _d: None, protocol="udp",
                                          real_address="198.18.0.2:4000",
                                          on_closed=lambda: None)
        assert client.driver is not None
        client.driver.feed(VERIFY + serial.encode())
        await decided(core)
        if known:
            client.driver.feed(ipv4(client.vpn_text, "10.10.0.10"))
        self.cores[serial] = core
        return client


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[list[Worker]]:
    started = [Worker(i, tmp_path / f"control-w{i}.sock") for i in range(2)]
    for worker in started:
        await worker.start()
    yield started
    for worker in started:
        await worker.server.close()
        await worker.gateway.shutdown()


async def test_one_control_lists_counts_and_kicks_every_workers_sessions(
    workers: list[Worker], tmp_path: Path
) -> None:
    first = await workers[0].connect("a1", "alice")
    second = await workers[1].connect("b2", "bob")
    await workers[1].connect("c3", "alice")
    control = WorkersControl([tmp_path / "control-w0.sock", tmp_path / "control-w1.sock"])
    listed = await asyncio.to_thread(control.list_sessions)
    assert sorted((s.user, ipaddress.ip_address(s.vpn_address) in SECOND) for s in listed) == [
        ("alice", False), ("alice", True), ("bob", True)]
    assert (await asyncio.to_thread(control.traffic)).bytes_in == 3 * 24
    assert (await asyncio.to_thread(control.listener_status)).clients == 0  # no listeners here
    assert await asyncio.to_thread(control.kick, second.session_id) is True
    assert workers[1].cores["b2"].closed
    assert await asyncio.to_thread(control.kick, "udp-nobody") is False
    assert await asyncio.to_thread(control.kick_user, "alice") == 2
    assert workers[0].cores["a1"].closed and workers[1].cores["c3"].closed
    assert first.session_id not in [s.session_id for s in workers[0].gateway.list_sessions()]
    # a worker being restarted is skipped; with none answering, the caller is told
    await workers[1].server.close()
    assert await asyncio.to_thread(control.list_sessions) == []
    await workers[0].server.close()
    with pytest.raises(ControlError):
        await asyncio.to_thread(control.list_sessions)


def _open_records(engine: Engine, opened: list[tuple[ClientSession, datetime]]) -> None:
    """The store as the workers leave it: each session's certificate (a good one) and its
    open session record, connected at the time given."""
    with db.session(engine) as s:
        users = {user: queries.create_user(s, name=user).id for user in {c.user for c, _ in opened}}
        for serial, user in sorted({(c.serial, c.user) for c, _ in opened}):
            user_id = users[user]
            queries.add_certificate(s, serial=serial, subject_cn=serial, kind="client",
                                    not_before=T0, not_after=T0 + timedelta(days=999),
                                    fingerprint_sha256="00", cert_pem="-",
                                    user_id=user_id, device="laptop")
        gateway_queries.write_records(s, gateway_name="default", now=T0, records=[
            SessionOpened(c.session_id, c.user, c.serial, c.real_address, c.vpn_text,
                          "udp", at) for c, at in opened])


async def test_the_node_sweep_ends_a_revoked_session_on_the_worker_holding_it(
    workers: list[Worker], tmp_path: Path
) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'store.db'}")
    upgrade(engine)
    store = AsyncStore(engine)
    try:
        clients = [await workers[0].connect("a1", "alice"), await workers[1].connect("b2", "bob"),
                   await workers[1].connect("c3", "carol")]
        _open_records(engine, [(client, T0) for client in clients])
        control = WorkersControl([tmp_path / "control-w0.sock", tmp_path / "control-w1.sock"])
        sweep = NodeSweep(store, control, interval=3600)
        assert await sweep.sweep() == 0
        with db.session(engine) as s:
            queries.mark_revoked(s, serial="b2", reason="keyCompromise", at=T0)
            fleet_queries.request_end(s, session_id=clients[0].session_id, reason="kicked")
        running = asyncio.create_task(sweep.run())
        sweep.wake()  # as the fleet's signal does: at once, not after the interval
        async with asyncio.timeout(5):
            while not (workers[1].cores["b2"].closed and workers[0].cores["a1"].closed):
                await asyncio.sleep(0.01)
        running.cancel()
        assert not workers[1].cores["c3"].closed
        assert sweep.ended == 2
    finally:
        await store.close()
        engine.dispose()


async def test_a_device_reconnecting_to_the_other_worker_replaces_its_session(
    workers: list[Worker], tmp_path: Path
) -> None:
    """As one gateway replaces a certificate's session when it connects again, the node's
    sweep ends the older session of a certificate that came back on the other worker, at its
    next round (2 s), and leaves the newer one and every other certificate's alone."""
    engine = open_engine(f"sqlite:///{tmp_path / 'store.db'}")
    upgrade(engine)
    store = AsyncStore(engine)
    try:
        old = await workers[0].connect("a1", "alice")
        other = await workers[0].connect("c3", "carol")
        old_cores = dict(workers[0].cores)
        new = await workers[1].connect("a1", "alice")
        _open_records(engine, [(old, T0), (other, T0), (new, T0 + timedelta(seconds=1))])
        control = WorkersControl([tmp_path / "control-w0.sock", tmp_path / "control-w1.sock"])
        sweep = NodeSweep(store, control)
        running = asyncio.create_task(sweep.run())
        async with asyncio.timeout(sweep.interval + 2):  # the first round, with room for load
            while not old_cores["a1"].closed:
                await asyncio.sleep(0.01)
        running.cancel()
        assert [s.session_id for s in await asyncio.to_thread(control.list_sessions)] == [
            other.session_id, new.session_id]
        assert not workers[1].cores["a1"].closed and not old_cores["c3"].closed
        assert sweep.ended == 1
    finally:
        await store.close()
        engine.dispose()


async def test_metrics_of_the_supervisor_add_up_every_worker(
    workers: list[Worker], tmp_path: Path
) -> None:
    """A scrape in the supervisor asks each worker's control socket for its counters and
    adds them up: sessions, handshakes, bytes and packets, drops, admission; a worker being
    restarted leaves its share out, not the scrape."""
    await workers[0].connect("a1", "alice")
    await workers[1].connect("b2", "bob")
    await workers[1].connect("c3", "carol")
    await workers[1].connect("ff", "mallory", known=False)  # refused: not in the store
    workers[0].gateway.drops["outside-vpc"] += 2
    workers[1].gateway.drops["outside-vpc"] += 3
    control = WorkersControl([tmp_path / "control-w0.sock", tmp_path / "control-w1.sock"])
    metrics = Metrics()
    metrics.add_thread_source(gateway_source(control.counters, "n1"))
    metrics.add_thread_source(listener_source(control.listener_status, "n1"))
    metrics.add_thread_source(ipsec_source(control.tunnel_status))
    text = await scrape(metrics)
    promtool_check(text)
    found = samples(text)
    assert value(found, "sslvpn_sessions", node="n1", proto="udp") == 3
    assert value(found, "sslvpn_handshakes_total", node="n1", result="ok") == 3
    assert value(found, "sslvpn_handshakes_total", node="n1", result="auth_failed") == 1
    assert value(found, "sslvpn_tunnel_packets_total", node="n1", direction="in") == 3
    assert value(found, "sslvpn_tunnel_bytes_total", node="n1", direction="in") == 3 * 24
    assert value(found, "sslvpn_dropped_packets_total", node="n1", reason="outside-vpc") == 5
    assert value(found, "sslvpn_openvpn_client_limit", node="n1",
                 limit="half_open_per_address") == 16
    assert value(found, "sslvpn_store_write_queue_depth") > 0  # both workers' records
    assert await asyncio.to_thread(control.all_answer)
    await workers[1].server.close()
    alone = samples(await scrape(metrics))
    assert value(alone, "sslvpn_sessions", node="n1", proto="udp") == 1
    assert not await asyncio.to_thread(control.all_answer)


async def test_the_refused_handshakes_alarm_counts_every_worker(
    workers: list[Worker], tmp_path: Path
) -> None:
    """The supervisor's alarm reads the refused handshakes of all workers: 20 on one and 20
    on the other within a minute pass the default 30 a minute, neither alone would; while no
    worker answers, neither figure is known."""
    control = WorkersControl([tmp_path / "control-w0.sock", tmp_path / "control-w1.sock"])
    tunnels, auth_failures = alarm_inputs(control)
    assert await tunnels() == []  # the first worker's (it runs the IPsec tunnels)
    evaluator = Evaluator("n1")
    assert not evaluator.evaluate(_facts(auth_failures=await auth_failures()), 0.0).bad
    for worker in workers:
        for i in range(20):
            await worker.connect(f"bad{i}", "mallory", known=False)
    assert await auth_failures() == 40
    raised = evaluator.evaluate(_facts(auth_failures=await auth_failures()), 60.0)
    assert set(raised.bad) == {"auth-failures/n1"}
    for worker in workers:  # being restarted: not known, not an error that ends the round
        await worker.server.close()
    assert await tunnels() is None and await auth_failures() is None


def test_counters_add_up_by_key() -> None:
    """Access rule hits and drops are added per key, not replaced by one worker's."""
    one = GatewayCounters({"udp": 1}, 10, 20, 1, 2, {"ok": 1}, {"outside-vpc": 1},
                          store_write_queue=2, access_hits={"1/allow": 1})
    two = GatewayCounters({"udp": 2, "tcp": 1}, 5, 5, 1, 1, {"ok": 3}, {},
                          access_hits={"1/allow": 2, "default/deny": 4})
    assert summed([one, two]) == GatewayCounters(
        {"udp": 3, "tcp": 1}, 15, 25, 2, 3, {"ok": 4}, {"outside-vpc": 1},
        store_write_queue=2, access_hits={"1/allow": 3, "default/deny": 4})


async def test_access_rule_hits_add_up_over_every_workers_control_socket(
    workers: list[Worker], tmp_path: Path
) -> None:
    """The portal's rule counters: each worker's, through its control socket, added up."""
    for worker in workers:
        worker.gateway.set_access(AccessPolicy(default="nothing", revision=1))
    await workers[0].connect("a1", "alice")
    await workers[1].connect("b2", "bob")
    await workers[1].connect("c3", "carol")
    control = WorkersControl([tmp_path / "control-w0.sock", tmp_path / "control-w1.sock"])
    assert await asyncio.to_thread(control.access_hits) == [("default", False, 3)]
