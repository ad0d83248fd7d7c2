"""One fleet seen from anywhere, with real openvpn 2.6 clients on two `serve --node` hosts
(issue 10): every node's sessions are listed from the store with their node; a certificate
revoked through the *other* node's portal ends its session within 5 s (the NOTIFY path); a
revocation that sends no NOTIFY (a node that missed it) still ends its session through the
periodic sweep; a kick from the CLI and a disabled user end sessions on whichever node holds
them; a SIGKILLed node's session is ended once by the survivor ("node down"). Each end is
timed from the store's own stamps (revoked or asked at, ended at) or the test's clock.
Namespaces use the prefix ``fs`` (tests/interop/fleet.py) and are removed in finalizers.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
from sqlalchemy import text
from sqlmodel import select

from sslvpn.store import db, queries
from sslvpn.store.models import Certificate, VpnSessionRecord
from tests.interop.fleet import FleetClient, FleetLab, build_fleet, portal
from tests.netns import wait_until
from tests.pgcluster import PostgresCluster

pytestmark = pytest.mark.interop

END_LIMIT = 5.0  # seconds from a revocation (or kick) to the session's end, on any node
ADMIN_PASSWORD = "a-long-admin-password"
PER_NODE = 2
HEARTBEAT_TIMEOUT = 15  # the default at init
MAX_CLIENTS = 12


def _report(what: str) -> None:
    sys.stderr.write(f"\n[fleet-sessions] {what}\n")


@pytest.fixture(scope="module")
def fleet(postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[FleetLab]:
    with build_fleet(tmp_path_factory.mktemp("fleet-sessions"), postgres, prefix="fs") as lab:
        lab.cli("user", "add", "root", "--admin", "--password-stdin",
                stdin=ADMIN_PASSWORD + "\n")
        yield lab


def _record(fleet: FleetLab, serial: str) -> VpnSessionRecord | None:
    """The newest session record of the certificate."""
    engine = fleet.engine()
    try:
        with db.session(engine, write=False) as s:
            rows = s.exec(select(VpnSessionRecord)
                          .where(VpnSessionRecord.certificate_serial == serial)).all()
    finally:
        engine.dispose()
    return max(rows, key=lambda r: r.id or 0) if rows else None


def _recorded(fleet: FleetLab, serial: str) -> bool:
    return _record(fleet, serial) is not None


def _revoked_at(fleet: FleetLab, serial: str) -> datetime:
    engine = fleet.engine()
    try:
        with db.session(engine, write=False) as s:
            row = s.exec(select(Certificate).where(Certificate.serial == serial)).one()
    finally:
        engine.dispose()
    assert row.revoked_at is not None
    return row.revoked_at


def _spread(fleet: FleetLab) -> dict[str, list[FleetClient]]:
    """Alice's clients until each node holds PER_NODE of them (remote-random decides)."""
    by_node: dict[str, list[FleetClient]] = {name: [] for name in fleet.nodes}
    while min(map(len, by_node.values())) < PER_NODE:
        assert len(fleet.clients) < MAX_CLIENTS, f"clients did not spread: {by_node}"
        client = fleet.start_client("alice", f"dev{len(fleet.clients)}")
        client.wait_connected()
        assert wait_until(functools.partial(_recorded, fleet, client.serial), 10)
        record = _record(fleet, client.serial)
        assert record is not None and record.node is not None
        by_node[record.node].append(client)
    return by_node


def _ended(fleet: FleetLab, client: FleetClient) -> VpnSessionRecord:
    """The client's session record once it is closed (bounded wait: END_LIMIT)."""
    def closed() -> bool:
        record = _record(fleet, client.serial)
        return record is not None and record.disconnected_at is not None

    assert wait_until(closed, END_LIMIT), client.serial
    record = _record(fleet, client.serial)
    assert record is not None and record.disconnected_at is not None
    return record


def test_every_nodes_sessions_are_seen_and_ended_from_anywhere(fleet: FleetLab) -> None:
    by_node = _spread(fleet)
    listed = json.loads(fleet.cli("sessions", "--json").output)["sessions"]
    assert sorted((s["certificate_serial"], s["node"]) for s in listed) == sorted(
        (c.serial, node) for node, clients in by_node.items() for c in clients)
    (a1, a2), (b1, b2) = by_node["a"][:2], by_node["b"][:2]

    # a certificate whose session is on node a, revoked on node b's portal: NOTIFY
    started = time.monotonic()
    page = portal(fleet, "b", "root", "revoke", a1.serial, "keyCompromise",
                  stdin=ADMIN_PASSWORD + "\n")
    assert "Revoked" in page
    record = _ended(fleet, a1)
    seen = time.monotonic() - started
    notified = _seconds_after(record, _revoked_at(fleet, a1.serial))
    assert (record.node, record.disconnect_reason) == ("a", "certificate revoked")
    assert notified < END_LIMIT

    # a revocation that no node hears of (no NOTIFY): the sweep on node b still ends it
    engine = fleet.engine()
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE certificate SET status = 'revoked', "
                                    "revoked_at = now() WHERE serial = :serial"),
                               {"serial": b1.serial})
    finally:
        engine.dispose()
    record = _ended(fleet, b1)
    swept = _seconds_after(record, _revoked_at(fleet, b1.serial))
    assert (record.node, record.disconnect_reason) == ("b", "certificate revoked")
    assert swept < END_LIMIT

    # a kick from the CLI against the shared database, for a session on node a
    started = time.monotonic()
    assert fleet.cli("kick", _session_id(fleet, a2)).output == "ended 1 session\n"
    kicked = time.monotonic() - started
    assert _ended(fleet, a2).disconnect_reason == "kicked by admin"

    # disabling the user ends what is left of hers, on node b
    started = time.monotonic()
    fleet.cli("user", "disable", "alice")
    record = _ended(fleet, b2)
    disabled = time.monotonic() - started
    assert (record.node, record.disconnect_reason) == ("b", "user disabled")
    assert json.loads(fleet.cli("sessions", "--json").output)["sessions"] == []
    _report(f"revoked on b's portal, ended on a: {notified * 1000:.0f} ms (stamps), "
            f"{seen:.2f} s seen by the test; no NOTIFY, ended by b's sweep: "
            f"{swept * 1000:.0f} ms; CLI kick (ended in the store): {kicked:.2f} s; "
            f"user disabled: {disabled:.2f} s")


def _seconds_after(record: VpnSessionRecord, at: datetime) -> float:
    assert record.disconnected_at is not None
    return (record.disconnected_at - at).total_seconds()


def _session_id(fleet: FleetLab, client: FleetClient) -> str:
    record = _record(fleet, client.serial)
    assert record is not None and record.disconnected_at is None
    return record.session_id


def test_a_killed_nodes_sessions_are_ended_once_by_the_survivor(fleet: FleetLab) -> None:
    """SIGKILL the node holding a session: once its heartbeat is older than the timeout the
    survivor ends the session in the store ("node down") exactly once and frees its lease."""
    client = fleet.start_client("dave", "laptop")
    client.wait_connected()
    assert wait_until(functools.partial(_recorded, fleet, client.serial), 10)
    record = _record(fleet, client.serial)
    assert record is not None and record.node is not None
    victim = record.node
    [survivor] = [name for name in fleet.nodes if name != victim]
    started = time.monotonic()
    fleet.nodes[victim].kill()

    def reaped() -> bool:
        return any(r.disconnect_reason == "node down" for r in _records(fleet))

    assert wait_until(reaped, HEARTBEAT_TIMEOUT + 10)
    took = time.monotonic() - started
    down = [r for r in _records(fleet) if r.disconnect_reason == "node down"]
    assert [(r.session_id, r.node) for r in down] == [(record.session_id, victim)]
    nodes = {n["name"]: n for n in json.loads(fleet.cli("node", "list", "--json").output)}
    assert (nodes[victim]["state"], nodes[victim]["sessions"]) == ("down", 0)
    engine = fleet.engine()
    try:
        with db.session(engine, write=False) as s:
            audit = queries.list_audit(s, action="node.down")
    finally:
        engine.dispose()
    assert [(e.actor, e.target, e.detail) for e in audit] == [
        (f"node {survivor}", victim, "sessions_ended=1")]
    _report(f"node {victim} SIGKILLed: its session ended by {survivor} after {took:.1f} s "
            f"(heartbeat timeout {HEARTBEAT_TIMEOUT} s)")
    fleet.nodes[victim].start()


def _records(fleet: FleetLab) -> list[VpnSessionRecord]:
    engine = fleet.engine()
    try:
        with db.session(engine, write=False) as s:
            return list(s.exec(select(VpnSessionRecord)).all())
    finally:
        engine.dispose()
