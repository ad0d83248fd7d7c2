"""Failover in a two-node fleet with real openvpn 2.6 clients (issue 10).

Clients with profiles from `sslvpn profile` (every node's remotes, ``remote-random``,
``server-poll-timeout``) spread over nodes a and b, and each pings the VPC host. The node
holding a client is SIGKILLed: each of its clients must reconnect through the other node and
ping the VPC host again within the pushed ``ping-restart`` plus one dead remote and a
connect (30 s, the issue's figure); the time from the kill to the first reply is measured per
client. Throughout, the store never shows one address in two open sessions; once the dead
node's heartbeat is older than the timeout, `sslvpn sessions` no longer shows its sessions,
which the survivor ended in the store ("node down") once. A portal login
made on node a's portal is accepted by node b's and by node a's after a restart (portal
sessions live in the store). Last, a node's host vanishes (every packet dropped, no RST):
its clients are back through the other node within 30 s too. Namespaces use the prefix
``ff`` (tests/interop/fleet.py) and are removed in finalizers.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime

import pytest

from sslvpn.store import db, node_queries, queries
from tests.interop.fleet import (
    AddressWatch,
    FleetClient,
    FleetLab,
    build_fleet,
    open_sessions,
    portal,
)
from tests.netns import wait_until
from tests.pgcluster import PostgresCluster

pytestmark = pytest.mark.interop

FAILOVER_LIMIT = 30.0  # seconds from the kill to the first reply through the other node
MIN_PER_NODE = 2
MAX_CLIENTS = 10
HEARTBEAT_TIMEOUT = 15  # the default: a node this long without a heartbeat is down
CAROL_PASSWORD = "carol-portal-pw-0123456789"  # noqa: S105 (a test credential)


def _report(what: str) -> None:
    sys.stderr.write(f"\n[fleet-failover] {what}\n")


@pytest.fixture(scope="module")
def fleet(postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[FleetLab]:
    with build_fleet(tmp_path_factory.mktemp("fleet"), postgres, prefix="ff") as lab:
        yield lab


def _node_of(fleet: FleetLab, serial: str, since: datetime | None = None) -> str | None:
    """The node holding the certificate's newest open session (opened after ``since``); a
    dead node's records may stay open beside it until a survivor ends them."""
    records = sorted((r for r in open_sessions(fleet) if r.certificate_serial == serial
                      and (since is None or r.connected_at > since)),
                     key=lambda r: r.connected_at)
    return records[-1].node if records else None


def _placed(fleet: FleetLab, serial: str) -> str:
    """The node a connected client's session was recorded on (bounded wait)."""
    assert wait_until(lambda: _node_of(fleet, serial) is not None, 10)
    node = _node_of(fleet, serial)
    assert node is not None
    return node


def _spread_clients(fleet: FleetLab) -> dict[str, list[FleetClient]]:
    """Start clients until each node holds at least MIN_PER_NODE (the profile's
    remote-random decides where each lands)."""
    by_node: dict[str, list[FleetClient]] = {name: [] for name in fleet.nodes}
    while min(map(len, by_node.values())) < MIN_PER_NODE:
        assert len(fleet.clients) < MAX_CLIENTS, f"clients did not spread: {by_node}"
        client = fleet.start_client("alice", f"laptop{len(fleet.clients)}")
        client.wait_connected()
        by_node[_placed(fleet, client.serial)].append(client)
    return by_node


def _assert_back_through(fleet: FleetLab, moved: list[FleetClient], survivor: str,
                         failed_at: float, how: str) -> None:
    """Each client pings the VPC host again within FAILOVER_LIMIT, through ``survivor``."""

    def back(client: FleetClient) -> bool:
        return any(t > failed_at for t in client.replies())

    assert wait_until(lambda: all(back(c) for c in moved), FAILOVER_LIMIT + 15)
    times = [min(t for t in c.replies() if t > failed_at) - failed_at for c in moved]
    _report(f"{how}: failover per client (s): " + ", ".join(f"{t:.1f}" for t in times)
            + f"; median {statistics.median(times):.1f}, max {max(times):.1f}")
    since = datetime.fromtimestamp(failed_at).astimezone()
    for client in moved:
        assert _node_of(fleet, client.serial, since=since) == survivor
    assert max(times) <= FAILOVER_LIMIT


def _shown_nodes(fleet: FleetLab) -> list[str | None]:
    """The node of each live session `sslvpn sessions --json` shows."""
    return [row["node"] for row in json.loads(fleet.cli("sessions", "--json").output)["sessions"]]


def _heartbeat(fleet: FleetLab, node: str) -> datetime | None:
    engine = fleet.engine()
    try:
        with db.session(engine, write=False) as s:
            return node_queries.get_node(s, name=node).heartbeat_at
    finally:
        engine.dispose()


def _assert_ended_once(fleet: FleetLab, victim: str, survivor: str, doomed: list[str],
                       killed_at: float) -> None:
    """`sessions` stops showing the dead node's sessions once its heartbeat is older than
    the timeout; the survivor ended each in the store ("node down") and said so once, and
    two heartbeats later still only once."""
    assert wait_until(lambda: victim not in _shown_nodes(fleet), HEARTBEAT_TIMEOUT + 15)
    beats = {_heartbeat(fleet, survivor)}

    def two_more_beats() -> bool:
        beats.add(_heartbeat(fleet, survivor))
        return len(beats) >= 3

    assert wait_until(two_more_beats, 30, interval=0.5)
    engine = fleet.engine()
    try:
        with db.session(engine, write=False) as s:
            ended = [r for r in queries.list_session_records(s, open_only=False)
                     if r.session_id in doomed]
            downs = [e for e in queries.list_audit(s, action="node.down") if e.target == victim]
    finally:
        engine.dispose()
    assert sorted(r.session_id for r in ended) == sorted(doomed)
    assert {r.disconnect_reason for r in ended} == {"node down"}
    [down] = downs
    assert (down.actor, down.detail) == (f"node {survivor}", f"sessions_ended={len(doomed)}")
    after = max(r.disconnected_at for r in ended if r.disconnected_at).timestamp() - killed_at
    _report(f"node down: {len(doomed)} sessions of {victim} ended once by {survivor}, "
            f"{after:.1f} s after the kill")


def test_clients_of_a_killed_node_are_back_through_the_other_within_30_s(
    fleet: FleetLab,
) -> None:
    by_node = _spread_clients(fleet)
    for client in fleet.clients:
        client.start_pinging()
    for client in fleet.clients:
        assert wait_until(lambda c=client: len(c.replies()) >= 2, 10), client.ping_log
    _report(f"clients per node: { {n: len(c) for n, c in by_node.items()} }")
    watch = AddressWatch(fleet)
    victim, survivor = "a", "b"
    doomed = [r.session_id for r in open_sessions(fleet) if r.node == victim]
    assert len(doomed) == len(by_node[victim])
    try:
        killed_at = fleet.nodes[victim].kill()
        _assert_back_through(fleet, by_node[victim], survivor, killed_at, "SIGKILL")
        for client in by_node[survivor]:  # the survivor's own clients never left
            assert any(t > killed_at for t in client.replies())
        _assert_ended_once(fleet, victim, survivor, doomed, killed_at)
    finally:
        watch.stop()
    assert watch.samples > 10
    assert watch.doubled == []
    fleet.nodes[victim].start()  # the next test finds both nodes up


def test_a_portal_login_on_node_a_is_accepted_by_node_b_and_survives_a_restart_of_a(
    fleet: FleetLab,
) -> None:
    fleet.cli("user", "add", "carol", "--password-stdin", stdin=CAROL_PASSWORD + "\n")
    cookie = portal(fleet, "a", "carol", "cookie", stdin=CAROL_PASSWORD + "\n").strip()
    assert portal(fleet, "b", "-", "landing", cookie, "/devices").strip() == "/devices"
    fleet.nodes["a"].kill()
    fleet.nodes["a"].start()
    assert portal(fleet, "a", "-", "landing", cookie, "/devices").strip() == "/devices"
    assert portal(fleet, "a", "-", "landing", "not-a-session", "/devices").strip() == "/login"


def test_clients_of_a_vanished_host_are_back_through_the_other_within_30_s(
    fleet: FleetLab,
) -> None:
    """A host that goes silent (power, network) sends no RST: every client of it, over UDP
    or TCP, waits for its ping-restart and for its retry of the dead node to time out."""
    holders = {client.serial: _node_of(fleet, client.serial) for client in fleet.clients}
    victim = Counter(holders.values()).most_common(1)[0][0]
    assert victim is not None
    [survivor] = [name for name in fleet.nodes if name != victim]
    moved = [client for client in fleet.clients if holders[client.serial] == victim]
    now = time.time()
    for client in fleet.clients:
        assert wait_until(lambda c=client: any(t > now for t in c.replies()), 10), client.ping_log
    cut_at = fleet.nodes[victim].vanish()
    try:
        _assert_back_through(fleet, moved, survivor, cut_at, "vanished host")
    finally:
        fleet.nodes[victim].reappear()
