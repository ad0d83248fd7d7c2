"""Lifecycle operations against a real SQLite store and data folder."""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from sqlmodel import select

from client_profiles import accounts, crl, lifecycle, reports
from client_profiles.pki import crl_next_update, crl_number_of
from client_profiles.pkifiles import LifecycleError
from sslvpn import config
from sslvpn.config import DataPaths, database_url
from sslvpn.openvpn.static_key import (
    METADATA_TYPE_USER,
    parse_static_key,
    parse_tls_crypt_v2_client_key,
    parse_tls_crypt_v2_server_key,
    unwrap_client_key,
)
from sslvpn.store import DuplicateError, NotFoundError
from sslvpn.store.db import open_engine, session, upgrade
from sslvpn.store.models import AuditEntry, Certificate, GatewaySettings, utcnow
from tests.client_profiles.conftest import Gateway, make_gateway
from web.tls import ensure_portal_certificate


def _rows(gw: Gateway) -> list[Certificate]:
    with session(gw.engine) as s:
        return list(s.exec(select(Certificate).where(Certificate.kind == "client")).all())


def _actions(gw: Gateway) -> list[str]:
    with session(gw.engine) as s:
        return [a.action for a in s.exec(select(AuditEntry)).all()]


def test_initialise_writes_keys_private_and_in_openvpn_formats(gateway: Gateway) -> None:
    p = gateway.paths
    for secret in (p.ca_key, p.server_key, p.tls_crypt_key, p.tls_crypt_v2_server_key):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    for public in (p.ca_cert, p.server_cert, p.crl_pem, p.crl_der):
        assert stat.S_IMODE(public.stat().st_mode) == 0o644, public
    assert len(parse_static_key(p.tls_crypt_key.read_text())) == 256
    assert len(parse_tls_crypt_v2_server_key(p.tls_crypt_v2_server_key.read_text())) == 128
    assert x509.load_der_x509_crl(p.crl_der.read_bytes()).next_update_utc is not None
    with session(gateway.engine) as s:
        settings = s.exec(select(GatewaySettings)).one()
    assert (settings.protocols, settings.port, settings.pool_cidr) == ("both", 1194, "10.8.0.0/24")
    assert "pki.init" in _actions(gateway)


def test_every_pki_file_goes_through_the_one_atomic_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """init, issue, revoke, a gateway renewal and the portal certificate write every file
    of pki/ with temp + fsync + rename + folder fsync (`sslvpn.config`), secrets 0600."""
    written: set[str] = set()
    real = config._write_atomically

    def recording(path: Path, data: bytes, mode: int) -> None:
        written.add(path.name)
        real(path, data, mode)

    monkeypatch.setattr(config, "_write_atomically", recording)
    gw = make_gateway(tmp_path / "d")
    row = lifecycle.issue_client(gw.engine, gw.paths, user_name="alice", actor="t")
    lifecycle.revoke(gw.engine, gw.paths, serial=row.serial, actor="t")
    lifecycle.renew(gw.engine, gw.paths, serial=_server_serial(gw), actor="t")
    ensure_portal_certificate(gw.paths, ["portal.example"])
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in gw.paths.pki_dir.iterdir()}
    assert set(files) <= written
    assert {name for name, mode in files.items() if mode == 0o600} == {
        "ca.key", "server.key", "tls-crypt.key", "tls-crypt-v2-server.key", "portal.key"
    }
    gw.engine.dispose()


def test_initialise_refuses_a_pki_folder_without_a_ca(tmp_path: Path) -> None:
    root = tmp_path / "d"
    paths = DataPaths(root)
    paths.pki_dir.mkdir(parents=True)
    (paths.pki_dir / "notes.txt").write_text("someone's")
    engine = open_engine(database_url(root, None))
    upgrade(engine)
    with pytest.raises(LifecycleError, match="holds files but no CA; move it away"):
        lifecycle.initialise(paths, engine, public_addresses=["vpn.example"])
    assert [f.name for f in paths.pki_dir.iterdir()] == ["notes.txt"]
    assert not paths.pki_staging_dir.exists()
    engine.dispose()


def test_initialise_refuses_a_second_run(gateway: Gateway) -> None:
    before = gateway.paths.ca_key.read_bytes()
    with pytest.raises(LifecycleError, match="already initialised"):
        lifecycle.initialise(gateway.paths, gateway.engine, public_addresses=["x.example"])
    assert gateway.paths.ca_key.read_bytes() == before


@pytest.mark.parametrize(
    "bad",
    [
        {"public_addresses": []},
        {"public_addresses": ["bad host"]},
        {"port": 0},
        {"proto": "sctp"},
        {"pool": "10.8.0.1/24"},
        {"pool": "10.8.0.0/30"},
        {"vpc": ["nonsense"]},
        {"dns": ["dns.example"]},
        {"control_channel": "tls-auth"},
    ],
)
def test_initialise_validates_before_writing(tmp_path: Path, bad: dict[str, object]) -> None:
    root = tmp_path / "d"
    root.mkdir()
    engine = open_engine(database_url(root, None))
    upgrade(engine)
    options: dict[str, object] = {"public_addresses": ["vpn.example"], **bad}
    with pytest.raises(LifecycleError):
        lifecycle.initialise(DataPaths(root), engine, **options)  # type: ignore[arg-type]
    assert not (root / "pki").exists()
    engine.dispose()


def test_failed_file_write_during_initialise_leaves_no_files_or_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "d"
    root.mkdir()
    paths = DataPaths(root)
    engine = open_engine(database_url(root, None))
    upgrade(engine)
    real_replace, calls = os.replace, []

    def failing_replace(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) == 5:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        lifecycle.initialise(paths, engine, public_addresses=["vpn.example"])
    assert not paths.pki_dir.exists() and not paths.pki_staging_dir.exists()
    with session(engine) as s:
        assert s.exec(select(GatewaySettings)).first() is None
        assert s.exec(select(Certificate)).first() is None
    engine.dispose()


def test_issue_binds_a_tls_crypt_v2_key_to_the_serial(gateway: Gateway) -> None:
    row = lifecycle.issue_client(
        gateway.engine, gateway.paths, user_name="alice", device="phone", actor="t"
    )
    assert row.subject_cn == "alice.phone" and row.key_pem and row.tls_crypt_v2_key
    server_key = parse_tls_crypt_v2_server_key(gateway.paths.tls_crypt_v2_server_key.read_text())
    client_key, wkc = parse_tls_crypt_v2_client_key(row.tls_crypt_v2_key)
    assert unwrap_client_key(server_key, wkc) == (
        client_key,
        bytes([METADATA_TYPE_USER]) + row.serial.encode(),
    )
    assert "PRIVATE KEY" not in repr(row) and "tls-crypt-v2 client key" not in repr(row)
    assert "certificate.issue" in _actions(gateway)


def test_issue_refusals(gateway: Gateway) -> None:
    with pytest.raises(NotFoundError):
        lifecycle.issue_client(gateway.engine, gateway.paths, user_name="nobody", actor="t")
    with pytest.raises(LifecycleError, match="device"):
        lifecycle.issue_client(
            gateway.engine, gateway.paths, user_name="alice", device="a.b", actor="t"
        )
    with pytest.raises(LifecycleError, match="lifetime"):
        lifecycle.issue_client(gateway.engine, gateway.paths, user_name="alice", days=0, actor="t")
    accounts.set_user_enabled(gateway.engine, name="alice", enabled=False, actor="t")
    with pytest.raises(LifecycleError, match="disabled"):
        lifecycle.issue_client(gateway.engine, gateway.paths, user_name="alice", actor="t")
    assert _rows(gateway) == []


def test_renew_overlaps_and_keeps_device_and_lifetime(gateway: Gateway) -> None:
    """The old certificate stays valid (its device is not cut off) until the overlap ends;
    then `retire_superseded` revokes it with reason superseded and the CRL lists it."""
    old = lifecycle.issue_client(
        gateway.engine, gateway.paths, user_name="alice", device="pc", days=30, actor="t"
    )
    now = utcnow()
    new = lifecycle.renew(gateway.engine, gateway.paths, serial=old.serial, actor="t", now=now)
    assert new.serial != old.serial and new.device == "pc"
    assert (new.not_after - new.not_before).days == 30
    by_serial = {r.serial: r for r in _rows(gateway)}
    assert by_serial[old.serial].status == "valid"
    assert by_serial[old.serial].superseded_by == new.serial
    assert by_serial[old.serial].overlap_until == now + timedelta(days=7)
    with pytest.raises(LifecycleError, match=f"already renewed as {new.serial}"):
        lifecycle.renew(gateway.engine, gateway.paths, serial=old.serial, actor="t")
    profile = reports.render_profile(
        gateway.engine, gateway.paths, user_name="alice", device="pc", actor="t"
    )
    assert profile.serial == new.serial
    assert lifecycle.retire_superseded(gateway.engine, gateway.paths, now=now) == []
    later = now + timedelta(days=7)
    retired = lifecycle.retire_superseded(gateway.engine, gateway.paths, now=later)
    assert [r.serial for r in retired] == [old.serial]
    row = {r.serial: r for r in _rows(gateway)}[old.serial]
    assert (row.status, row.revocation_reason, row.revoked_at) == ("revoked", "superseded", later)
    listed = x509.load_pem_x509_crl(gateway.paths.crl_pem.read_bytes())
    entry = listed.get_revoked_certificate_by_serial_number(int(old.serial, 16))
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == \
        x509.ReasonFlags.superseded


def test_renew_without_overlap_revokes_the_old_certificate_at_once(gateway: Gateway) -> None:
    old = lifecycle.issue_client(gateway.engine, gateway.paths, user_name="alice",
                                 device="pc", actor="t")
    lifecycle.renew(gateway.engine, gateway.paths, serial=old.serial, overlap_days=0, actor="t")
    row = {r.serial: r for r in _rows(gateway)}[old.serial]
    assert (row.status, row.revocation_reason) == ("revoked", "superseded")
    listed = x509.load_pem_x509_crl(gateway.paths.crl_pem.read_bytes())
    assert listed.get_revoked_certificate_by_serial_number(int(old.serial, 16)) is not None


def _server_serial(gw: Gateway) -> str:
    items = reports.expiry_report(gw.paths, gw.engine)
    return str(next(i.serial for i in items if i.kind == "server" and i.status == "valid"))


def test_renew_the_gateway_certificate_replaces_its_files(gateway: Gateway) -> None:
    old_serial = _server_serial(gateway)
    old_key = gateway.paths.server_key.read_bytes()
    new = lifecycle.renew(gateway.engine, gateway.paths, serial=old_serial, days=400, actor="t")
    assert new.kind == "server" and new.subject_cn == "198.18.0.1"
    cert = x509.load_pem_x509_certificate(gateway.paths.server_cert.read_bytes())
    assert format(cert.serial_number, "x") == new.serial == _server_serial(gateway)
    assert gateway.paths.server_key.read_bytes() != old_key
    assert stat.S_IMODE(gateway.paths.server_key.stat().st_mode) == 0o600
    with pytest.raises(LifecycleError, match="superseded, not valid"):
        lifecycle.renew(gateway.engine, gateway.paths, serial=old_serial, actor="t")


def test_failed_gateway_renewal_restores_its_files(gateway: Gateway) -> None:
    serial = _server_serial(gateway)
    key_before = gateway.paths.server_key.read_bytes()
    gateway.paths.server_cert.unlink()
    gateway.paths.server_cert.mkdir()  # the certificate write fails after the key was replaced
    with pytest.raises(OSError):
        lifecycle.renew(gateway.engine, gateway.paths, serial=serial, actor="t")
    assert gateway.paths.server_key.read_bytes() == key_before
    assert _server_serial(gateway) == serial


def test_revoke_lists_reason_in_crl_and_bumps_number(gateway: Gateway) -> None:
    first = lifecycle.issue_client(gateway.engine, gateway.paths, user_name="alice", actor="t")
    second = lifecycle.issue_client(
        gateway.engine, gateway.paths, user_name="alice", device="tab", actor="t"
    )
    number = crl_number_of(gateway.paths.crl_pem.read_bytes())
    lifecycle.revoke(
        gateway.engine, gateway.paths, serial=first.serial, reason="keyCompromise", actor="t"
    )
    revoked = lifecycle.revoke(
        gateway.engine, gateway.paths, user_name="alice", reason="cessationOfOperation", actor="t"
    )
    assert [r.serial for r in revoked] == [second.serial]
    signed = x509.load_pem_x509_crl(gateway.paths.crl_pem.read_bytes())
    assert crl_number_of(gateway.paths.crl_pem.read_bytes()) == number + 2
    for row, reason in ((first, "keyCompromise"), (second, "cessationOfOperation")):
        entry = signed.get_revoked_certificate_by_serial_number(int(row.serial, 16))
        assert entry is not None
        assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value == (
            reason
        )
    with pytest.raises(LifecycleError, match="no certificate"):
        lifecycle.revoke(gateway.engine, gateway.paths, user_name="alice", actor="t")
    with pytest.raises(LifecycleError, match="reason"):
        lifecycle.revoke(gateway.engine, gateway.paths, serial=first.serial, reason="x", actor="t")
    with pytest.raises(LifecycleError, match="revoked"):
        reports.render_profile(gateway.engine, gateway.paths, serial=first.serial, actor="t")


def test_a_failed_crl_write_keeps_the_committed_revocation(gateway: Gateway) -> None:
    """The store is the truth: the revocation stands, the error says how to mend the files."""
    row = lifecycle.issue_client(gateway.engine, gateway.paths, user_name="alice", actor="t")
    gateway.paths.crl_der.unlink()
    gateway.paths.crl_der.mkdir()  # the CRL files cannot be written
    with pytest.raises(LifecycleError, match="revoked, but the CRL files could not be written"):
        lifecycle.revoke(gateway.engine, gateway.paths, serial=row.serial, actor="t")
    assert _rows(gateway)[0].status == "revoked"
    assert "certificate.revoke" in _actions(gateway)
    gateway.paths.crl_der.rmdir()
    assert crl.republish_crl(gateway.paths, gateway.engine) is not None
    listed = x509.load_der_x509_crl(gateway.paths.crl_der.read_bytes())
    assert listed.get_revoked_certificate_by_serial_number(int(row.serial, 16)) is not None


def test_refresh_crl_only_when_half_its_validity_is_gone(gateway: Gateway) -> None:
    now = utcnow()
    last, next_update = crl_next_update(gateway.paths.crl_pem.read_bytes())
    fresh = crl.refresh_crl(gateway.paths, gateway.engine, now=now)
    assert not fresh.refreshed
    later = last + (next_update - last) * 0.6
    aged = crl.refresh_crl(gateway.paths, gateway.engine, now=later)
    assert aged.refreshed and aged.next_update == later + timedelta(days=30)
    assert crl_next_update(gateway.paths.crl_pem.read_bytes())[1] == aged.next_update.replace(
        microsecond=0
    )
    # an already expired CRL (the easy-rsa lock-out) is replaced too
    expired = crl.refresh_crl(gateway.paths, gateway.engine, now=later + timedelta(days=90))
    assert expired.refreshed and expired.number == aged.number + 1
    forced = crl.refresh_crl(gateway.paths, gateway.engine, force=True)
    assert forced.refreshed
    assert _actions(gateway).count("crl.refresh") == 3


def test_refresh_crl_puts_back_a_missing_crl_file(gateway: Gateway) -> None:
    before = gateway.paths.crl_pem.read_bytes()
    gateway.paths.crl_pem.unlink()
    state = crl.refresh_crl(gateway.paths, gateway.engine)
    assert not state.refreshed and state.number == 1
    assert gateway.paths.crl_pem.read_bytes() == before


def test_expiry_report_covers_ca_server_crl_and_clients(gateway: Gateway) -> None:
    lifecycle.issue_client(gateway.engine, gateway.paths, user_name="alice", days=10, actor="t")
    lifecycle.issue_client(
        gateway.engine, gateway.paths, user_name="alice", device="x", days=300, actor="t"
    )
    everything = reports.expiry_report(gateway.paths, gateway.engine)
    assert sorted(i.kind for i in everything) == ["ca", "client", "client", "crl", "server"]
    soon = reports.expiry_report(gateway.paths, gateway.engine, within=timedelta(days=30))
    assert sorted((i.kind, i.name) for i in soon) == [("client", "alice"), ("crl", "CRL")]
    far = utcnow() + timedelta(days=4000)
    lapsed = reports.expiry_report(gateway.paths, gateway.engine, within=timedelta(0), now=far)
    assert {i.kind for i in lapsed} == {"ca", "server", "client", "crl"}
    assert {i.status for i in lapsed} == {"expired"}


def test_render_profile_refusals(gateway: Gateway) -> None:
    with pytest.raises(LifecycleError, match="no valid certificate"):
        reports.render_profile(gateway.engine, gateway.paths, user_name="alice", actor="t")
    row = lifecycle.issue_client(gateway.engine, gateway.paths, user_name="alice", actor="t")
    with pytest.raises(LifecycleError, match="expired"):
        reports.render_profile(
            gateway.engine,
            gateway.paths,
            serial=row.serial,
            actor="t",
            now=utcnow() + timedelta(days=400),
        )
    _settings_udp_only(gateway)
    with pytest.raises(LifecycleError, match="does not offer tcp"):
        reports.render_profile(
            gateway.engine, gateway.paths, serial=row.serial, proto="tcp", actor="t"
        )
    server_serial = reports.expiry_report(gateway.paths, gateway.engine)
    server = next(i for i in server_serial if i.kind == "server")
    with pytest.raises(LifecycleError, match="not a client"):
        reports.render_profile(gateway.engine, gateway.paths, serial=str(server.serial), actor="t")


def _settings_udp_only(gw: Gateway) -> None:
    with session(gw.engine) as s:
        settings = s.exec(select(GatewaySettings)).one()
        settings.protocols = "udp"
        s.add(settings)


def test_accounts_validate_and_refuse_duplicates(gateway: Gateway) -> None:
    with pytest.raises(DuplicateError):
        accounts.add_user(gateway.engine, name="alice", actor="t")
    for name in ("", "-x", "a b", "x" * 65, "ä"):
        with pytest.raises(LifecycleError):
            accounts.add_user(gateway.engine, name=name, actor="t")
    with pytest.raises(LifecycleError, match="e-mail"):
        accounts.add_user(gateway.engine, name="bob", email="nope", actor="t")
    with pytest.raises(LifecycleError, match="at least 12 characters"):
        accounts.add_user(gateway.engine, name="bob", password="short-pw", actor="t")
    for guessable in ("password1234", "bobbobbobbob", "bob@example.org2"):  # common, own
        with pytest.raises(LifecycleError, match="common or guessable"):
            accounts.add_user(gateway.engine, name="bob", email="bob@example.org",
                              password=guessable, actor="t")
    bob = accounts.add_user(
        gateway.engine, name="bob", admin=True, password="long enough pw", actor="t"
    )
    assert bob.role == "admin" and bob.password_hash and "long enough" not in bob.password_hash
    assert [u.name for u in accounts.list_users(gateway.engine)] == ["alice", "bob"]
