"""The takeover rule for IPsec tunnels on fleet nodes, on a real PostgreSQL.

Each tunnel is held by one node at a time through an advisory lock on that node's lease
connection: a standby never gets it while the owner's connection lives, and gets it as soon
as that connection ends (the owner stopped, was SIGKILLed, or the server dropped it). Then
two IPsec services (nodes A and B, on loopback addresses with a MemoryTun) show the whole
rule: A carries the tunnel, runs its hook and is recorded as owner; B stands by; when A
stops, B takes the tunnel, initiates, runs the hook with the tunnel's facts and is recorded.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from sslvpn.runtime.ipsec_service import IpsecService
from sslvpn.runtime.tun import MemoryTun
from sslvpn.store import StoreUnavailable, node_queries
from sslvpn.store import ipsec_queries as q
from sslvpn.store.async_store import AsyncStore
from sslvpn.store.db import open_engine, session, upgrade
from sslvpn.store.leases import TunnelLeases
from tests.netns import wait_until

pytestmark = pytest.mark.postgres

NODE_A, NODE_B, PEER = "127.0.0.2", "127.0.0.3", "127.0.0.9"
LOCAL, REMOTE = "10.2.0.0/24", "10.1.0.0/24"
PSK = "takeover-test-psk-0123456789abcdef"
HOLD = """
import sys, time
from sqlalchemy import create_engine
from sslvpn.store.leases import TunnelLeases
leases = TunnelLeases(create_engine(sys.argv[1]), "A")
print(sorted(leases.sync({5})), flush=True)
time.sleep(120)
"""


@pytest.fixture
def engine(empty_postgres_url: str) -> Iterator[Engine]:
    store = open_engine(empty_postgres_url)
    upgrade(store)
    yield store
    store.dispose()


def test_one_node_holds_a_lease_until_its_connection_ends(engine: Engine) -> None:
    a, b = TunnelLeases(engine, "A"), TunnelLeases(engine, "B")
    try:
        assert a.sync({1, 2}) == {1, 2}
        assert b.sync({1, 2}) == frozenset()  # the standby tries and never waits
        assert a.sync({1}) == {1}  # no longer wanted: released at once
        assert b.sync({1, 2}) == {2}
        a.close()  # the server ends A's backend (and frees its locks) a moment later
        assert wait_until(lambda: b.sync({1, 2}) == {1, 2}, 5)
        assert a.sync({1, 2}) == frozenset()
    finally:
        a.close()
        b.close()


def test_a_dropped_connection_loses_every_lease_and_cannot_take_them_back(
    engine: Engine,
) -> None:
    """A connection the server ended (as for a vanished host) frees its locks for the
    standby; the old owner learns it lost them and then finds them taken: no split brain."""
    a, b = TunnelLeases(engine, "A"), TunnelLeases(engine, "B")
    try:
        assert a.sync({7}) == {7}
        with engine.connect() as connection:
            ended = connection.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'sslvpn-ipsec A'")).scalars().all()
        assert ended == [True]
        assert wait_until(lambda: b.sync({7}) == {7}, 5)
        with pytest.raises(StoreUnavailable):
            a.sync({7})
        assert a.sync({7}) == frozenset()
    finally:
        a.close()
        b.close()


def test_a_sigkilled_owner_frees_its_lease_at_once(engine: Engine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    b = TunnelLeases(engine, "B")
    with subprocess.Popen([sys.executable, "-c", HOLD, url], stdout=subprocess.PIPE,
                          text=True) as owner:
        try:
            assert owner.stdout is not None and owner.stdout.readline().strip() == "[5]"
            assert b.sync({5}) == frozenset()
            owner.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            assert wait_until(lambda: b.sync({5}) == {5}, 5)
            print(f"lease taken {time.monotonic() - killed:.3f} s after SIGKILL")  # noqa: T201
        finally:
            owner.kill()
            b.close()


def test_a_hung_owner_is_fenced_once_its_heartbeat_is_stale(engine: Engine) -> None:
    """A stopped owner's kernel keeps its connection, and so its lock, alive: the standby
    ends that connection when told the owner's heartbeat is stale, and only that one."""
    url = engine.url.render_as_string(hide_password=False)
    b, c = TunnelLeases(engine, "B"), TunnelLeases(engine, "C")
    with subprocess.Popen([sys.executable, "-c", HOLD, url], stdout=subprocess.PIPE,
                          text=True) as owner:
        try:
            assert owner.stdout is not None and owner.stdout.readline().strip() == "[5]"
            assert c.sync({9}) == {9}
            owner.send_signal(signal.SIGSTOP)
            assert b.sync({5}) == frozenset()  # alive as far as the server can tell
            assert b.sync({5}, fence={"C"}) == frozenset()  # C holds nothing B wants
            assert c.sync({9}) == {9}
            fenced = time.monotonic()
            assert wait_until(lambda: b.sync({5}, fence={"A"}) == {5}, 5)
            print(f"hung owner fenced in {time.monotonic() - fenced:.3f} s")  # noqa: T201
        finally:
            owner.kill()
            owner.send_signal(signal.SIGCONT)
            b.close()
            c.close()


def test_stale_nodes_are_those_whose_heartbeat_is_older_than_the_timeout(
    engine: Engine,
) -> None:
    with session(engine, write=True) as s:
        for name, pool in (("A", "10.8.0.0/26"), ("B", "10.8.0.64/26"), ("C", "10.8.0.128/26")):
            node_queries.add_node(s, name=name, public_addresses=[name.lower() + ".example"],
                                  pool_cidr=pool)
    with engine.begin() as connection:
        connection.execute(text("UPDATE node SET heartbeat_at = now() - interval '16 seconds' "
                                "WHERE name = 'A'"))
        connection.execute(text("UPDATE node SET heartbeat_at = now() - interval '14 seconds' "
                                "WHERE name = 'B'"))
    with session(engine, write=False) as s:
        assert q.stale_nodes(s) == {"A"}  # the default timeout is 15 s; C never beat


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _fleet_tunnel(engine: Engine, hook_dir: Path) -> None:
    hook = f"env | grep ^SSLVPN_ | sort > {hook_dir}/hook-$SSLVPN_NODE"
    with session(engine, write=True) as s:
        node_queries.add_node(s, name="A", public_addresses=["a.example", NODE_A],
                              pool_cidr="10.8.0.0/26")
        node_queries.add_node(s, name="B", public_addresses=[NODE_B], pool_cidr="10.8.0.64/26")
        q.create_vpn_gateway(s, name="vgw", public_address="198.18.0.2", nodes=["A", "B"],
                             on_activate=hook)
        q.create_customer_gateway(s, name="dc1", address=PEER)
        q.create_tunnel(s, name="t1", gateway="vgw", customer_gateway="dc1", psk=PSK,
                        ike_proposals="aes256gcm16-prfsha256-ecp256",
                        esp_proposals="aes256gcm16", start_action="wait")
        q.add_policy(s, tunnel="t1", local_cidr=LOCAL, peer_cidr=REMOTE)


async def _until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _hook_ran(output: Path) -> bool:
    """The hook's shell made its output file before it wrote it: wait for the last line."""
    return output.exists() and "SSLVPN_TUNNEL=t1" in output.read_text()


def _owner(engine: Engine) -> str | None:
    with session(engine, write=False) as s:
        return q.tunnel_owners(s).get("t1", (None, None))[0]


async def test_a_standby_takes_the_tunnel_when_the_owner_stops(
    engine: Engine, tmp_path: Path
) -> None:
    _fleet_tunnel(engine, tmp_path)
    ports = {"ike_port": _free_port(), "nat_t_port": _free_port()}
    a = IpsecService(AsyncStore(engine), node="A", tun_factory=MemoryTun, manage_routes=False,
                     reload_interval=0.2, **ports)
    b = IpsecService(AsyncStore(engine), node="B", tun_factory=MemoryTun, manage_routes=False,
                     reload_interval=0.2, **ports)
    running_a = asyncio.create_task(a.run())
    running_b: asyncio.Task[None] | None = None
    try:
        assert await _until(lambda: [t.node for t in a.tunnel_status()] == ["A"], 10)
        tunnel = a.tunnel("t1")
        assert tunnel.config.local_address == NODE_A and tunnel.ike_config.local_id
        assert tunnel.state == "connecting" and tunnel.initiating is not None  # it initiates
        assert await _until(lambda: _hook_ran(tmp_path / "hook-A"), 10)
        assert await _until(lambda: _owner(engine) == "A", 5)

        running_b = asyncio.create_task(b.run())
        await asyncio.wait_for(b.ready.wait(), 10)
        await asyncio.sleep(0.6)  # three rounds of B trying
        assert b.tunnel_status() == []

        running_a.cancel()
        stopped = time.monotonic()
        await asyncio.gather(running_a, return_exceptions=True)
        assert await _until(lambda: [t.node for t in b.tunnel_status()] == ["B"], 10)
        took = time.monotonic() - stopped
        assert b.tunnel("t1").config.local_address == NODE_B
        assert b.tunnel("t1").initiating is not None
        assert await _until(lambda: _hook_ran(tmp_path / "hook-B"), 10)
        assert await _until(lambda: _owner(engine) == "B", 5)
        hook_env = (tmp_path / "hook-B").read_text().splitlines()
        assert {"SSLVPN_TUNNEL=t1", "SSLVPN_NODE=B", f"SSLVPN_LOCAL_CIDRS={LOCAL}",
                f"SSLVPN_PEER_CIDRS={REMOTE}", f"SSLVPN_LOCAL_ADDRESS={NODE_B}"} <= set(hook_env)
        print(f"standby took the tunnel {took:.3f} s after the owner stopped")  # noqa: T201
    finally:
        for task in (running_a, running_b):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


async def test_an_owner_that_loses_its_lease_connection_stops_the_tunnel(
    engine: Engine, tmp_path: Path
) -> None:
    """The server ending the owner's lease connection (a node fenced or cut off) ends its
    claim: the owner stops the tunnel at once (alone, it takes the lease again and starts
    afresh); with a standby, the standby takes it and the old owner finds it taken."""
    _fleet_tunnel(engine, tmp_path)
    ports = {"ike_port": _free_port(), "nat_t_port": _free_port()}
    a, b = (IpsecService(AsyncStore(engine), node=node, tun_factory=MemoryTun,
                         manage_routes=False, reload_interval=0.2, **ports) for node in "AB")
    running = [asyncio.create_task(a.run())]

    def end_a_lease_connection() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE application_name = 'sslvpn-ipsec A'"))

    try:
        assert await _until(lambda: [t.node for t in a.tunnel_status()] == ["A"], 10)
        first = a.tunnel("t1")
        end_a_lease_connection()
        assert await _until(lambda: first.stopped, 5)
        assert await _until(lambda: [t.node for t in a.tunnel_status()] == ["A"], 5)
        assert a.tunnel("t1") is not first

        running.append(asyncio.create_task(b.run()))
        await asyncio.wait_for(b.ready.wait(), 10)
        assert b.tunnel_status() == []
        end_a_lease_connection()
        assert await _until(lambda: [t.node for t in b.tunnel_status()] == ["B"], 10)
        assert await _until(lambda: a.tunnel_status() == [], 5)
        await asyncio.sleep(0.6)  # three rounds of A trying again
        assert a.tunnel_status() == [] and [t.node for t in b.tunnel_status()] == ["B"]
    finally:
        for task in running:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
