"""Renewal with overlap: a renewed client certificate keeps working until its renewal first
connects or ``overlap_until`` passes, then it is revoked with reason superseded.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 21:00:00

Certificates renewed before this revision keep the status superseded (refused, not on the
CRL), as they were.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import sslvpn.store.types

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("certificate", schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            "overlap_until", sslvpn.store.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_certificate_overlap_until"), ["overlap_until"],
                              unique=False)
        batch_op.create_index(batch_op.f("ix_certificate_superseded_by"), ["superseded_by"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("certificate", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_certificate_superseded_by"))
        batch_op.drop_index(batch_op.f("ix_certificate_overlap_until"))
        batch_op.drop_column("overlap_until")
