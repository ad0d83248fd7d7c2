"""Named queries a metrics scrape asks the store: what expires when, how old each heartbeat
is. Small aggregates (one row each), cheap enough for every scrape at 10,000 certificates.
Like `queries`, every function takes the `Session` first and never commits.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from sslvpn.store.models import Certificate, Node, SignedCrl
from sslvpn.store.node_queries import database_now


def expiry_times(s: Session) -> dict[str, datetime]:
    """When the earliest valid client certificate and the stored CRL (its nextUpdate)
    expire; a kind with nothing stored is absent."""
    found: dict[str, datetime] = {}
    earliest = s.connection().execute(
        select(func.min(col(Certificate.not_after)))
        .where(col(Certificate.kind) == "client", col(Certificate.status) == "valid")
    ).scalar_one()
    if earliest is not None:
        found["earliest_client"] = earliest
    crl = s.exec(select(SignedCrl.next_update).order_by(col(SignedCrl.number).desc())).first()
    if crl is not None:
        found["crl_next_update"] = crl
    return found


def heartbeat_ages(s: Session) -> dict[str, float | None]:
    """Seconds since each node's last heartbeat on the database's clock (None: never beat)."""
    now = database_now(s)
    return {node.name: (now - node.heartbeat_at).total_seconds()
            if node.heartbeat_at is not None else None
            for node in s.exec(select(Node)).all()}
