"""The gateway's admission bookkeeping: leases from memory, accounting written behind."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence

import pytest

from sslvpn.runtime import records as records_module
from sslvpn.runtime.control import TunnelStatus
from sslvpn.runtime.policy import (
    LeaseStored,
    Record,
    SessionCounted,
    SessionEnded,
    SessionOpened,
)
from sslvpn.store import StoreError
from tests.runtime.fakes import MemoryPolicy, ipv4
from tests.runtime.test_gateway import VPC_HOST, Harness


class BatchPolicy(MemoryPolicy):
    """Remembers every batch; fails the first ``failures`` writes."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.batches: list[list[Record]] = []
        self.failures = failures
        self.sweeps = 0

    def record(self, records: Sequence[Record]) -> None:
        self.batches.append(list(records))
        if self.failures:
            self.failures -= 1
            raise StoreError("database error: disk I/O error")
        super().record(records)

    async def unauthorized(self, serials: object) -> dict[str, str]:
        self.sweeps += 1
        return {}


@contextlib.asynccontextmanager
async def background(work: Coroutine[object, object, None]) -> AsyncIterator[None]:
    """Run ``work`` (a loop that runs until cancelled) for the block."""
    task = asyncio.create_task(work)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.005)


async def test_accounting_is_written_behind_in_one_batch() -> None:
    policy = BatchPolicy()
    h = await Harness.started(policy=policy)
    for serial in ("a1", "b2", "c3"):
        policy.add(serial, serial)
        await h.connect(serial)
    assert policy.batches == []  # admission wrote nothing
    async with background(h.gateway.run_sweeps()):
        await until(lambda: len(policy.opened) == 3)
    [batch] = policy.batches
    assert [type(r) for r in batch] == [LeaseStored, SessionOpened] * 3
    assert policy.leases == {"a1": "10.8.0.2", "b2": "10.8.0.3", "c3": "10.8.0.4"}


async def test_stored_leases_are_loaded_at_start_and_kept() -> None:
    policy = MemoryPolicy()
    policy.leases = {"a1": "10.8.0.9", "b2": "10.8.0.2"}
    policy.add("a1", "alice")
    policy.add("c3", "carol")
    h = await Harness.started(policy=policy)
    _, alice = await h.connect("a1")
    _, carol = await h.connect("c3")
    assert alice.accepted is not None and carol.accepted is not None
    assert str(alice.accepted.ifconfig.ip) == "10.8.0.9"
    assert str(carol.accepted.ifconfig.ip) == "10.8.0.3"  # b2's lease is avoided
    await h.gateway.records.flush()
    assert policy.leases == {"a1": "10.8.0.9", "b2": "10.8.0.2", "c3": "10.8.0.3"}
    assert [type(r) for r in policy.opened] == [SessionOpened] * 2  # a1's lease unchanged


async def test_an_exhausted_pool_refuses() -> None:
    h = await Harness.started(pool="10.8.0.0/29")  # five client addresses
    for n in range(6):
        h.policy.add(f"{n:x}", f"user{n}")
    cores = [(await h.connect(f"{n:x}"))[1] for n in range(6)]
    assert all(core.accepted is not None for core in cores[:5])
    assert cores[5].rejected == "address pool exhausted"
    assert len(h.gateway.list_sessions()) == 5


async def test_records_wait_out_a_failing_store_and_the_data_path_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = BatchPolicy(failures=5)
    h = await Harness.started(policy=policy)
    policy.add("a1", "alice")
    client, _ = await h.connect("a1")
    for _ in range(5):
        assert not await h.gateway.records.flush()
    assert all(batch == policy.batches[0] for batch in policy.batches)  # the same records
    assert policy.opened == [] and len(h.gateway.records) == 2
    assert client.driver is not None
    client.driver.feed(ipv4("10.8.0.2", VPC_HOST))  # the data path never noticed
    assert len(h.tun.written) == 1
    assert h.gateway.kick(client.session_id)
    assert await h.gateway.records.flush()
    assert [r.session_id for r in policy.opened] == [client.session_id]
    assert [r.reason for r in policy.closed] == ["kicked by admin"]
    assert policy.leases == {"a1": "10.8.0.2"}
    assert caplog.text.count("writing accounting records failed") == 1


async def test_shutdown_waits_a_bounded_time_for_a_failing_store(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("sslvpn.runtime.gateway.SHUTDOWN_FLUSH_TIMEOUT", 0.3)
    policy = BatchPolicy(failures=1_000_000)
    h = await Harness.started(policy=policy)
    policy.add("a1", "alice")
    await h.connect("a1")
    async with asyncio.timeout(5):
        await h.gateway.shutdown()
    assert len(policy.batches) >= 2  # retried until the deadline
    assert "3 accounting records were not written" in caplog.text  # lease, opened, ended


async def test_shutdown_books_the_tunnels_last_bytes() -> None:
    """Accounting rounds are a minute apart: what a tunnel moved since the last one must not
    be lost when serve stops."""
    policy = BatchPolicy()
    h = await Harness.started(policy=policy)
    h.gateway.tunnel_status_providers.append(lambda: [TunnelStatus(
        "t1", "up", None, None, None, None, 700, 70, packets_in=5, packets_out=5)])
    await h.gateway.shutdown()
    assert _moved(policy, "tunnel", "t1") == (700, 70)


async def test_a_full_queue_drops_new_records(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(records_module, "MAX_PENDING", 2)
    h = await Harness.started()
    for serial in ("a1", "b2"):
        h.policy.add(serial, serial)
        await h.connect(serial)
    assert h.gateway.records.dropped == 2
    assert caplog.text.count("accounting queue full") == 1
    await h.gateway.records.flush()
    assert h.policy.leases == {"a1": "10.8.0.2"}


async def test_counters_are_written_for_sessions_that_moved_traffic() -> None:
    policy = BatchPolicy()
    h = await Harness.started(policy=policy, sweep_interval=0.01, accounting_interval=0)
    policy.add("a1", "alice")
    policy.add("b2", "bob")
    alice, _ = await h.connect("a1")
    await h.connect("b2")
    assert alice.driver is not None
    packet = ipv4("10.8.0.2", VPC_HOST)
    alice.driver.feed(packet)
    async with background(h.gateway.run_sweeps()):
        await until(lambda: len(policy.counters) == 1)
        sweeps = policy.sweeps
        await until(lambda: policy.sweeps >= sweeps + 3)
        await h.gateway.records.flush()
    assert policy.counters == [SessionCounted(alice.session_id, len(packet), 0)]


async def test_session_ids_and_peer_ids_are_unique(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = iter(["00000001", "00000001", "00000002"])
    monkeypatch.setattr("sslvpn.runtime.gateway.secrets.token_hex", lambda _n: next(tokens))
    h = await Harness.started()
    h.policy.add("a1", "alice")
    h.policy.add("b2", "bob")
    first = (await h.connect("a1"))[0]
    second = (await h.connect("b2"))[0]
    assert (first.session_id, second.session_id) == ("udp-00000001", "udp-00000002")
    assert first.peer_id != second.peer_id


async def test_ended_sessions_are_recorded_in_order() -> None:
    h = await Harness.started()
    h.policy.add("a1", "alice")
    first, _ = await h.connect("a1")
    second, _ = await h.connect("a1")  # replaces the first
    await h.gateway.shutdown()
    assert [r.session_id for r in h.policy.opened] == [first.session_id, second.session_id]
    assert [(r.session_id, r.reason) for r in h.policy.closed] == [
        (first.session_id, "replaced by a new connection with the same certificate"),
        (second.session_id, "gateway shutting down"),
    ]
    assert all(isinstance(r, SessionEnded) for r in h.policy.closed)


async def test_a_full_batch_is_written_without_waiting_for_the_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(records_module, "FLUSH_SIZE", 2)
    policy = BatchPolicy()
    h = await Harness.started(policy=policy)
    h.gateway.records.interval = 3600
    policy.add("a1", "alice")
    await h.connect("a1")  # a lease and an opened session: two records
    async with background(h.gateway.run_sweeps()):
        await until(lambda: len(policy.opened) == 1)


def _moved(policy: MemoryPolicy, scope: str, name: str) -> tuple[int, int]:
    booked = [r for r in policy.traffic if (r.scope, r.name) == (scope, name)]
    return sum(r.bytes_in for r in booked), sum(r.bytes_out for r in booked)


async def test_traffic_history_books_users_the_node_and_tunnels_once_each() -> None:
    """What each user, the node and each IPsec tunnel moved is booked in the accounting
    batches, each byte once: at every accounting round and at a session's end."""
    policy = BatchPolicy()
    h = await Harness.started(policy=policy, sweep_interval=0.01, accounting_interval=0)
    policy.add("a1", "alice")
    policy.add("a2", "alice")
    policy.add("b2", "bob")
    laptop, _ = await h.connect("a1")
    phone, _ = await h.connect("a2")
    await h.connect("b2")
    tunnel = {"bytes": (100, 10)}
    h.gateway.tunnel_status_providers.append(lambda: [TunnelStatus(
        "t1", "up", None, None, None, None, *tunnel["bytes"], packets_in=1, packets_out=1)])
    assert laptop.driver is not None and phone.driver is not None
    up, down = ipv4("10.8.0.2", VPC_HOST), ipv4(VPC_HOST, "10.8.0.3", b"pong!")
    laptop.driver.feed(up)
    h.tun.inject(down)
    async with background(h.gateway.run_sweeps()):
        await until(lambda: _moved(policy, "user", "alice") == (len(up), len(down)))
        laptop.driver.feed(up)  # then the laptop leaves: its last bytes are booked at the end
        h.gateway.kick(laptop.session_id)
        tunnel["bytes"] = (30, 3)  # the tunnel restarted: its counters began again
        await until(lambda: _moved(policy, "tunnel", "t1") == (130, 13))
        await h.gateway.records.flush()
    assert _moved(policy, "user", "alice") == (2 * len(up), len(down))
    assert _moved(policy, "node", "default") == (2 * len(up), len(down))
    assert _moved(policy, "user", "bob") == (0, 0)  # nothing moved: nothing booked
