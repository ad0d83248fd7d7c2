"""StorePolicy against a real SQLite store: what the gateway sees after CLI/portal changes."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, event
from sqlmodel import Session

from client_profiles import accounts
from sslvpn.runtime.policy import (
    KNOWN_FRESH,
    KNOWN_KEPT,
    Authorization,
    LeaseStored,
    SessionCounted,
    SessionEnded,
    SessionOpened,
    StorePolicy,
)
from sslvpn.store import StoreError, StoreUnavailable, access_queries, db, gateway_queries, queries
from sslvpn.store.async_store import AsyncStore
from sslvpn.store.models import GatewaySettings


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = db.open_engine(f"sqlite:///{tmp_path / 'sslvpn.db'}")
    db.upgrade(engine)
    now = datetime.now(UTC)
    with db.session(engine) as s:
        alice = queries.create_user(s, name="alice")
        queries.create_user(s, name="bob")
        for serial, kind, user_id in (("a1", "client", alice.id), ("5e", "server", None),
                                      ("a2", "client", alice.id)):
            queries.add_certificate(
                s, serial=serial, subject_cn="x", kind=kind, not_before=now,
                not_after=now + timedelta(days=1), fingerprint_sha256="00", cert_pem="-",
                user_id=user_id, device="laptop",
            )
    return engine


async def test_authorize_follows_store_changes(engine: Engine) -> None:
    policy = StorePolicy(AsyncStore(engine))
    auth = await policy.authorize("a1")
    assert (auth.user, auth.device, auth.refusal) == ("alice", "laptop", None)
    assert (await policy.authorize("5e")).refusal == "not a client certificate"
    assert (await policy.authorize("77")).refusal == "certificate unknown"
    assert await policy.unauthorized({"a1", "a2", "77"}) == {"77": "certificate unknown"}
    with db.session(engine) as s:
        queries.mark_revoked(s, serial="a1", reason="keyCompromise", at=datetime.now(UTC))
    assert (await policy.authorize("a1")).refusal == "certificate revoked"
    with db.session(engine) as s:
        queries.set_user_disabled(s, name="alice", disabled=True)
    assert await policy.unauthorized({"a1", "a2"}) == {"a1": "certificate revoked",
                                                       "a2": "user disabled"}
    assert await policy.unauthorized(set()) == {}


async def test_a_users_session_limit_counts_every_nodes_live_sessions(engine: Engine) -> None:
    """alice holds two devices (a1, a2): by default each may have its session; with her
    limit at one, a2 is refused while a1's session is open anywhere in the fleet, and a1's
    own reconnection is not (its new session replaces the old)."""
    policy = StorePolicy(AsyncStore(engine))
    with db.session(engine, write=True) as s:
        gateway_queries.write_records(s, records=[_opened("s1", "a1")], gateway_name="default",
                                      now=datetime.now(UTC), node="other-node")
    assert (await policy.authorize("a2")).refusal is None
    accounts.set_limits(engine, name="alice", devices=None, sessions=1, actor="t")
    assert (await policy.authorize("a2")).refusal == "too many sessions (at most 1)"
    assert (await policy.authorize("a1")).refusal is None
    with db.session(engine, write=True) as s:
        gateway_queries.write_records(s, records=[_ended("s1", "gone")],
                                      gateway_name="default", now=datetime.now(UTC))
    assert (await policy.authorize("a2")).refusal is None


async def test_the_snapshot_admits_at_once_only_what_a_fresh_read_admitted(
        engine: Engine) -> None:
    """`admitted_now` answers from the last reads (no store round trip) only for a
    certificate a read at most KNOWN_FRESH old admitted with no session limit; a refresh
    follows revocations and new limits, a kick forgets, an unknown or refused certificate
    always waits for `authorize`."""
    clock = [100.0]
    store = AsyncStore(engine)
    policy = StorePolicy(store, monotonic=lambda: clock[0])
    assert policy.admitted_now("a1") is None  # never read: wait for the store
    await policy.authorize("A1")
    await policy.authorize("5e")
    await policy.authorize("77")
    assert policy.admitted_now("a1") == Authorization("alice", "laptop")
    assert policy.admitted_now("5e") is None and policy.admitted_now("77") is None
    clock[0] += KNOWN_FRESH + 0.1
    assert policy.admitted_now("a1") is None  # too old: wait for a read
    await policy.refresh_admissions()
    assert policy.admitted_now("a1") == Authorization("alice", "laptop")
    with db.session(engine) as s:
        queries.mark_revoked(s, serial="a1", reason="keyCompromise", at=datetime.now(UTC))
    await policy.refresh_admissions()
    assert policy.admitted_now("a1") is None
    assert (await policy.authorize("a1")).refusal == "certificate revoked"
    assert policy.admitted_now("a1") is None
    await policy.authorize("a2")
    assert policy.admitted_now("a2") is not None
    accounts.set_limits(engine, name="alice", devices=None, sessions=2, actor="t")
    await policy.refresh_admissions()
    assert policy.admitted_now("a2") is None  # a limit counts the fleet's sessions: read
    accounts.set_limits(engine, name="alice", devices=None, sessions=None, actor="t")
    await policy.authorize("a2")
    policy.forget(user="alice")  # a kick of the user (disabled through the portal)
    assert policy.admitted_now("a2") is None
    await policy.authorize("a2")
    store._mark_down("a test", read=True)  # the store stopped answering: as before
    assert policy.admitted_now("a2") is None


async def test_the_snapshot_keeps_the_most_recently_presented_certificates(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounded (its refresh reads them all): the least recently presented one goes first,
    and one not presented for KNOWN_KEPT goes at the next refresh."""
    monkeypatch.setattr("sslvpn.runtime.policy.KNOWN_MAX", 1)
    clock = [100.0]
    policy = StorePolicy(AsyncStore(engine), monotonic=lambda: clock[0])
    await policy.authorize("a1")
    await policy.authorize("a2")
    assert policy.admitted_now("a1") is None and policy.admitted_now("a2") is not None
    clock[0] += KNOWN_KEPT + 1
    await policy.refresh_admissions()
    clock[0] = 100.0
    assert policy.admitted_now("a2") is None


def _opened(session_id: str, serial: str) -> SessionOpened:
    return SessionOpened(session_id, "alice", serial, "198.18.0.2:5000", "10.8.0.2", "udp",
                         datetime.now(UTC))


def _ended(session_id: str, reason: str) -> SessionEnded:
    return SessionEnded(session_id, datetime.now(UTC), reason, 10, 20)


async def test_leases_and_session_records(engine: Engine) -> None:
    policy = StorePolicy(AsyncStore(engine))
    assert await policy.stored_leases() == {}
    records = [LeaseStored("a1", "10.8.0.2"), _opened("udp-1", "a1"),
               LeaseStored("a2", "10.8.0.2"),  # taken over
               SessionCounted("udp-1", 1, 2), SessionCounted("gone", 1, 2),
               _ended("udp-1", "kicked by admin"), _ended("never-opened", "x"),
               _opened("udp-2", "a1")]
    await asyncio.to_thread(policy.record, records)  # the accounting worker's thread
    await asyncio.to_thread(policy.record, [])
    assert await policy.stored_leases() == {"a2": "10.8.0.2"}
    assert await policy.close_stale_records() == 1
    with db.session(engine) as s:
        rows = queries.list_session_records(s, certificate_serial="a1")
    by_id = {r.session_id: r for r in rows}
    assert by_id["udp-1"].disconnect_reason == "kicked by admin"
    assert (by_id["udp-1"].bytes_in, by_id["udp-1"].bytes_out) == (10, 20)
    assert by_id["udp-2"].disconnect_reason == "gateway restarted"
    assert by_id["udp-2"].gateway_name == "default"


async def test_records_are_never_written_on_the_loop(engine: Engine) -> None:
    with pytest.raises(RuntimeError, match="worker thread"):
        StorePolicy(AsyncStore(engine)).record([LeaseStored("a1", "10.8.0.2")])


def test_writes_retry_when_sqlite_says_locked(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = db.session
    failures = {"left": 2}

    @contextlib.contextmanager
    def flaky(e: Engine, *, write: bool | None = None) -> Iterator[Session]:
        with real(e, write=write) as s:
            yield s
            if failures["left"]:
                failures["left"] -= 1
                raise StoreError("database error: database is locked")

    monkeypatch.setattr("sslvpn.store.async_store.db.session", flaky)
    policy = StorePolicy(AsyncStore(engine))
    policy.record([LeaseStored("a1", "10.8.0.9")])  # third attempt succeeds
    with db.session(engine) as s:
        assert gateway_queries.lease_map(s) == {"a1": "10.8.0.9"}
    failures["left"] = 3
    with pytest.raises(StoreError, match="locked"):
        policy.record([LeaseStored("a2", "10.8.0.10")])
    calls: list[str] = []

    def disk_full(*_args: object, **_kwargs: object) -> None:
        calls.append("write_records")
        raise StoreError("database error: disk full")

    failures["left"] = 0
    monkeypatch.setattr("sslvpn.runtime.policy.gateway_queries.write_records", disk_full)
    with pytest.raises(StoreError, match="disk full"):
        policy.record([LeaseStored("a2", "10.8.0.10")])
    assert calls == ["write_records"]  # other errors are not retried


async def test_access_policy_is_read_again_only_when_its_revision_moved(engine: Engine) -> None:
    policy = StorePolicy(AsyncStore(engine))
    first = await policy.access_policy(None)
    assert first is not None and (first.revision, first.default) == (0, "all-vpc")
    assert await policy.access_policy(0) is None  # one row read, nothing reloaded
    by = access_queries.Actor("test")
    with db.session(engine) as s:
        access_queries.add_group(s, name="db", by=by)
        access_queries.change_groups(s, user="alice", add=["db"], by=by)
        access_queries.set_default(s, default="nothing", by=by)
    second = await policy.access_policy(0)
    assert second is not None and second.revision == 3
    assert (second.default, second.members) == ("nothing", {"alice": ["db"]})
    assert await policy.access_policy(3) is None


async def test_a_burst_of_admissions_against_a_healthy_store_is_answered(engine: Engine) -> None:
    """A burst of handshakes (here 100 at once, more than the store facade's threads and
    queue hold) is a busy store, not an absent one: every certificate gets its own answer,
    none is told to try again later."""
    policy = StorePolicy(AsyncStore(engine))
    serials = ["a1", "a2", "5e", "77"] * 25
    answers = await asyncio.gather(*(policy.authorize(serial) for serial in serials))
    expected = {"a1": None, "a2": None, "5e": "not a client certificate",
                "77": "certificate unknown"}
    assert [a.refusal for a in answers] == [expected[serial] for serial in serials]
    assert {a.user for a, serial in zip(answers, serials, strict=True) if serial == "a2"} \
        == {"alice"}
    # read together, each still has its owner's session limit (a1's own session not counted)
    with db.session(engine, write=True) as s:
        gateway_queries.write_records(s, records=[_opened("s1", "a1")], gateway_name="default",
                                      now=datetime.now(UTC), node="other-node")
    accounts.set_limits(engine, name="alice", devices=None, sessions=1, actor="t")
    answers = await asyncio.gather(*(policy.authorize(serial) for serial in serials))
    expected |= {"a2": "too many sessions (at most 1)"}
    assert [a.refusal for a in answers] == [expected[serial] for serial in serials]
    # her own limit unset: the gateway's applies
    accounts.set_limits(engine, name="alice", devices=None, sessions=None, actor="t")
    with db.session(engine, write=True) as s:
        queries.save_settings(s, settings=GatewaySettings(name="default",
                                                          max_sessions_per_user=1))
    answers = await asyncio.gather(*(policy.authorize(serial) for serial in serials))
    assert [a.refusal for a in answers] == [expected[serial] for serial in serials]


async def test_a_hung_store_still_tells_a_burst_to_retry_within_the_timeout(
        engine: Engine) -> None:
    """Reads that never return (a hung PostgreSQL): every handshake of a burst, also those
    asking while an earlier read hangs, hears StoreUnavailable (AUTH_FAILED,TEMP) within about
    the store's timeout, and the gateway admits again once the store answers."""
    release = threading.Event()

    def hang(*_args: object) -> None:
        release.wait(30)

    event.listen(engine, "before_cursor_execute", hang)
    store = AsyncStore(engine, timeout=0.5)
    policy = StorePolicy(store)
    started = time.monotonic()
    first = [asyncio.ensure_future(policy.authorize("a1")) for _ in range(50)]
    await asyncio.sleep(0.2)  # a read is under way and hangs
    later = [asyncio.ensure_future(policy.authorize("a2")) for _ in range(50)]
    outcomes = await asyncio.gather(*first, *later, return_exceptions=True)
    assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
    assert time.monotonic() - started < 0.5 + 0.2 + 1.0
    event.remove(engine, "before_cursor_execute", hang)
    release.set()
    deadline = time.monotonic() + 10
    while True:
        try:
            assert (await policy.authorize("a1")).refusal is None
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    await store.close()
