"""Retention: how long history is kept, when a user was disabled, session history by end.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 15:00:00

Users disabled before this revision get ``disabled_at`` = the upgrade time: their retention
period starts now, so an upgrade never deletes anyone at once.
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import sslvpn.store.types

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RETENTION_DEFAULTS = {
    "audit_retention_days": 400,
    "session_retention_days": 400,
    "import_link_retention_days": 7,
    "disabled_user_retention_days": 400,
}


def upgrade() -> None:
    with op.batch_alter_table("gatewaysettings", schema=None) as batch_op:
        for name, days in RETENTION_DEFAULTS.items():
            batch_op.add_column(
                sa.Column(name, sa.Integer(), nullable=False, server_default=str(days))
            )
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("disabled_at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=True)
        )
    user = sa.table(
        "user",
        sa.column("disabled", sa.Boolean()),
        sa.column("disabled_at", sslvpn.store.types.UTCDateTime(timezone=True)),
    )
    op.execute(
        user.update()
        .where(user.c.disabled == sa.true())
        .values(disabled_at=datetime.now(UTC))  # bound through UTCDateTime, as the app writes
    )
    with op.batch_alter_table("vpnsessionrecord", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_vpnsessionrecord_disconnected_at"), ["disconnected_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("vpnsessionrecord", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vpnsessionrecord_disconnected_at"))
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.drop_column("disabled_at")
    with op.batch_alter_table("gatewaysettings", schema=None) as batch_op:
        for name in reversed(RETENTION_DEFAULTS):
            batch_op.drop_column(name)
