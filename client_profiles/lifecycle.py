"""Certificate lifecycle: the operations the CLI and the portal both call.

`initialise` builds the PKI and the gateway settings; `issue_client`, `renew` and `revoke`
manage client certificates (`renew` also replaces the gateway's own certificate; a renewed
client certificate overlaps its renewal until `retire_superseded` revokes it). Every
operation is one database transaction plus its files, and leaves an audit entry: a
gateway renewal writes its files after the rows are flushed and restores them when
anything fails; a revocation signs the CRL into the store and publishes the files after
the commit (`client_profiles.crl`, which also keeps the CRL from expiring). Expiry
reporting and profile rendering live in `client_profiles.reports`.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from sqlalchemy import Engine
from sqlmodel import Session

from client_profiles.crl import publish_crl, sign_crl
from client_profiles.inputs import (
    KEEPALIVE_DEFAULT,
    checked_days,
    checked_device,
    serial_forms,
    validated_settings,
)
from client_profiles.pki import (
    CLIENT_DAYS,
    REVOCATION_REASONS,
    CertificateAuthority,
    Crl,
    IssuedCertificate,
    KeyType,
    build_crl,
    certificate_facts,
    certificate_pem,
    create_ca,
    issue_client_certificate,
    issue_server_certificate,
    private_key_pem,
)
from client_profiles.pkifiles import (
    FileBatch,
    LifecycleError,
    file_refusals,
    open_ca,
    resolve_ca_passphrase,
)
from sslvpn import keyfiles
from sslvpn.config import (
    DataPaths,
    make_directory,
    rename_directory,
    write_public_file,
    write_secret_file,
)
from sslvpn.openvpn.constants import DEFAULT_TLS_GROUPS
from sslvpn.openvpn.static_key import (
    METADATA_TYPE_USER,
    format_static_key,
    format_tls_crypt_v2_client_key,
    format_tls_crypt_v2_server_key,
    generate_static_key,
    generate_tls_crypt_v2_server_key,
    wrap_client_key,
)
from sslvpn.store import NotFoundError
from sslvpn.store.db import session
from sslvpn.store.models import (
    Certificate,
    GatewaySettings,
    User,
    utcnow,
)
from sslvpn.store.queries import (
    add_certificate,
    begin_overlap,
    effective_limits,
    get_certificate,
    get_settings,
    get_user,
    get_user_by_id,
    list_certificates,
    mark_revoked,
    mark_superseded,
    overlaps_due,
    record_audit,
    revoke_import_tokens_for_certificate,
    save_settings,
    save_signed_crl,
)

# A renewed client certificate works this long, or until its renewal first connects.
RENEWAL_OVERLAP_DAYS = 7
MAX_OVERLAP_DAYS = 365


def initialise(
    paths: DataPaths,
    engine: Engine,
    *,
    public_addresses: Sequence[str],
    port: int = 1194,
    proto: str = "both",
    vpc: Sequence[str] = (),
    pool: str = "10.8.0.0/24",
    pool6: str | None = None,
    dns: Sequence[str] = (),
    key_type: KeyType = KeyType.ECDSA_P256,
    ca_passphrase: str | None = None,
    control_channel: str = "tls-crypt",
    keepalive: tuple[int, int] = KEEPALIVE_DEFAULT,
    tls_groups: str = DEFAULT_TLS_GROUPS,
    caps: ClientCaps | None = None,
    actor: str = "cli",
    now: datetime | None = None,
) -> Initialised:
    """Create the CA, server certificate, tls-crypt keys, first CRL and gateway settings.

    Crash-safe: the files are built in a staging folder beside ``pki/``, then the settings
    are committed, then the staging folder is renamed to ``pki/``. A crash before the
    commit leaves a staging folder that the next run discards; a crash after it leaves
    one that the next run moves into place (`Initialised.resumed`) with the settings
    that were committed.
    """
    now = now or utcnow()
    if paths.ca_cert.exists() or paths.ca_key.exists():
        raise LifecycleError(f"data folder {paths.data_dir} is already initialised")
    finished = _finish_interrupted_init(paths, engine)
    if finished is not None:
        return Initialised(finished, resumed=True)
    settings = validated_settings(
        public_addresses, port, proto, vpc, pool, dns, control_channel, pool6=pool6,
        keepalive=keepalive, tls_groups=tls_groups,
    )
    if caps is not None:
        caps.apply(settings)
    _refuse_foreign_pki_folder(paths)
    with session(engine, write=False) as s:
        _refuse_existing_settings(s)
    ca = create_ca(
        common_name=f"sslvpn CA {settings.public_addresses[0]}", key_type=key_type, now=now
    )
    server = issue_server_certificate(
        ca,
        common_name=settings.public_addresses[0],
        public_addresses=settings.public_addresses,
        now=now,
    )
    staging = paths.pki_staging_dir
    try:
        make_directory(staging, mode=0o700)
        crl = build_crl(ca, revoked=[], number=1, now=now, days=settings.crl_days)
        _write_first_pki(staging, ca, server, crl, ca_passphrase)
        with session(engine, write=True) as s:
            _refuse_existing_settings(s)
            settings = save_settings(s, settings=settings, now=now)
            _store_certificate(s, server.certificate, kind="server")
            save_signed_crl(s, number=crl.number, der=crl.der, last_update=crl.last_update,
                            next_update=crl.next_update)
            record_audit(
                s,
                actor=actor,
                action="pki.init",
                target=str(paths.data_dir),
                at=now,
                detail=f"key_type={key_type.value} addresses={','.join(settings.public_addresses)}",
            )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _move_into_place(paths)
    return Initialised(settings, resumed=False)


@dataclass(frozen=True)
class ClientCaps:
    """The OpenVPN listener caps of the settings (see `GatewaySettings`)."""

    max_clients: int = 0
    max_clients_per_address: int = 0
    tls_crypt_v2_force_cookie: bool = True

    def apply(self, settings: GatewaySettings) -> None:
        if self.max_clients < 0 or self.max_clients_per_address < 0:
            raise LifecycleError("max-clients must be 0 (no cap) or more")
        settings.max_clients = self.max_clients
        settings.max_clients_per_address = self.max_clients_per_address
        settings.tls_crypt_v2_force_cookie = self.tls_crypt_v2_force_cookie


@dataclass(frozen=True)
class Initialised:
    """The gateway settings `initialise` stored, and whether it finished an earlier run."""

    settings: GatewaySettings
    resumed: bool


def _write_first_pki(
    folder: Path,
    ca: CertificateAuthority,
    server: IssuedCertificate,
    crl: Crl,
    ca_passphrase: str | None,
) -> None:
    """Every file of a new PKI, written durably into ``folder``."""
    layout = DataPaths(folder.parent)  # file names only; the folder is the staging one
    secrets = {
        layout.ca_key: private_key_pem(ca.private_key, resolve_ca_passphrase(ca_passphrase)),
        layout.server_key: private_key_pem(server.private_key),
        layout.tls_crypt_key: format_static_key(generate_static_key()).encode("ascii"),
        layout.tls_crypt_v2_server_key: format_tls_crypt_v2_server_key(
            generate_tls_crypt_v2_server_key()
        ).encode("ascii"),
    }
    public = {
        layout.ca_cert: certificate_pem(ca.certificate),
        layout.server_cert: certificate_pem(server.certificate),
        layout.crl_pem: crl.pem,
        layout.crl_der: crl.der,
    }
    for path, data in secrets.items():
        write_secret_file(folder / path.name, data)
    for path, data in public.items():
        write_public_file(folder / path.name, data)


def _finish_interrupted_init(paths: DataPaths, engine: Engine) -> GatewaySettings | None:
    """Move a staging folder whose settings were committed into place; discard any other.

    The commit happened exactly when the store holds settings and the staging folder's
    server certificate as a valid gateway certificate.
    """
    staging = paths.pki_staging_dir
    if not staging.exists():
        return None
    try:
        pem = (staging / paths.server_cert.name).read_bytes()
        fingerprint = certificate_facts(x509.load_pem_x509_certificate(pem)).fingerprint_sha256
    except (OSError, ValueError):
        fingerprint = None  # the crash came before the files were complete
    with session(engine, write=False) as s:
        committed = _committed_init(s, fingerprint)
    if committed is None:
        shutil.rmtree(staging)
        return None
    _refuse_foreign_pki_folder(paths)
    _move_into_place(paths)
    return committed


def _committed_init(s: Session, server_fingerprint: str | None) -> GatewaySettings | None:
    if server_fingerprint is None:
        return None
    try:
        settings = get_settings(s)
    except NotFoundError:
        return None
    servers = list_certificates(s, kind="server")
    if any(row.fingerprint_sha256 == server_fingerprint for row in servers):
        return settings
    return None


def _refuse_foreign_pki_folder(paths: DataPaths) -> None:
    """The staging folder can only be renamed onto nothing or an empty ``pki/``."""
    if paths.pki_dir.is_dir() and any(paths.pki_dir.iterdir()):
        raise LifecycleError(
            f"{paths.pki_dir} holds files but no CA; move it away and run `sslvpn init` again"
        )


def _move_into_place(paths: DataPaths) -> None:
    rename_directory(paths.pki_staging_dir, paths.pki_dir)


def issue_client(
    engine: Engine,
    paths: DataPaths,
    *,
    user_name: str,
    device: str | None = None,
    days: int = CLIENT_DAYS,
    actor: str,
    source_address: str | None = None,
    ca_passphrase: str | None = None,
    now: datetime | None = None,
) -> Certificate:
    """A new client certificate (with its key and tls-crypt-v2 client key) for a user."""
    now = now or utcnow()
    device = checked_device(device)
    checked_days(days)
    ca = open_ca(paths, ca_passphrase)
    with session(engine, write=False) as s:
        user = _enabled_user(get_user(s, name=user_name))
        _refuse_new_device(s, user, device, now)  # before the key is made, and again below
    # made before the writer lock is taken: other writers never wait for an RSA key
    material = _client_material(ca, paths, user.name, device, days, now)
    with session(engine, write=True) as s:
        user = _enabled_user(get_user(s, name=user_name))  # still enabled
        _refuse_new_device(s, user, device, now)
        row = _store_client(s, material, user, device)
        record_audit(
            s,
            actor=actor,
            action="certificate.issue",
            target=row.serial,
            at=now,
            source_address=source_address,
            detail=f"user={user.name} device={device or '-'}",
        )
    return row


def renew(
    engine: Engine,
    paths: DataPaths,
    *,
    serial: str,
    days: int | None = None,
    overlap_days: int = RENEWAL_OVERLAP_DAYS,
    actor: str,
    source_address: str | None = None,
    ca_passphrase: str | None = None,
    now: datetime | None = None,
) -> Certificate:
    """Issue a replacement for a valid certificate.

    ``days`` defaults to the old certificate's lifetime. A client's old certificate keeps
    working (so the device is not cut off before it imports the new profile) until the new
    one first connects or ``overlap_days`` pass, then it is revoked with reason superseded
    (`retire_superseded`); with no overlap, at once. Its import links stop working now.
    For the gateway's certificate the new key and certificate replace the files (same CN,
    so existing profiles keep matching) and the old one is superseded; the gateway picks
    them up when it restarts.
    """
    now = now or utcnow()
    if not 0 <= overlap_days <= MAX_OVERLAP_DAYS:
        raise LifecycleError(f"the overlap must be 0 to {MAX_OVERLAP_DAYS} days")
    ca = open_ca(paths, ca_passphrase)
    files = FileBatch()
    try:
        with session(engine, write=True) as s:
            old = get_certificate(s, serial=serial)
            if old.status != "valid":
                raise LifecycleError(f"certificate {old.serial} is {old.status}, not valid")
            if old.superseded_by is not None:
                raise LifecycleError(f"certificate {old.serial} was already renewed as "
                                     f"{old.superseded_by}; renew that one")
            lifetime = days if days is not None else max(1, (old.not_after - old.not_before).days)
            checked_days(lifetime)
            detail = ""
            if old.kind == "server":
                new = _renew_server(s, ca, paths, files, old.subject_cn, lifetime, now)
                mark_superseded(s, serial=old.serial, by_serial=new.serial)
            elif old.user_id is None:
                raise LifecycleError(f"certificate {old.serial} belongs to no user")
            else:
                user = _enabled_user(get_user_by_id(s, user_id=old.user_id))
                material = _client_material(ca, paths, user.name, old.device, lifetime, now)
                new = _store_client(s, material, user, old.device)
                until = now + timedelta(days=overlap_days)
                begin_overlap(s, serial=old.serial, by_serial=new.serial, until=until)
                detail = f" old valid until {until:%Y-%m-%d %H:%M:%S}Z"
                if overlap_days == 0:
                    _retire(s, ca, paths, [old], actor, now)
            record_audit(
                s,
                actor=actor,
                action="certificate.renew",
                target=old.serial,
                at=now,
                source_address=source_address,
                detail=f"new={new.serial}{detail}",
            )
    except BaseException:
        files.undo()
        raise
    if overlap_days == 0 and old.kind == "client":
        _publish_after_revocation(paths, engine, "revoked")
    return new


def retire_superseded(
    engine: Engine,
    paths: DataPaths,
    *,
    actor: str = "service",
    ca_passphrase: str | None = None,
    now: datetime | None = None,
) -> list[Certificate]:
    """Revoke (reason superseded) every renewed certificate whose overlap ended: its
    overlap period passed, or the gateway saw its renewal connect. One cheap read when
    there is nothing to do; `serve` calls it every few seconds."""
    now = now or utcnow()
    with session(engine, write=False) as s:
        if not overlaps_due(s, now=now):
            return []
    ca = open_ca(paths, ca_passphrase)
    with session(engine, write=True) as s:
        due = overlaps_due(s, now=now)  # another node may have retired them meanwhile
        if due:
            _retire(s, ca, paths, due, actor, now)
    if due:
        _publish_after_revocation(paths, engine, "retired superseded certificates")
    return due


def _retire(
    s: Session,
    ca: CertificateAuthority,
    paths: DataPaths,
    rows: Sequence[Certificate],
    actor: str,
    now: datetime,
) -> None:
    """Revoke renewed certificates with reason superseded (as of their overlap's end) and
    sign the CRL in the caller's transaction."""
    for row in rows:
        at = min(row.overlap_until or now, now)
        mark_revoked(s, serial=row.serial, reason="superseded", at=at)
        record_audit(s, actor=actor, action="certificate.retire", target=row.serial, at=now,
                     detail=f"superseded by {row.superseded_by}")
    sign_crl(s, ca, paths, now=now)


def _publish_after_revocation(paths: DataPaths, engine: Engine, done: str) -> None:
    """The CRL files follow the committed store; a failure is one line naming the fix."""
    try:
        publish_crl(paths, engine)
    except OSError as exc:
        raise LifecycleError(
            f"{done}, but the CRL files could not be written ({exc.strerror or exc}); "
            "`sslvpn crl` writes them again"
        ) from None


def find_serial(s: Session, text: str) -> str | None:
    """The stored serial of a certificate named by a serial in any usual form (see
    `serial_forms`), or None."""
    for form in serial_forms(text):
        try:
            return get_certificate(s, serial=form).serial
        except NotFoundError:
            continue
    return None


def certificates_named(s: Session, common_name: str, *, now: datetime) -> list[Certificate]:
    """The unrevoked, unexpired client certificates with this CN (``alice.laptop``), the
    current one last (during a renewal's overlap there are two)."""
    rows = list_certificates(s, kind="client")
    return sorted(
        (r for r in rows if r.subject_cn == common_name and r.status == "valid"
         and r.not_after > now),
        key=lambda r: (r.superseded_by is None, r.created_at),
    )


def revoke(
    engine: Engine,
    paths: DataPaths,
    *,
    serial: str | None = None,
    user_name: str | None = None,
    common_name: str | None = None,
    reason: str = "unspecified",
    actor: str,
    source_address: str | None = None,
    ca_passphrase: str | None = None,
    now: datetime | None = None,
) -> list[Certificate]:
    """Revoke one certificate, every unexpired one of a user, or those with a CN, and
    re-sign the CRL."""
    if sum(given is not None for given in (serial, user_name, common_name)) != 1:
        raise LifecycleError("name exactly one of a serial, a user or a CN to revoke")
    if reason not in REVOCATION_REASONS:
        raise LifecycleError(f"unknown reason {reason!r}; one of: {', '.join(REVOCATION_REASONS)}")
    now = now or utcnow()
    ca = open_ca(paths, ca_passphrase)
    with session(engine, write=True) as s:
        targets = _revocation_targets(s, serial, user_name, common_name, now)
        for row in targets:
            mark_revoked(s, serial=row.serial, reason=reason, at=now)
            revoke_import_tokens_for_certificate(s, serial=row.serial)
            record_audit(
                s,
                actor=actor,
                action="certificate.revoke",
                target=row.serial,
                at=now,
                source_address=source_address,
                detail=f"reason={reason}",
            )
        sign_crl(s, ca, paths, now=now)
    _publish_after_revocation(paths, engine, "revoked")  # committed: the files follow
    return targets


def _refuse_new_device(s: Session, user: User, device: str | None, now: datetime) -> None:
    """A device has one certificate (a second one for the same name is a renewal), and a
    user holds at most their limit of devices."""
    current = [row for row in list_certificates(s, user_id=user.id, kind="client",
                                                status="valid")
               if row.not_after > now and row.superseded_by is None]
    for row in current:
        if row.device == device:
            which = f"device {device!r}" if device else "no device name"
            raise LifecycleError(
                f"user {user.name!r} already has a valid certificate for {which} "
                f"({row.serial}); renew it instead: sslvpn cert renew {row.subject_cn}"
            )
    limit = effective_limits(user, get_settings(s)).devices
    if len(current) >= limit:
        raise LifecycleError(
            f"user {user.name!r} has {len(current)} valid devices, the most allowed ({limit}); "
            "revoke one or raise the limit (sslvpn user limits)"
        )




def _enabled_user(user: User) -> User:
    if user.disabled:
        raise LifecycleError(f"user {user.name!r} is disabled")
    return user


def _refuse_existing_settings(s: Session) -> None:
    try:
        get_settings(s)
    except NotFoundError:
        return
    raise LifecycleError("the database already holds a gateway; use a fresh database")


@dataclass(frozen=True)
class _ClientMaterial:
    """A signed client certificate with its key and tls-crypt-v2 client key, not yet stored."""

    issued: IssuedCertificate = field(repr=False)
    tls_crypt_v2_key: str = field(repr=False)


def _client_material(
    ca: CertificateAuthority,
    paths: DataPaths,
    user_name: str,
    device: str | None,
    days: int,
    now: datetime,
) -> _ClientMaterial:
    """Sign a client certificate and wrap a tls-crypt-v2 client key bound to its serial."""
    with file_refusals():
        server_key = keyfiles.read_tls_crypt_v2_server_key(
            paths.tls_crypt_v2_server_key, keyfiles.TLS_CRYPT_V2
        )
    common_name = user_name if device is None else f"{user_name}.{device}"
    issued = issue_client_certificate(ca, common_name=common_name, now=now, days=days)
    facts = certificate_facts(issued.certificate)
    client_key = generate_static_key()
    # USER metadata = the serial, so the server can tie a tls-crypt-v2 key to its certificate.
    metadata = bytes([METADATA_TYPE_USER]) + facts.serial.encode("ascii")
    wkc = wrap_client_key(server_key, client_key, metadata)
    return _ClientMaterial(issued, format_tls_crypt_v2_client_key(client_key, wkc))


def _store_client(
    s: Session, material: _ClientMaterial, user: User, device: str | None
) -> Certificate:
    return _store_certificate(
        s,
        material.issued.certificate,
        kind="client",
        user_id=user.id,
        device=device,
        key_pem=private_key_pem(material.issued.private_key).decode("ascii"),
        tls_crypt_v2_key=material.tls_crypt_v2_key,
    )


def _renew_server(
    s: Session,
    ca: CertificateAuthority,
    paths: DataPaths,
    files: FileBatch,
    common_name: str,
    days: int,
    now: datetime,
) -> Certificate:
    """A new gateway certificate for today's public addresses, written over the old files."""
    addresses = get_settings(s).public_addresses
    issued = issue_server_certificate(
        ca, common_name=common_name, public_addresses=addresses, now=now, days=days
    )
    row = _store_certificate(s, issued.certificate, kind="server")
    files.write(paths.server_key, private_key_pem(issued.private_key), secret=True)
    files.write(paths.server_cert, certificate_pem(issued.certificate), secret=False)
    return row


def _store_certificate(
    s: Session,
    certificate: x509.Certificate,
    *,
    kind: str,
    user_id: int | None = None,
    device: str | None = None,
    key_pem: str | None = None,
    tls_crypt_v2_key: str | None = None,
) -> Certificate:
    facts = certificate_facts(certificate)
    return add_certificate(
        s,
        serial=facts.serial,
        subject_cn=facts.subject_cn,
        kind=kind,
        not_before=facts.not_before,
        not_after=facts.not_after,
        fingerprint_sha256=facts.fingerprint_sha256,
        cert_pem=certificate_pem(certificate).decode("ascii"),
        user_id=user_id,
        device=device,
        key_pem=key_pem,
        tls_crypt_v2_key=tls_crypt_v2_key,
    )


def _revocation_targets(
    s: Session, serial: str | None, user_name: str | None, common_name: str | None,
    now: datetime,
) -> list[Certificate]:
    if common_name is not None:
        rows = certificates_named(s, common_name, now=now)
        if not rows:
            raise LifecycleError(f"no serial, user or valid certificate's CN is {common_name!r}")
        return rows
    if serial is not None:
        row = get_certificate(s, serial=serial)
        if row.kind != "client":
            raise LifecycleError(f"certificate {row.serial} is the gateway's; re-run init instead")
        return [row]
    user = get_user(s, name=str(user_name))
    rows = [
        row
        for row in list_certificates(s, user_id=user.id, kind="client")
        if row.status != "revoked" and row.not_after > now
    ]
    if not rows:
        raise LifecycleError(f"user {user.name!r} has no certificate to revoke")
    return rows
