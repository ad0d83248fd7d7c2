"""Every named query, run against SQLite and a real PostgreSQL server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import StatementError
from sqlmodel import Session, select

from sslvpn.store import ConflictError, DuplicateError, NotFoundError, StoreError, queries
from sslvpn.store.db import session
from sslvpn.store.models import Certificate, GatewaySettings, User
from tests.store.conftest import BACKENDS

pytestmark = pytest.mark.parametrize("engine", BACKENDS, indirect=True)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PEM = "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"


def _certificate(
    s: Session, serial: str, *, user_id: int | None = None, days: int = 365
) -> Certificate:
    return queries.add_certificate(
        s,
        serial=serial,
        subject_cn=f"cn-{serial}",
        kind="client",
        not_before=T0,
        not_after=T0 + timedelta(days=days),
        fingerprint_sha256="AB" * 32,
        cert_pem=PEM,
        user_id=user_id,
        device="laptop",
        key_pem="-----BEGIN PRIVATE KEY-----",
    )


def _user_names(engine: Engine) -> list[str]:
    with session(engine) as s:
        return [u.name for u in queries.list_users(s)]


# Users ---------------------------------------------------------------------------------


def test_users_are_created_listed_changed_and_found(engine: Engine) -> None:
    with session(engine) as s:
        queries.create_user(s, name="bob", email="bob@example.com")
        queries.create_user(s, name="alice", role="admin", password_hash="$argon2id$x")
    with session(engine) as s:
        assert [u.name for u in queries.list_users(s)] == ["alice", "bob"]
        alice = queries.get_user(s, name="alice")
        assert (alice.role, alice.disabled, alice.password_hash) == ("admin", False, "$argon2id$x")
        assert queries.get_user_by_id(s, user_id=alice.id or 0).name == "alice"
        queries.set_user_disabled(s, name="bob", disabled=True)
        queries.set_user_password_hash(s, name="alice", password_hash=None)
        queries.set_user_role(s, name="bob", role="admin")
    with session(engine) as s:
        bob = queries.get_user(s, name="bob")
        assert (bob.disabled, bob.role) == (True, "admin")
        assert queries.get_user(s, name="alice").password_hash is None
        with pytest.raises(NotFoundError):
            queries.get_user(s, name="carol")
        with pytest.raises(NotFoundError):
            queries.get_user_by_id(s, user_id=999)
        with pytest.raises(StoreError, match="rejected"):
            queries.set_user_role(s, name="bob", role="root")


def test_duplicate_user_raises_and_leaves_the_transaction_usable(engine: Engine) -> None:
    with session(engine) as s:
        queries.create_user(s, name="alice")
        with pytest.raises(DuplicateError, match="alice"):
            queries.create_user(s, name="alice", email="second@example.com")
        queries.create_user(s, name="bob")
    assert _user_names(engine) == ["alice", "bob"]
    with session(engine) as s:
        assert queries.get_user(s, name="alice").email is None


def test_deleting_a_user_keeps_certificates_unowned_and_drops_tokens(engine: Engine) -> None:
    with session(engine) as s:
        user = queries.create_user(s, name="alice")
        assert user.id is not None
        _certificate(s, "0a", user_id=user.id)
        _certificate(s, "0b", user_id=user.id)
        queries.mark_revoked(s, serial="0b", reason="keyCompromise", at=T0)
        queries.add_import_token(
            s, token_hash="h1", user_id=user.id, certificate_serial="0a", expires_at=T0
        )
        queries.add_api_token(s, user_id=user.id, name="ci", token_hash="a1")
    with session(engine) as s:
        to_revoke = queries.delete_user(s, name="alice")
        assert [c.serial for c in to_revoke] == ["0a"]
    with session(engine) as s:
        assert queries.list_users(s) == []
        assert [c.user_id for c in queries.list_certificates(s)] == [None, None]
        with pytest.raises(NotFoundError):
            queries.get_import_token_by_hash(s, token_hash="h1")
        with pytest.raises(NotFoundError):
            queries.get_api_token_by_hash(s, token_hash="a1")
        with pytest.raises(NotFoundError):
            queries.delete_user(s, name="alice")


# Certificates --------------------------------------------------------------------------


def test_certificates_round_trip_with_lowercase_serials(engine: Engine) -> None:
    with session(engine) as s:
        user = queries.create_user(s, name="alice")
        _certificate(s, "DEADBEEF", user_id=user.id)
    with session(engine) as s:
        cert = queries.get_certificate(s, serial="DeadBeef")
        assert cert.serial == "deadbeef"
        assert cert.fingerprint_sha256 == "ab" * 32
        assert (cert.status, cert.kind, cert.device) == ("valid", "client", "laptop")
        assert cert.not_before == T0
        assert cert.not_after == T0 + timedelta(days=365)
        assert "PRIVATE KEY" not in repr(cert)
        with pytest.raises(NotFoundError):
            queries.get_certificate(s, serial="01")
        with pytest.raises(DuplicateError):
            _certificate(s, "deadbeef")


def test_certificate_for_a_missing_user_is_refused(engine: Engine) -> None:
    with session(engine) as s, pytest.raises(NotFoundError, match="does not exist"):
        _certificate(s, "01", user_id=4242)
    with session(engine) as s:
        assert queries.list_certificates(s) == []


def test_certificates_are_filtered_by_owner_kind_status_and_expiry(engine: Engine) -> None:
    with session(engine) as s:
        alice = queries.create_user(s, name="alice")
        _certificate(s, "01", user_id=alice.id, days=10)
        _certificate(s, "02", user_id=alice.id, days=100)
        _certificate(s, "03", days=1)
        queries.add_certificate(
            s, serial="04", subject_cn="server", kind="server", not_before=T0,
            not_after=T0 + timedelta(days=20), fingerprint_sha256="cd" * 32, cert_pem=PEM,
        )  # fmt: skip
        queries.mark_revoked(s, serial="02", reason="unspecified", at=T0)

        def serials(**filters: object) -> list[str]:
            return [c.serial for c in queries.list_certificates(s, **filters)]  # type: ignore[arg-type]

        assert serials() == ["01", "02", "03", "04"]
        assert serials(user_id=alice.id) == ["01", "02"]
        assert serials(kind="server") == ["04"]
        assert serials(status="revoked") == ["02"]
        now = T0 + timedelta(days=2)  # "03" has already expired by then
        assert serials(expiring_within=timedelta(days=30), now=now) == ["01", "04"]
        assert serials(expiring_within=timedelta(days=30), now=now, kind="client") == ["01"]
        assert queries.valid_certificate_counts(s) == {alice.id: 1}


def test_revocation_and_supersession(engine: Engine) -> None:
    at = T0 + timedelta(days=3)
    with session(engine) as s:
        owner = _token_owner(s)
        for serial in ("01", "02", "03"):
            _certificate(s, serial)
            queries.add_import_token(
                s, token_hash=f"link-{serial}", user_id=owner, certificate_serial=serial,
                expires_at=at + timedelta(days=1),
            )  # fmt: skip
        revoked = queries.mark_revoked(s, serial="02", reason="keyCompromise", at=at)
        assert revoked.status == "revoked"
        queries.mark_superseded(s, serial="01", by_serial="03")
    with session(engine) as s:
        assert [c.serial for c in queries.revoked_certificates(s)] == ["02"]
        cert = queries.get_certificate(s, serial="02")
        assert (cert.revoked_at, cert.revocation_reason) == (at, "keyCompromise")
        old = queries.get_certificate(s, serial="01")
        assert (old.status, old.superseded_by) == ("superseded", "03")
        links = {t.token_hash: t.revoked for t in queries.list_import_tokens(s, user_id=owner)}
        assert links == {"link-01": True, "link-02": True, "link-03": False}
        with pytest.raises(ConflictError, match="already revoked"):
            queries.mark_revoked(s, serial="02", reason="keyCompromise", at=at)
        with pytest.raises(StoreError, match="unknown revocation reason"):
            queries.mark_revoked(s, serial="03", reason="lostIt", at=at)
        with pytest.raises(ConflictError):
            queries.mark_superseded(s, serial="02", by_serial="03")
        with pytest.raises(NotFoundError):
            queries.mark_superseded(s, serial="03", by_serial="99")
        # a superseded certificate may still be revoked
        queries.mark_revoked(s, serial="01", reason="superseded", at=at + timedelta(hours=1))
        assert [c.serial for c in queries.revoked_certificates(s)] == ["02", "01"]


# Settings ------------------------------------------------------------------------------


def test_settings_are_saved_read_and_updated(engine: Engine) -> None:
    with session(engine) as s:
        with pytest.raises(NotFoundError):
            queries.get_settings(s)
        first = GatewaySettings(public_addresses=["198.18.0.1"], vpc_networks=["10.0.0.0/16"])
        queries.save_settings(s, settings=first, now=T0)
    with session(engine) as s:
        settings = queries.get_settings(s)
        assert (settings.name, settings.port, settings.protocols) == ("default", 1194, "udp")
        assert settings.public_addresses == ["198.18.0.1"]
        assert settings.control_channel == "tls-crypt"
        assert settings.updated_at == T0
        settings.dns_servers.append("10.0.0.2")  # changed in place
        settings.port = 443
        queries.save_settings(s, settings=settings, now=T0 + timedelta(hours=1))
    with session(engine) as s:
        # a fresh object with the same name replaces the stored values
        replacement = GatewaySettings(public_addresses=["198.18.0.9"], protocols="both")
        queries.save_settings(s, settings=replacement, now=T0 + timedelta(hours=2))
        stored = queries.get_settings(s)
        assert stored.protocols == "both"
    with session(engine) as s:
        stored = queries.get_settings(s)
        assert stored.public_addresses == ["198.18.0.9"]
        assert (stored.protocols, stored.port) == ("both", 1194)
        rows = s.exec(select(GatewaySettings)).all()
        assert len(rows) == 1


def test_in_place_list_changes_are_saved(engine: Engine) -> None:
    with session(engine) as s:
        queries.save_settings(s, settings=GatewaySettings(dns_servers=["10.0.0.2"]))
    with session(engine) as s:
        settings = queries.get_settings(s)
        settings.dns_servers.append("10.0.0.3")
        queries.save_settings(s, settings=settings)
    with session(engine) as s:
        assert queries.get_settings(s).dns_servers == ["10.0.0.2", "10.0.0.3"]


def test_invalid_settings_are_rejected_without_a_row(engine: Engine) -> None:
    with session(engine) as s:
        with pytest.raises(StoreError, match="rejected"):
            queries.save_settings(s, settings=GatewaySettings(protocols="sctp"))
        queries.save_settings(s, settings=GatewaySettings(name="second"))
    with session(engine) as s:
        assert [r.name for r in s.exec(select(GatewaySettings)).all()] == ["second"]


# Audit ---------------------------------------------------------------------------------


def test_audit_entries_are_recorded_and_filtered_newest_first(engine: Engine) -> None:
    with session(engine) as s:
        for minutes, actor, action in [(0, "admin", "user.add"), (1, "alice", "login"),
                                       (2, "admin", "cert.revoke")]:  # fmt: skip
            queries.record_audit(
                s, actor=actor, action=action, target="bob", source_address="192.0.2.7",
                detail="ok", at=T0 + timedelta(minutes=minutes),
            )  # fmt: skip
        queries.record_audit(s, actor="system", action="startup")
    with session(engine) as s:
        everything = queries.list_audit(s)
        assert [e.action for e in everything] == ["startup", "cert.revoke", "login", "user.add"]
        by_admin = queries.list_audit(s, actor="admin")
        assert [e.action for e in by_admin] == ["cert.revoke", "user.add"]
        assert [e.actor for e in queries.list_audit(s, action="login")] == ["alice"]
        since = queries.list_audit(s, since=T0 + timedelta(minutes=1), actor="admin")
        assert [e.action for e in since] == ["cert.revoke"]
        assert len(queries.list_audit(s, limit=2)) == 2
        first = everything[-1]
        assert (first.target, first.source_address, first.detail, first.at) == (
            "bob", "192.0.2.7", "ok", T0,
        )  # fmt: skip


# Leases --------------------------------------------------------------------------------


def test_leases_remember_move_and_release_addresses(engine: Engine) -> None:
    with session(engine) as s:
        assert queries.get_lease(s, serial="01") is None
        queries.set_lease(s, serial="01", address="10.8.0.2", now=T0)
        queries.set_lease(s, serial="02", address="10.8.0.3", now=T0)
    with session(engine) as s:
        assert queries.get_lease(s, serial="01") == "10.8.0.2"
        queries.set_lease(s, serial="01", address="10.8.0.4")  # moves
        queries.set_lease(s, serial="03", address="10.8.0.3")  # taken over from 02
    with session(engine) as s:
        assert queries.leased_addresses(s) == {"10.8.0.4": "01", "10.8.0.3": "03"}
        assert queries.get_lease(s, serial="02") is None
        queries.release_lease(s, serial="01")
    with session(engine) as s:
        assert queries.leased_addresses(s) == {"10.8.0.3": "03"}


# Session records -----------------------------------------------------------------------


def _open(s: Session, session_id: str, *, user: str = "alice", minutes: int = 0) -> None:
    queries.open_session_record(
        s, session_id=session_id, gateway_name="default", user_name=user,
        certificate_serial="0A", real_address="198.18.0.2:51000",
        vpn_address=f"10.8.0.{1 + int(session_id[1:])}",
        protocol="udp", connected_at=T0 + timedelta(minutes=minutes),
    )  # fmt: skip


def test_session_records_track_counters_and_closing(engine: Engine) -> None:
    big = 5 * 2**32  # counters exceed 32 bits on busy links
    with session(engine) as s:
        _open(s, "s1")
        _open(s, "s2", user="bob", minutes=1)
        queries.update_session_counters(s, session_id="s1", bytes_in=big, bytes_out=7)
        queries.close_session_record(
            s, session_id="s1", at=T0 + timedelta(minutes=5), reason="client exit", bytes_out=9
        )
    with session(engine) as s:
        records = queries.list_session_records(s)
        assert [r.session_id for r in records] == ["s2", "s1"]
        closed = records[1]
        assert (closed.bytes_in, closed.bytes_out, closed.certificate_serial) == (big, 9, "0a")
        assert closed.disconnected_at == T0 + timedelta(minutes=5)
        assert closed.disconnect_reason == "client exit"
        assert [r.session_id for r in queries.list_session_records(s, open_only=True)] == ["s2"]
        assert [r.session_id for r in queries.list_session_records(s, user_name="alice")] == ["s1"]
        assert len(queries.list_session_records(s, certificate_serial="0A")) == 2
        with pytest.raises(NotFoundError):
            queries.update_session_counters(s, session_id="s1", bytes_in=1, bytes_out=1)
        with pytest.raises(NotFoundError):
            queries.close_session_record(s, session_id="nope", at=T0, reason="x")


def test_stale_session_records_are_closed_after_a_restart(engine: Engine) -> None:
    with session(engine) as s:
        _open(s, "s1")
        _open(s, "s2")
        queries.close_session_record(s, session_id="s2", at=T0, reason="client exit")
        _open(s, "s3")
    with session(engine) as s:
        later = T0 + timedelta(hours=1)
        assert queries.close_stale_session_records(s, gateway_name="default", at=later) == 2
        assert queries.close_stale_session_records(s, gateway_name="default", at=later) == 0
        assert queries.list_session_records(s, open_only=True) == []


# Import tokens -------------------------------------------------------------------------


def _token_owner(s: Session) -> int:
    user = queries.create_user(s, name="alice")
    assert user.id is not None
    return user.id


def test_import_tokens_are_used_exactly_once(engine: Engine) -> None:
    with session(engine) as s:
        owner = _token_owner(s)
        queries.add_import_token(
            s, token_hash="h1", user_id=owner, certificate_serial="0A",
            expires_at=T0 + timedelta(minutes=10), created_at=T0,
        )  # fmt: skip
    with session(engine) as s:
        used = queries.mark_import_token_used(
            s, token_hash="h1", at=T0 + timedelta(minutes=1), used_from="192.0.2.9",
            user_agent="OpenVPNConnect/3",
        )  # fmt: skip
        assert (used.used_at, used.used_from, used.user_agent) == (
            T0 + timedelta(minutes=1), "192.0.2.9", "OpenVPNConnect/3",
        )  # fmt: skip
    with session(engine) as s:
        with pytest.raises(ConflictError):
            queries.mark_import_token_used(s, token_hash="h1", at=T0 + timedelta(minutes=2))
        with pytest.raises(NotFoundError):
            queries.mark_import_token_used(s, token_hash="nope", at=T0)
        token = queries.get_import_token_by_hash(s, token_hash="h1")
        assert (token.certificate_serial, token.used_from) == ("0a", "192.0.2.9")


def test_two_racing_requests_cannot_both_use_a_token(engine: Engine) -> None:
    with session(engine) as s:
        owner = _token_owner(s)
        queries.add_import_token(
            s, token_hash="h1", user_id=owner, certificate_serial="01",
            expires_at=T0 + timedelta(minutes=10),
        )  # fmt: skip
    # PostgreSQL re-checks the claim after the winner commits (ConflictError); SQLite
    # refuses the loser's stale write snapshot ("database is locked"): both are StoreErrors.
    with pytest.raises(StoreError), session(engine) as late:
        assert queries.get_import_token_by_hash(late, token_hash="h1").used_at is None
        with session(engine) as early:
            queries.mark_import_token_used(early, token_hash="h1", at=T0, used_from="early")
        queries.mark_import_token_used(late, token_hash="h1", at=T0, used_from="late")
    with session(engine) as s:
        assert queries.get_import_token_by_hash(s, token_hash="h1").used_from == "early"


def test_expired_and_revoked_import_tokens_cannot_be_used(engine: Engine) -> None:
    expiry = T0 + timedelta(minutes=10)
    with session(engine) as s:
        owner = _token_owner(s)
        other = queries.create_user(s, name="bob").id or 0
        for token_hash, serial in [("h1", "01"), ("h2", "01"), ("h3", "02"), ("h4", "01")]:
            queries.add_import_token(
                s, token_hash=token_hash, user_id=owner, certificate_serial=serial,
                expires_at=expiry,
            )  # fmt: skip
        with pytest.raises(ConflictError):
            queries.mark_import_token_used(s, token_hash="h1", at=expiry)
        h2 = queries.get_import_token_by_hash(s, token_hash="h2")
        with pytest.raises(NotFoundError):
            queries.revoke_import_token(s, token_id=h2.id or 0, user_id=other)
        assert queries.revoke_import_token(s, token_id=h2.id or 0, user_id=owner).revoked
        with pytest.raises(ConflictError):
            queries.mark_import_token_used(s, token_hash="h2", at=T0)
        assert queries.revoke_import_tokens_for_certificate(s, serial="01") == 2  # h1, h4
        with pytest.raises(ConflictError):
            queries.mark_import_token_used(s, token_hash="h4", at=T0)
        assert queries.mark_import_token_used(s, token_hash="h3", at=T0).used_at == T0
        with pytest.raises(NotFoundError):
            queries.revoke_import_token(s, token_id=9999)
        with pytest.raises(DuplicateError):
            queries.add_import_token(
                s, token_hash="h3", user_id=owner, certificate_serial="02", expires_at=expiry
            )
        listed = queries.list_import_tokens(s, user_id=owner)
        assert sorted(t.token_hash for t in listed) == ["h1", "h2", "h3", "h4"]
        assert queries.list_import_tokens(s, user_id=other) == []


def test_import_token_for_a_missing_user_is_refused(engine: Engine) -> None:
    with session(engine) as s, pytest.raises(NotFoundError):
        queries.add_import_token(
            s, token_hash="h", user_id=77, certificate_serial="01", expires_at=T0
        )


# API tokens ----------------------------------------------------------------------------


def test_api_tokens_are_added_found_touched_listed_and_deleted(engine: Engine) -> None:
    with session(engine) as s:
        owner = _token_owner(s)
        other = queries.create_user(s, name="bob").id or 0
        token = queries.add_api_token(s, user_id=owner, name="ci", token_hash="a1", created_at=T0)
        queries.add_api_token(s, user_id=owner, name="backup", token_hash="a2")
        queries.add_api_token(s, user_id=other, name="ci", token_hash="a3")
        with pytest.raises(DuplicateError):
            queries.add_api_token(s, user_id=owner, name="ci", token_hash="a4")
        with pytest.raises(DuplicateError):
            queries.add_api_token(s, user_id=owner, name="new", token_hash="a1")
    with session(engine) as s:
        found = queries.get_api_token_by_hash(s, token_hash="a1")
        assert (found.name, found.created_at, found.last_used_at) == ("ci", T0, None)
        queries.touch_api_token(s, token_id=token.id or 0, at=T0 + timedelta(days=1))
    with session(engine) as s:
        assert queries.get_api_token_by_hash(s, token_hash="a1").last_used_at == T0 + timedelta(
            days=1
        )
        assert [t.name for t in queries.list_api_tokens(s, user_id=owner)] == ["backup", "ci"]
        with pytest.raises(NotFoundError):
            queries.delete_api_token(s, token_id=token.id or 0, user_id=other)
        queries.delete_api_token(s, token_id=token.id or 0, user_id=owner)
        with pytest.raises(NotFoundError):
            queries.get_api_token_by_hash(s, token_hash="a1")
        with pytest.raises(NotFoundError):
            queries.delete_api_token(s, token_id=token.id or 0)


# Time zones ----------------------------------------------------------------------------


def test_datetimes_come_back_aware_utc_whatever_zone_went_in(engine: Engine) -> None:
    tokyo = datetime(2026, 3, 1, 21, 0, tzinfo=timezone(timedelta(hours=9)))
    with session(engine) as s:
        if engine.dialect.name == "postgresql":
            s.execute(text("SET TIME ZONE 'America/New_York'"))
        entry = queries.record_audit(s, actor="a", action="tz", at=tokyo)
        entry_id = entry.id
    with session(engine) as s:
        if engine.dialect.name == "postgresql":
            s.execute(text("SET TIME ZONE 'Asia/Kolkata'"))
        s.expire_all()
        [stored] = queries.list_audit(s, action="tz")
        assert stored.id == entry_id
        assert stored.at == T0
        assert stored.at.utcoffset() == timedelta(0)
        assert stored.at.tzinfo is UTC


def test_naive_datetimes_are_a_caller_bug(engine: Engine) -> None:
    with pytest.raises(StatementError, match="naive datetime"), session(engine) as s:
        queries.record_audit(s, actor="a", action="naive", at=datetime(2026, 1, 1))
    with session(engine) as s:
        assert queries.list_audit(s) == []


def test_defaults_are_aware_utc(engine: Engine) -> None:
    with session(engine) as s:
        queries.create_user(s, name="alice")
    with session(engine) as s:
        created = s.exec(select(User)).one().created_at
        assert created.tzinfo is UTC
