"""IPsec tunnels on fleet nodes: a VPN gateway's nodes and hook, a tunnel's current owner.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import sslvpn.store.types

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("vpngateway", schema=None) as batch_op:
        batch_op.add_column(sa.Column("nodes", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(
            sa.Column("on_activate", sqlmodel.sql.sqltypes.AutoString(), nullable=True)
        )
    with op.batch_alter_table("vpntunnel", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("owner_node", sqlmodel.sql.sqltypes.AutoString(), nullable=True)
        )
        batch_op.add_column(
            sa.Column("owner_since", sslvpn.store.types.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("vpntunnel", schema=None) as batch_op:
        batch_op.drop_column("owner_since")
        batch_op.drop_column("owner_node")
    with op.batch_alter_table("vpngateway", schema=None) as batch_op:
        batch_op.drop_column("on_activate")
        batch_op.drop_column("nodes")
