"""Fleet nodes: the node table (sub-pools, heartbeat) and the heartbeat timeout setting.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import sslvpn.store.types

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "node",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("public_addresses", sa.JSON(), nullable=False),
        sa.Column("pool_cidr", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("pool6_cidr", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("vpc_addresses", sa.JSON(), nullable=False),
        sa.Column("seen_vpc_addresses", sa.JSON(), nullable=False),
        sa.Column("software_version", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("heartbeat_at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node")),
        sa.UniqueConstraint("pool_cidr", name=op.f("uq_node_pool_cidr")),
    )
    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_node_name"), ["name"], unique=True)
    with op.batch_alter_table("gatewaysettings", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("heartbeat_timeout", sa.Integer(), nullable=False, server_default="15")
        )


def downgrade() -> None:
    with op.batch_alter_table("gatewaysettings", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_timeout")
    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_node_name"))
    op.drop_table("node")
