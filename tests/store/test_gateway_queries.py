"""The gateway's queries on SQLite and PostgreSQL: standings, leases, batched accounting."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, delete

from sslvpn.store import NotFoundError, RejectedError, db, gateway_queries, queries
from sslvpn.store.gateway_queries import (
    LeaseStored,
    Record,
    SessionCounted,
    SessionEnded,
    SessionOpened,
    Standing,
)
from sslvpn.store.models import AddressLease

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _certificate(engine: Engine, serial: str, user: str | None, kind: str = "client") -> None:
    with db.session(engine) as s:
        user_id = None
        if user is not None:
            try:
                user_id = queries.get_user(s, name=user).id
            except NotFoundError:
                user_id = queries.create_user(s, name=user).id
        queries.add_certificate(s, serial=serial, subject_cn=serial, kind=kind, not_before=T0,
                                not_after=T0 + timedelta(days=1), fingerprint_sha256="00",
                                cert_pem="-", user_id=user_id, device=f"dev-{serial}")


def test_standings_read_certificate_and_owner(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _certificate(engine, "a1", "alice")
    _certificate(engine, "b2", None)
    _certificate(engine, "c3", "carol", kind="server")
    with db.session(engine) as s:
        queries.set_user_disabled(s, name="carol", disabled=True)
    monkeypatch.setattr(gateway_queries, "CHUNK", 2)  # several IN lists
    with db.session(engine) as s:
        found = gateway_queries.standings(s, serials=["A1", "b2", "c3", "ff", "a1"])
    assert found == {
        "a1": Standing("client", "valid", "dev-a1", "alice", False),
        "b2": Standing("client", "valid", "dev-b2", None, False),
        "c3": Standing("server", "valid", "dev-c3", "carol", True),
    }


def test_the_sweep_query_returns_only_refused_and_unknown(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _certificate(engine, "a1", "alice")
    _certificate(engine, "b2", None)
    _certificate(engine, "c3", "carol", kind="server")
    _certificate(engine, "d4", "alice")
    _certificate(engine, "e5", "erin")
    with db.session(engine, write=True) as s:
        queries.mark_revoked(s, serial="d4", reason="keyCompromise", at=T0)
        queries.set_user_disabled(s, name="erin", disabled=True)
    monkeypatch.setattr(gateway_queries, "CHUNK", 2)
    with db.session(engine) as s:
        found = gateway_queries.not_in_good_standing(
            s, serials=["a1", "B2", "c3", "d4", "e5", "ff", "a1"], now=T0)
    assert found == {
        "b2": Standing("client", "valid", "dev-b2", None, False),
        "c3": Standing("server", "valid", "dev-c3", "carol", False),
        "d4": Standing("client", "revoked", "dev-d4", "alice", False),
        "e5": Standing("client", "valid", "dev-e5", "erin", True),
        "ff": None,
    }
    with db.session(engine) as s:
        assert gateway_queries.not_in_good_standing(s, serials=["a1"], now=T0) == {}


def test_a_renewed_certificate_works_until_its_renewal_connects(engine: Engine) -> None:
    """During the overlap both certificates are in good standing; the renewal's first
    session (written by the accounting thread) ends the overlap, and from then the sweep
    refuses the old one. A session of the old one does not end anything."""
    _certificate(engine, "a1", "alice")
    _certificate(engine, "a2", "alice")
    until = T0 + timedelta(days=7)
    with db.session(engine, write=True) as s:
        queries.begin_overlap(s, serial="a1", by_serial="a2", until=until)

    def refused(at: datetime) -> set[str]:
        with db.session(engine) as s:
            return set(gateway_queries.not_in_good_standing(s, serials=["a1", "a2"], now=at))

    assert refused(T0) == set()
    assert refused(until) == {"a1"}  # the overlap's end
    later = T0 + timedelta(hours=1)
    with db.session(engine, write=True) as s:
        gateway_queries.write_records(s, records=[_opened("s1", serial="a1")],
                                      gateway_name="default", now=later)
    assert refused(later) == set()
    with db.session(engine, write=True) as s:
        gateway_queries.write_records(
            s, records=[_opened("s2", serial="a2", address="10.8.0.3")],
            gateway_name="default", now=later)
    assert refused(later) == {"a1"}
    with db.session(engine) as s:
        assert [c.serial for c in queries.overlaps_due(s, now=later)] == ["a1"]
        found = gateway_queries.standings(s, serials=["a1"])
    assert found["a1"].overlap_until == later


def _opened(session_id: str, serial: str = "a1", address: str = "10.8.0.2") -> SessionOpened:
    return SessionOpened(session_id, "alice", serial, "198.18.0.2:5000", address, "udp", T0,
                         "X25519MLKEM768", "2.4.12", "linux", None)


def test_session_records_keep_each_sessions_order(engine: Engine) -> None:
    records: list[Record] = [
        _opened("udp-1"), _opened("udp-2", "B2", "10.8.0.3"), SessionCounted("udp-1", 5, 6),
        SessionEnded("udp-1", T0 + timedelta(minutes=1), "kicked", 7, 8),
        _opened("udp-1"),  # the id comes back after it ended
        SessionCounted("udp-1", 1, 1), SessionCounted("udp-2", 3, 4),
        SessionCounted("udp-9", 1, 1), SessionEnded("udp-9", T0, "never opened", 0, 0),
    ]
    with db.session(engine) as s:
        gateway_queries.write_records(s, records=records, gateway_name="gw", now=T0)
    with db.session(engine) as s:
        rows = queries.list_session_records(s)
    assert {r.tls_group for r in rows} == {"X25519MLKEM768"}
    assert {(r.client_version, r.client_platform, r.client_gui) for r in rows} == {
        ("2.4.12", "linux", None)}
    got = sorted((r.id, r.session_id, r.certificate_serial, r.gateway_name, r.bytes_in,
                  r.bytes_out, r.disconnect_reason, r.disconnected_at) for r in rows)
    assert [row[1:] for row in got] == [
        ("udp-1", "a1", "gw", 7, 8, "kicked", T0 + timedelta(minutes=1)),
        ("udp-2", "b2", "gw", 3, 4, None, None),
        ("udp-1", "a1", "gw", 1, 1, None, None),
    ]


def test_a_reconnect_in_one_batch_ends_the_old_session_before_the_new_one_opens(
    engine: Engine,
) -> None:
    """The client's old session and its new one share the address (its lease); one live
    session per address is a unique index, so the end must be written first."""
    with db.session(engine) as s:
        gateway_queries.write_records(s, records=[_opened("udp-1")], gateway_name="gw",
                                      now=T0, node="a")
    batch: list[Record] = [SessionEnded("udp-1", T0, "connection lost", 1, 2),
                           _opened("udp-2"), SessionEnded("udp-2", T0, "kicked", 3, 4),
                           _opened("udp-3")]
    with db.session(engine) as s:
        gateway_queries.write_records(s, records=batch[:3], gateway_name="gw", now=T0,
                                      node="a")
        gateway_queries.write_records(s, records=batch[3:], gateway_name="gw", now=T0,
                                      node="a")
    with db.session(engine) as s:
        rows = queries.list_session_records(s)
    assert sorted((r.session_id, r.node, r.disconnect_reason) for r in rows) == [
        ("udp-1", "a", "connection lost"), ("udp-2", "a", "kicked"), ("udp-3", "a", None)]


def test_no_address_is_live_in_two_records(engine: Engine) -> None:
    with db.session(engine) as s:
        gateway_queries.write_records(s, records=[_opened("udp-1")], gateway_name="gw", now=T0)
    with pytest.raises(RejectedError), db.session(engine) as s:
        gateway_queries.write_records(s, records=[_opened("udp-2", "b2")], gateway_name="gw",
                                      now=T0)


def _leases(engine: Engine) -> dict[str, str]:
    with db.session(engine) as s:
        return gateway_queries.lease_map(s)


def test_batched_leases_end_like_one_by_one(engine: Engine) -> None:
    rng = random.Random(6)  # noqa: S311 (reproducible test data)
    serials = [f"{n:02x}" for n in range(6)]
    addresses = [f"10.8.0.{n}" for n in range(2, 8)]
    for _ in range(40):
        start = dict(zip(rng.sample(serials, 3), rng.sample(addresses, 3), strict=True))
        changes = [LeaseStored(rng.choice(serials), rng.choice(addresses))
                   for _ in range(rng.randint(1, 8))]
        results = []
        for batched in (False, True):
            with db.session(engine) as s:
                s.execute(delete(AddressLease))
                for serial, address in start.items():
                    queries.set_lease(s, serial=serial, address=address, now=T0)
            with db.session(engine) as s:
                if batched:
                    gateway_queries.write_records(s, records=changes, gateway_name="gw",
                                                  now=T0)
                else:
                    for change in changes:
                        queries.set_lease(s, serial=change.serial, address=change.address)
            results.append(_leases(engine))
        assert results[0] == results[1], (start, changes)


def test_the_node_sweep_finds_open_sessions_whose_certificate_may_not_connect(
    engine: Engine,
) -> None:
    for serial, user in (("a1", "alice"), ("b2", "bob"), ("c3", "carol"), ("d4", "dave")):
        _certificate(engine, serial, user)
    with db.session(engine) as s:
        queries.mark_revoked(s, serial="b2", reason="keyCompromise", at=T0)
        queries.set_user_disabled(s, name="carol", disabled=True)
    opened = [SessionOpened(f"udp-{serial}", "x", serial, "198.18.0.2:1", f"10.8.0.{i + 2}",
                            "udp", T0) for i, serial in enumerate(("a1", "b2", "c3", "ee"))]
    with db.session(engine) as s:
        gateway_queries.write_records(s, records=opened, gateway_name="default", now=T0)
        gateway_queries.write_records(s, records=[SessionOpened(
            "udp-other", "x", "b2", "198.18.0.3:1", "10.8.1.2", "udp", T0)],
            gateway_name="default", now=T0, node="a")  # another node's session
        gateway_queries.write_records(s, records=[SessionOpened(
            "udp-d4", "x", "d4", "198.18.0.4:1", "10.8.0.9", "udp", T0),
            SessionEnded("udp-d4", T0, "gone", 0, 0)], gateway_name="default", now=T0)
    with db.session(engine) as s:
        refused = gateway_queries.refused_open_sessions(s, gateway_name="default", node=None,
                                                        now=T0)
    assert sorted(refused) == ["udp-b2", "udp-c3", "udp-ee"]
    assert refused["udp-b2"] is not None and refused["udp-b2"].status == "revoked"
    assert refused["udp-c3"] is not None and refused["udp-c3"].user_disabled
    assert refused["udp-ee"] is None  # unknown certificate


def test_a_certificates_older_open_sessions_of_one_node_are_found_replaced(
    engine: Engine,
) -> None:
    """A certificate open twice on one node (it came back on another worker): every record
    but the newest is replaced, on ties the later record; closed records, other nodes and
    other certificates do not count."""
    def opened(session_id: str, serial: str, address: str, at: datetime) -> SessionOpened:
        return SessionOpened(session_id, "x", serial, "198.18.0.2:1", address, "udp", at)

    later = T0 + timedelta(seconds=1)
    with db.session(engine) as s:
        gateway_queries.write_records(s, gateway_name="default", now=T0, node="n1", records=[
            opened("udp-a1-old", "a1", "10.8.0.2", T0),
            opened("udp-a1-new", "a1", "10.8.0.130", later),
            opened("udp-b2-first", "b2", "10.8.0.3", T0),
            opened("udp-b2-second", "b2", "10.8.0.131", T0),
            opened("udp-c3", "c3", "10.8.0.4", T0),
            opened("udp-d4-gone", "d4", "10.8.0.5", later),
            SessionEnded("udp-d4-gone", later, "gone", 0, 0),
            opened("udp-d4", "d4", "10.8.0.132", T0)])
        gateway_queries.write_records(s, gateway_name="default", now=T0, node="n2", records=[
            opened("udp-c3-n2", "c3", "10.8.1.2", later)])
    with db.session(engine) as s:
        assert gateway_queries.replaced_open_sessions(
            s, gateway_name="default", node="n1") == ["udp-a1-old", "udp-b2-first"]
        assert gateway_queries.replaced_open_sessions(s, gateway_name="default",
                                                      node=None) == []
