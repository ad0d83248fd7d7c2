"""One fleet seen from anywhere, in the store: live sessions with their node, ends asked of the
node holding a session, the NOTIFY that goes with them, and ending a down node's sessions
exactly once (on PostgreSQL, under two survivors at the same moment)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from sqlalchemy import Engine, text, update
from sqlmodel import Session, select

from sslvpn.runtime import fleet_sessions
from sslvpn.runtime.fleet_signal import listen_conninfo
from sslvpn.store import db, fleet_queries, gateway_queries, node_queries, queries
from sslvpn.store.models import AuditEntry, Node, utcnow

TIMEOUT = 15  # the heartbeat timeout


def _node(s: Session, name: str, pool: str, *, beat_ago: float | None) -> None:
    node_queries.add_node(s, name=name, public_addresses=[f"{name}.example.test"],
                          pool_cidr=pool)
    if beat_ago is not None:
        at = node_queries.database_now(s) - timedelta(seconds=beat_ago)
        s.connection().execute(update(Node).where(Node.name == name).values(heartbeat_at=at))


def _live(s: Session, session_id: str, node: str | None, address: str,
          serial: str = "a1", user: str = "alice") -> None:
    queries.open_session_record(
        s, session_id=session_id, gateway_name="default", node=node, user_name=user,
        certificate_serial=serial, real_address="198.51.100.7:5000", vpn_address=address,
        protocol="udp", connected_at=utcnow())
    queries.set_lease(s, serial=serial, address=address)


@pytest.fixture
def fleet(engine: Engine) -> Engine:
    """Node a beats, node b stopped beating a minute ago; each holds two sessions."""
    with db.session(engine, write=True) as s:
        _node(s, "a", "10.8.0.0/26", beat_ago=0)
        _node(s, "b", "10.8.0.64/26", beat_ago=60)
        _live(s, "udp-a1", "a", "10.8.0.2", "a1")
        _live(s, "udp-a2", "a", "10.8.0.3", "a2", user="bob")
        _live(s, "udp-b1", "b", "10.8.0.66", "b1")
        _live(s, "udp-b2", "b", "10.8.0.67", "b2", user="bob")
    return engine


def test_every_nodes_live_sessions_are_listed_with_their_node(fleet: Engine) -> None:
    with db.session(fleet, write=True) as s:
        queries.close_session_record(s, session_id="udp-a2", at=utcnow(), reason="exit")
    with db.session(fleet, write=False) as s:
        live = fleet_queries.live_sessions(s)
    assert sorted((r.session_id, r.node) for r, _ in live) == [
        ("udp-a1", "a"), ("udp-b1", "b"), ("udp-b2", "b")]


def test_fleet_sessions_carry_the_client_software_a_node_wrote(fleet: Engine) -> None:
    opened = gateway_queries.SessionOpened(
        "tcp-a9", "carol", "c9", "198.51.100.9:5000", "10.8.0.9", "tcp", utcnow(), None,
        "2.5.11", "win 10.0.19045", "OpenVPN-GUI 11.50")
    with db.session(fleet, write=True) as s:
        gateway_queries.write_records(s, records=[opened], gateway_name="default", now=utcnow(),
                                      node="a")
    with db.session(fleet, write=False) as s:
        listed = {i.session_id: i for i in fleet_sessions.fleet_sessions(s) or []}
    carol = listed["tcp-a9"]
    assert (carol.node, carol.client_version, carol.client_platform, carol.client_gui) == (
        "a", "2.5.11", "win 10.0.19045", "OpenVPN-GUI 11.50")
    assert listed["udp-a1"].client_version is None  # opened before it was recorded


def test_an_end_asked_reaches_only_the_node_holding_the_session(fleet: Engine) -> None:
    with db.session(fleet, write=True) as s:
        assert fleet_queries.request_end(s, session_id="udp-b1", reason="kicked by carol") == [
            "udp-b1"]
        assert sorted(fleet_queries.request_end(s, user_name="bob", reason="bye")) == [
            "udp-a2", "udp-b2"]
        assert fleet_queries.request_end(s, session_id="udp-none", reason="x") == []
    with db.session(fleet, write=False) as s:
        ids = ["udp-a1", "udp-a2", "udp-b1", "udp-b2"]
        assert fleet_queries.ended_elsewhere(s, node="a", session_ids=ids) == {"udp-a2": "bye"}
        assert fleet_queries.ended_elsewhere(s, node="b", session_ids=ids) == {
            "udp-b1": "kicked by carol", "udp-b2": "bye"}
        assert fleet_queries.ended_elsewhere(s, node=None, session_ids=ids) == {}


def test_a_down_nodes_sessions_are_ended_once_and_their_leases_freed(fleet: Engine) -> None:
    with db.session(fleet, write=True) as s:
        queries.set_lease(s, serial="b2", address="10.8.0.4")  # b2 reconnected to a already
        assert fleet_queries.end_down_nodes(s, survivor="a", timeout=TIMEOUT) == {"b": 2}
        assert fleet_queries.end_down_nodes(s, survivor="a", timeout=TIMEOUT) == {}
        assert fleet_queries.end_down_nodes(s, survivor="b", timeout=TIMEOUT) == {}  # a is up
    with db.session(fleet, write=False) as s:
        records = {r.session_id: r for r in queries.list_session_records(s)}
        assert {sid: r.disconnect_reason for sid, r in records.items()} == {
            "udp-a1": None, "udp-a2": None, "udp-b1": "node down", "udp-b2": "node down"}
        # b1's lease is free; b2's newer lease (on node a) is kept
        assert queries.leased_addresses(s) == {"10.8.0.2": "a1", "10.8.0.3": "a2",
                                               "10.8.0.4": "b2"}
        audit = queries.list_audit(s, action="node.down")
        assert [(e.actor, e.target, e.detail) for e in audit] == [
            ("node a", "b", "sessions_ended=2")]
        # node b, back, learns which of its sessions the fleet ended
        assert fleet_queries.ended_elsewhere(s, node="b", session_ids=["udp-b1"]) == {
            "udp-b1": "node down"}


def test_a_whole_nodes_wanted_ends_are_found_without_its_session_ids(fleet: Engine) -> None:
    with db.session(fleet, write=False) as s:
        assert fleet_queries.ends_wanted(s, node="b", since=None)[0] == {}
        _, before = fleet_queries.ends_wanted(s, node="b", since=None)
    with db.session(fleet, write=True) as s:
        fleet_queries.request_end(s, session_id="udp-a1", reason="kicked by carol")
        assert fleet_queries.end_down_nodes(s, survivor="a", timeout=TIMEOUT) == {"b": 2}
    with db.session(fleet, write=False) as s:
        assert fleet_queries.ends_wanted(s, node="a", since=before)[0] == {
            "udp-a1": "kicked by carol"}
        # node b, back, is told which of its sessions were ended as down since it last looked
        found, now = fleet_queries.ends_wanted(s, node="b", since=before)
        assert found == {"udp-b1": "node down", "udp-b2": "node down"}
        assert fleet_queries.ends_wanted(s, node="b", since=None)[0] == {}  # a first sweep
        assert fleet_queries.ends_wanted(s, node="b", since=now + timedelta(seconds=1))[0] == {}


def test_a_node_that_never_beat_is_down_and_the_single_node_is_never(engine: Engine) -> None:
    with db.session(engine, write=True) as s:
        _node(s, "a", "10.8.0.0/26", beat_ago=0)
        _node(s, "c", "10.8.0.128/26", beat_ago=None)
        _live(s, "udp-c1", "c", "10.8.0.130", "c1")
        _live(s, "udp-1", None, "10.8.0.200", "d1")  # the single implicit node's record
        assert fleet_queries.end_down_nodes(s, survivor="a", timeout=TIMEOUT) == {"c": 1}
    with db.session(engine, write=False) as s:
        assert [r.session_id for r in queries.list_session_records(s, open_only=True)] == [
            "udp-1"]


# PostgreSQL: two survivors at once, and the signal ------------------------------------


def _waiting_for_a_lock(engine: Engine, pid: int) -> bool:
    with engine.connect() as connection:
        row = connection.execute(text(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}).first()
    return row is not None and row[0] == "Lock"


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
def test_two_survivors_at_once_end_a_down_nodes_sessions_once(engine: Engine) -> None:
    """The rule alone, without the store's writer lock: two plain transactions run it at
    the same moment; the second waits for the first one's row locks, then finds the records
    closed, so every record, lease and audit entry changes once."""
    with db.session(engine, write=True) as s:
        _node(s, "a", "10.8.0.0/26", beat_ago=0)
        _node(s, "c", "10.8.0.128/26", beat_ago=0)
        _node(s, "b", "10.8.0.64/26", beat_ago=60)
        for n in range(20):
            _live(s, f"udp-b{n}", "b", f"10.8.0.{66 + n}", f"b{n}")
    first, second = Session(engine), Session(engine)
    results: dict[str, dict[str, int]] = {}
    try:
        results["a"] = fleet_queries.end_down_nodes(first, survivor="a", timeout=TIMEOUT)
        pid = second.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        racer = threading.Thread(target=lambda: results.__setitem__(
            "c", fleet_queries.end_down_nodes(second, survivor="c", timeout=TIMEOUT)))
        racer.start()
        deadline = time.monotonic() + 10
        while not _waiting_for_a_lock(engine, pid):  # c is blocked behind a's row locks
            assert time.monotonic() < deadline, "the second survivor never reached the rows"
            time.sleep(0.01)
        first.commit()
        racer.join(10)
        assert not racer.is_alive()
        second.commit()
    finally:
        first.close()
        second.close()
    assert results == {"a": {"b": 20}, "c": {}}
    with db.session(engine, write=False) as s:
        assert queries.list_session_records(s, open_only=True) == []
        assert queries.leased_addresses(s) == {}
        ended = s.exec(select(AuditEntry).where(AuditEntry.action == "node.down")).all()
        assert [(e.actor, e.detail) for e in ended] == [("node a", "sessions_ended=20")]


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
def test_two_survivors_through_the_store_end_the_sessions_once(engine: Engine) -> None:
    """The real path (each survivor's heartbeat transaction), started together many times."""
    with db.session(engine, write=True) as s:
        _node(s, "a", "10.8.0.0/26", beat_ago=0)
        _node(s, "c", "10.8.0.128/26", beat_ago=0)
        _node(s, "b", "10.8.0.64/26", beat_ago=60)
    for round_ in range(5):
        with db.session(engine, write=True) as s:
            for n in range(10):
                _live(s, f"udp-{round_}-{n}", "b", f"10.8.0.{66 + n}", f"b{n}")
        start = threading.Barrier(2)
        results: list[dict[str, int]] = []

        threads = [threading.Thread(target=_survivor, args=(engine, n, start, results))
                   for n in ("a", "c")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert sorted(results, key=len) == [{}, {"b": 10}]
    with db.session(engine, write=False) as s:
        assert len(queries.list_audit(s, action="node.down")) == 5


def _survivor(engine: Engine, name: str, start: threading.Barrier,
              results: list[dict[str, int]]) -> None:
    start.wait()
    with db.session(engine, write=True) as s:
        results.append(fleet_queries.end_down_nodes(s, survivor=name, timeout=TIMEOUT))


@pytest.fixture
def listening(migrated_postgres: Engine) -> Iterator[psycopg.Connection]:
    conninfo = listen_conninfo(migrated_postgres.url)
    assert conninfo is not None
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(f"LISTEN {node_queries.FLEET_CHANNEL}")
        yield connection


def _signals(connection: psycopg.Connection) -> list[str]:
    return [n.payload for n in connection.notifies(timeout=0.5, stop_after=10)]


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
def test_revocations_disabled_users_and_kicks_signal_the_fleet_at_commit(
    engine: Engine, listening: psycopg.Connection
) -> None:
    with db.session(engine, write=True) as s:
        user = queries.create_user(s, name="alice")
        _live(s, "udp-1", None, "10.8.0.2", "a1")
        queries.add_certificate(
            s, serial="a1", subject_cn="alice", kind="client", user_id=user.id,
            not_before=utcnow(),
            not_after=utcnow() + timedelta(days=1), fingerprint_sha256="00", cert_pem="x")
    assert _signals(listening) == []
    with pytest.raises(RuntimeError), db.session(engine, write=True) as s:
        queries.mark_revoked(s, serial="a1", reason="keyCompromise", at=utcnow())
        raise RuntimeError("rolled back: nothing is signalled")
    assert _signals(listening) == []
    with db.session(engine, write=True) as s:
        queries.mark_revoked(s, serial="a1", reason="keyCompromise", at=utcnow())
        queries.set_user_disabled(s, name="alice", disabled=True)
        fleet_queries.request_end(s, session_id="udp-1", reason="kicked")
    assert _signals(listening) == ["certificate revoked", "user disabled", "end"]
