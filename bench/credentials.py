"""Client certificates for many bench clients, each its own, issued into the bench data folder.

Both servers then see distinct clients, as a real burst of users would be: our gateway ends
an older session that uses the same certificate, and OpenVPN does too without
``duplicate-cn``, so clients sharing one certificate would measure session replacement
instead of admission.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, event

from bench.vpn import USER, VpnTopology

Credential = tuple[str, str]  # certificate PEM, private key PEM


def _fast_sqlite(engine: Engine) -> None:
    """Bulk issuance for the bench only: no fsync and no journal file per certificate."""

    @event.listens_for(engine, "connect")
    def _pragma(dbapi_connection: object, record: object) -> None:
        dbapi_connection.execute("PRAGMA synchronous=OFF")  # type: ignore[attr-defined]
        dbapi_connection.execute("PRAGMA journal_mode=MEMORY")  # type: ignore[attr-defined]


def issue_clients(topo: VpnTopology, count: int, prefix: str) -> list[Credential]:
    """``count`` certificates for user ``bench``, devices ``<prefix>0`` onwards, stored in one
    transaction (its device limit lifted: it stands for ``count`` users). They share one key
    pair: each is still its own certificate (serial, CN) to the servers, and issuing them one
    by one (`lifecycle.issue_client`: a key each, the CA opened, the device limit checked
    and a transaction each) made 50,000 take hours here."""
    from client_profiles import accounts
    from client_profiles.pki import (
        certificate_facts,
        certificate_pem,
        generate_private_key,
        issue_client_certificate,
        key_type_of,
        private_key_pem,
    )
    from client_profiles.pkifiles import open_ca
    from sslvpn.config import DataPaths, database_url
    from sslvpn.store import db, queries
    from sslvpn.store.db import open_engine

    paths = DataPaths(topo.data_dir)
    ca = open_ca(paths, None)
    key = generate_private_key(key_type_of(ca.private_key))
    key_pem = private_key_pem(key).decode("ascii")
    now = datetime.now(UTC)
    engine = open_engine(database_url(topo.data_dir, None))
    _fast_sqlite(engine)
    try:
        accounts.set_limits(engine, name=USER, devices=accounts.MAX_LIMIT, sessions=None,
                            actor="bench")
        credentials = []
        with db.session(engine, write=True) as s:
            user = queries.get_user(s, name=USER)
            for i in range(count):
                device = f"{prefix}{i}"
                cert = issue_client_certificate(ca, common_name=f"{USER}.{device}", now=now,
                                                key=key).certificate
                facts = certificate_facts(cert)
                pem = certificate_pem(cert).decode("ascii")
                queries.add_certificate(
                    s, serial=facts.serial, subject_cn=facts.subject_cn, kind="client",
                    not_before=facts.not_before, not_after=facts.not_after,
                    fingerprint_sha256=facts.fingerprint_sha256, cert_pem=pem,
                    user_id=user.id, device=device, key_pem=key_pem)
                credentials.append((pem, key_pem))
        return credentials
    finally:
        engine.dispose()


def write_jsonl(credentials: list[Credential], out: Path) -> None:
    """One JSON object (cert, key) per line, mode 0600, for ``bench.loadgen``."""
    out.write_text("".join(json.dumps({"cert": cert, "key": key}) + "\n"
                           for cert, key in credentials))
    out.chmod(0o600)


def profiles_for(base: Path, credentials: list[Credential], out_dir: Path) -> list[Path]:
    """Copies of the ``base`` profile, each with one credential's inline cert and key."""
    text = base.read_text()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (cert, key) in enumerate(credentials):
        profile = _inline(_inline(text, "cert", cert), "key", key)
        path = out_dir / f"{base.stem}-{i}.ovpn"
        path.write_text(profile)
        path.chmod(0o600)
        paths.append(path)
    return paths


def _inline(profile: str, tag: str, content: str) -> str:
    block = re.compile(rf"<{tag}>\n.*?</{tag}>", re.DOTALL)
    if len(block.findall(profile)) != 1:
        raise ValueError(f"profile has no single <{tag}> block")
    return block.sub(lambda _: f"<{tag}>\n{content.strip()}\n</{tag}>", profile)
