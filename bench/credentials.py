"""Client certificates for many bench clients, each its own, issued into the bench data folder.

Both servers then see distinct clients, as a real burst of users would be: our gateway ends
an older session that uses the same certificate, and OpenVPN does too without
``duplicate-cn``, so clients sharing one certificate would measure session replacement
instead of admission.
"""

from __future__ import annotations

import json
import re
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
    """``count`` certificates for user ``bench``, devices ``<prefix>0`` onwards (its device
    limit lifted: it stands for ``count`` users)."""
    from client_profiles import accounts, lifecycle
    from sslvpn.config import DataPaths, database_url
    from sslvpn.store.db import open_engine

    paths = DataPaths(topo.data_dir)
    engine = open_engine(database_url(topo.data_dir, None))
    _fast_sqlite(engine)
    try:
        accounts.set_limits(engine, name=USER, devices=accounts.MAX_LIMIT, sessions=None,
                            actor="bench")
        credentials = []
        for i in range(count):
            row = lifecycle.issue_client(engine, paths, user_name=USER, device=f"{prefix}{i}",
                                         actor="bench")
            if row.key_pem is None:
                raise RuntimeError(f"certificate {row.serial} was stored without its key")
            credentials.append((row.cert_pem, row.key_pem))
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
