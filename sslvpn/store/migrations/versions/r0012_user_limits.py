"""Per-user limits (devices, simultaneous sessions) with gateway-wide defaults, and the stamp
`sslvpn user unlock` sets (failed portal logins before it no longer count).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 21:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import sslvpn.store.types

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_devices", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("max_sessions", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column(
            "unlocked_at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=True))
    with op.batch_alter_table("gatewaysettings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_devices_per_user", sa.Integer(), nullable=False,
                                      server_default="10"))
        batch_op.add_column(sa.Column("max_sessions_per_user", sa.Integer(), nullable=False,
                                      server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("gatewaysettings", schema=None) as batch_op:
        batch_op.drop_column("max_sessions_per_user")
        batch_op.drop_column("max_devices_per_user")
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.drop_column("unlocked_at")
        batch_op.drop_column("max_sessions")
        batch_op.drop_column("max_devices")
