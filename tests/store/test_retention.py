"""Retention on SQLite and PostgreSQL: old history goes, in batches; what is live or still
owed to someone (open sessions, unused links, users holding valid certificates) stays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, event
from sqlmodel import Session, select

from sslvpn.store import queries, retention
from sslvpn.store.db import session
from sslvpn.store.models import (
    AlarmNotice,
    AuditEntry,
    Certificate,
    GatewaySettings,
    ImportToken,
    User,
)
from tests.store.conftest import BACKENDS

pytestmark = pytest.mark.parametrize("engine", BACKENDS, indirect=True)

NOW = datetime(2027, 6, 1, 12, 0, tzinfo=UTC)
LONG_AGO = NOW - timedelta(days=401)  # past the 400-day defaults
LATELY = NOW - timedelta(days=399)


def _certificate(s: Session, serial: str, user_id: int | None, status: str) -> None:
    row = queries.add_certificate(
        s, serial=serial, subject_cn=serial, kind="client", not_before=LONG_AGO,
        not_after=LONG_AGO + timedelta(days=30), fingerprint_sha256="ab", cert_pem="-",
        user_id=user_id, device="d",
    )  # fmt: skip
    row.status = status


def _user(s: Session, name: str, *, disabled_at: datetime | None = None) -> int:
    user = queries.create_user(s, name=name)
    if disabled_at is not None:
        queries.set_user_disabled(s, name=name, disabled=True, now=disabled_at)
    assert user.id is not None
    return user.id


def _session_record(s: Session, sid: str, user: str, ended: datetime | None) -> None:
    queries.open_session_record(
        s, session_id=sid, gateway_name="default", user_name=user, certificate_serial="aa",
        real_address="198.18.0.2:1", vpn_address="10.8.0.2", protocol="udp",
        connected_at=LONG_AGO - timedelta(hours=1),
    )  # fmt: skip
    if ended is not None:
        queries.close_session_record(s, session_id=sid, at=ended, reason="exit")


def test_history_past_its_retention_goes_and_the_rest_stays(engine: Engine) -> None:
    with session(engine, write=True) as s:
        owner = _user(s, "owner")
        for at, action in ((LONG_AGO, "old"), (LATELY, "recent")):
            queries.record_audit(s, actor="t", action=action, at=at)
            s.add(AlarmNotice(alarm_key=action, event="raised", at=at, next_try_at=at))
        _session_record(s, "ended-long-ago", "owner", LONG_AGO)
        _session_record(s, "ended-lately", "owner", LATELY)
        _session_record(s, "still-open", "owner", None)  # began long ago, never ended
        links = {  # name: (used_at, expires_at); a link lives 10 minutes here
            "used-8-days-ago": (NOW - timedelta(days=8), None),
            "used-6-days-ago": (NOW - timedelta(days=6), None),
            "expired-8-days-ago": (None, NOW - timedelta(days=8)),
            "unused-valid": (None, NOW + timedelta(minutes=5)),
        }
        for name, (used_at, expires_at) in links.items():
            queries.add_import_token(
                s, token_hash=name, user_id=owner, certificate_serial="aa", created_at=LONG_AGO,
                expires_at=expires_at or (used_at or NOW) + timedelta(minutes=10),
            )  # fmt: skip
            if used_at is not None:
                queries.mark_import_token_used(s, token_hash=name, at=used_at)
    report = retention.prune(engine, now=NOW)
    assert (report.audit, report.sessions, report.import_links) == (1, 1, 2)
    assert report.alarm_notices == 1
    with session(engine, write=False) as s:
        assert [e.action for e in queries.list_audit(s)] == ["recent"]
        assert [n.alarm_key for n in s.exec(select(AlarmNotice))] == ["recent"]
        records = queries.list_session_records(s, user_name="owner")
        assert sorted(r.session_id for r in records) == ["ended-lately", "still-open"]
        kept = {t.token_hash for t in queries.list_import_tokens(s, user_id=owner)}
        assert kept == {"used-6-days-ago", "unused-valid"}


def test_disabled_users_go_only_without_valid_certificates_or_open_sessions(
    engine: Engine,
) -> None:
    with session(engine, write=True) as s:
        gone = _user(s, "gone", disabled_at=LONG_AGO)
        _certificate(s, "01", gone, "revoked")
        _certificate(s, "02", gone, "superseded")
        queries.add_api_token(s, user_id=gone, name="t", token_hash="h")
        holder = _user(s, "holder", disabled_at=LONG_AGO)
        _certificate(s, "03", holder, "valid")  # expired long ago, still status valid
        _user(s, "connected", disabled_at=LONG_AGO)
        _session_record(s, "open", "connected", None)
        _user(s, "lately", disabled_at=LATELY)
        _user(s, "enabled")  # never disabled, however old
    report = retention.prune(engine, now=NOW)
    assert report.users == ["gone"]
    with session(engine, write=False) as s:
        names = [u.name for u in queries.list_users(s)]
        assert names == ["connected", "enabled", "holder", "lately"]
        owners = {c.serial: c.user_id for c in queries.list_certificates(s)}
        assert owners["01"] is None and owners["02"] is None  # kept for the CRL, unowned
        assert queries.list_api_tokens(s, user_id=gone) == []
        (entry,) = queries.list_audit(s, action="user.delete")
        assert (entry.actor, entry.target) == ("retention", "gone")


def test_disabling_starts_the_clock_and_enabling_stops_it(engine: Engine) -> None:
    with session(engine, write=True) as s:
        _user(s, "u", disabled_at=LONG_AGO)
        queries.set_user_disabled(s, name="u", disabled=True, now=LATELY)  # already disabled
        assert queries.get_user(s, name="u").disabled_at == LONG_AGO
        queries.set_user_disabled(s, name="u", disabled=False)
        assert queries.get_user(s, name="u").disabled_at is None


def test_zero_keeps_forever(engine: Engine) -> None:
    with session(engine, write=True) as s:
        queries.save_settings(s, settings=GatewaySettings(
            audit_retention_days=0, session_retention_days=0, import_link_retention_days=0,
            disabled_user_retention_days=0))
        queries.record_audit(s, actor="t", action="ancient", at=NOW - timedelta(days=9999))
        _user(s, "u", disabled_at=NOW - timedelta(days=9999))
    assert retention.prune(engine, now=NOW).total == 0


def test_each_batch_is_its_own_short_transaction(engine: Engine) -> None:
    with session(engine, write=True) as s:
        for i in range(7):
            queries.record_audit(s, actor="t", action=f"a{i}", at=LONG_AGO)
    deletes: list[str] = []

    def seen(_c: object, _cur: object, statement: str, *_a: object) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM AUDITENTRY"):
            deletes.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        report = retention.prune(engine, now=NOW, batch=3, pause=0)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert report.audit == 7 and len(deletes) == 3  # 3 + 3 + 1
    with session(engine, write=False) as s:
        assert s.exec(select(AuditEntry)).all() == []
        assert s.exec(select(ImportToken)).all() == []
        assert s.exec(select(User)).all() == [] and s.exec(select(Certificate)).all() == []
