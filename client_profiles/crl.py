"""The CRL: signed into the store, then published to pki/crl.pem and pki/crl.der.

The store is the truth and the files are derived from it. Whatever changes what is
revoked signs a new CRL (numbered one above the stored one) in the same transaction
(`sign_crl`); only after the commit are the files written from the store (`publish_crl`),
each atomically, under a lock on the pki folder so a slower publisher never puts back an
older CRL. A crash between the commit and the files, or between the two files, leaves
files that disagree with the store: `crl_disagreement` says so and `republish_crl` mends
it. `serve` does that at start and daily (`mend_crl`, `refresh_crl`), the CLI before it
reads them.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Engine
from sqlmodel import Session

from client_profiles.pki import (
    CertificateAuthority,
    RevokedEntry,
    WrongPassphrase,
    build_crl,
    crl_number_of,
)
from client_profiles.pkifiles import LifecycleError, open_ca, require_initialised
from sslvpn.config import DataPaths, write_public_file
from sslvpn.store import StoreError
from sslvpn.store.db import session
from sslvpn.store.models import SignedCrl, utcnow
from sslvpn.store.queries import (
    get_settings,
    get_signed_crl,
    record_audit,
    revoked_certificates,
    save_signed_crl,
)

# Re-sign the CRL once less than this share of its validity is left.
CRL_REFRESH_FRACTION = 0.5


@dataclass(frozen=True)
class CrlState:
    """What `refresh_crl` found or did."""

    refreshed: bool
    number: int
    next_update: datetime


def sign_crl(s: Session, ca: CertificateAuthority, paths: DataPaths, *, now: datetime) -> SignedCrl:
    """Sign a CRL of every certificate the store calls revoked and store it in ``s``'s
    transaction; the caller publishes it after the commit."""
    stored = get_signed_crl(s)
    number = (stored.number if stored is not None else _number_on_disk(paths)) + 1
    entries = [
        RevokedEntry(
            serial=row.serial,
            revoked_at=row.revoked_at or now,
            reason=row.revocation_reason or "unspecified",
        )
        for row in revoked_certificates(s)
    ]
    crl = build_crl(ca, revoked=entries, number=number, now=now, days=get_settings(s).crl_days)
    return save_signed_crl(
        s, number=number, der=crl.der, last_update=crl.last_update, next_update=crl.next_update
    )


def publish_crl(paths: DataPaths, engine: Engine) -> None:
    """Write the stored CRL to crl.der and crl.pem wherever they differ from it."""
    with _publishing(paths):
        with session(engine, write=False) as s:
            stored = get_signed_crl(s)
        if stored is None:
            raise LifecycleError("the store holds no CRL yet; `sslvpn crl` signs one")
        for path, data in _derived_files(paths, stored.der):
            if _contents(path) != data:
                write_public_file(path, data)


def crl_disagreement(paths: DataPaths, engine: Engine) -> str | None:
    """Why the CRL files or the stored CRL disagree with what the store calls revoked, in
    one line; None when everything agrees."""
    with session(engine, write=False) as s:
        stored = get_signed_crl(s)
        problem = _store_problem(s, stored)
    if problem is not None or stored is None:
        return problem
    stale = [path.name for path, data in _derived_files(paths, stored.der)
             if _contents(path) != data]
    if stale:
        return f"{' and '.join(stale)} {'do' if len(stale) > 1 else 'does'} not hold " \
               f"CRL {stored.number} of the store"
    return None


def republish_crl(
    paths: DataPaths,
    engine: Engine,
    *,
    actor: str = "cli",
    ca_passphrase: str | None = None,
    now: datetime | None = None,
) -> str | None:
    """Make the CRL files agree with the store again; returns what disagreed (None: all
    agreed). Re-signs (and so needs the CA key) only when the stored CRL itself lags."""
    problem = crl_disagreement(paths, engine)
    if problem is None:
        return None
    require_initialised(paths)
    with session(engine, write=False) as s:
        must_sign = _store_problem(s, get_signed_crl(s)) is not None
    if must_sign:
        now = now or utcnow()
        ca = open_ca(paths, ca_passphrase)
        with session(engine, write=True) as s:
            if _store_problem(s, get_signed_crl(s)) is not None:  # nobody mended it meanwhile
                signed = sign_crl(s, ca, paths, now=now)
                record_audit(s, actor=actor, action="crl.republish", target=str(signed.number),
                             at=now, detail=problem)
    publish_crl(paths, engine)
    return problem


@dataclass(frozen=True)
class Mending:
    """What `mend_crl` found disagreeing (None: nothing) and why it could not mend it."""

    problem: str | None
    failure: str | None = None


def mend_crl(paths: DataPaths, engine: Engine, *, actor: str) -> Mending:
    """`republish_crl` for callers that go on when it fails (serve's start, a report in a
    read-only data folder). A folder without a CA has nothing to mend."""
    if not paths.ca_cert.is_file():
        return Mending(None)
    problem = None
    try:
        problem = crl_disagreement(paths, engine)
        if problem is not None:
            republish_crl(paths, engine, actor=actor)
    except (LifecycleError, WrongPassphrase, StoreError, OSError) as exc:
        said = problem or "the CRL files could not be checked"
        return Mending(said, str(exc) or type(exc).__name__)
    return Mending(problem)


def refresh_crl(
    paths: DataPaths,
    engine: Engine,
    *,
    force: bool = False,
    actor: str = "service",
    ca_passphrase: str | None = None,
    now: datetime | None = None,
) -> CrlState:
    """Re-sign the CRL when less than half its validity is left (or when forced), and
    re-publish files that disagree with the store.

    The gateway calls this at start and daily, so a CRL never reaches its nextUpdate and
    locks every client out, and a crash's stale CRL files do not outlive a restart.
    """
    now = now or utcnow()
    require_initialised(paths)
    if not force:
        republish_crl(paths, engine, actor=actor, ca_passphrase=ca_passphrase, now=now)
        with session(engine, write=False) as s:
            stored = get_signed_crl(s)
        if stored is not None and not _due(stored, now):
            return CrlState(refreshed=False, number=stored.number, next_update=stored.next_update)
    ca = open_ca(paths, ca_passphrase)
    with session(engine, write=True) as s:
        signed = sign_crl(s, ca, paths, now=now)
        record_audit(s, actor=actor, action="crl.refresh", target=str(signed.number), at=now)
    publish_crl(paths, engine)
    return CrlState(refreshed=True, number=signed.number, next_update=signed.next_update)


def _due(stored: SignedCrl, now: datetime) -> bool:
    left = stored.next_update - now
    return left <= (stored.next_update - stored.last_update) * CRL_REFRESH_FRACTION


def _store_problem(s: Session, stored: SignedCrl | None) -> str | None:
    """Whether the stored CRL lists exactly the certificates the store calls revoked."""
    if stored is None:
        return "the store holds no signed CRL"
    revoked = {row.serial for row in revoked_certificates(s)}
    listed = {format(entry.serial_number, "x") for entry in x509.load_der_x509_crl(stored.der)}
    if listed == revoked:
        return None
    missing, extra = sorted(revoked - listed), sorted(listed - revoked)
    said = [f"omits revoked {', '.join(missing)}" if missing else "",
            f"lists unrevoked {', '.join(extra)}" if extra else ""]
    return f"the stored CRL {stored.number} " + " and ".join(part for part in said if part)


def _derived_files(paths: DataPaths, der: bytes) -> list[tuple[Path, bytes]]:
    """crl.der then crl.pem, as they should read for the stored DER."""
    pem = x509.load_der_x509_crl(der).public_bytes(Encoding.PEM)
    return [(paths.crl_der, der), (paths.crl_pem, pem)]


def _contents(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _number_on_disk(paths: DataPaths) -> int:
    """The CRL number of pki/crl.pem, so the first CRL the store holds still goes up
    from what clients already have (a store from before CRLs were kept in it)."""
    try:
        return crl_number_of(paths.crl_pem.read_bytes())
    except (OSError, ValueError):
        return 0


@contextmanager
def _publishing(paths: DataPaths) -> Iterator[None]:
    """One publisher at a time (across processes): read the store, then write the files.

    Also clears temporary files that a publisher killed mid-write left behind.
    """
    fd = os.open(paths.pki_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for leftover in paths.pki_dir.glob(".crl.*.tmp"):
            leftover.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)  # releases the lock
