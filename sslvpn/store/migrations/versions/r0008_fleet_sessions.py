"""Fleet sessions: each session record names its node, carries a kick request, and no VPN
address is live in two open records (a partial unique index).

Records a node wrote before this revision carry the node's name as ``gateway_name``; they are
given that node. Open records that share an address (a crashed gateway's leftovers) are
closed, all but the newest, so the index can be built.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIVE = sa.text("disconnected_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("vpnsessionrecord", schema=None) as batch_op:
        batch_op.add_column(sa.Column("node", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(
            sa.Column("end_requested", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.create_index(batch_op.f("ix_vpnsessionrecord_node"), ["node"], unique=False)
    op.execute("UPDATE vpnsessionrecord SET node = gateway_name "
               "WHERE gateway_name IN (SELECT name FROM node)")
    op.execute("UPDATE vpnsessionrecord SET disconnected_at = connected_at, "
               "disconnect_reason = 'address live twice at upgrade' "
               "WHERE disconnected_at IS NULL AND id NOT IN (SELECT max(id) "
               "FROM vpnsessionrecord WHERE disconnected_at IS NULL GROUP BY vpn_address)")
    op.create_index("uq_vpnsessionrecord_live_vpn_address", "vpnsessionrecord",
                    ["vpn_address"], unique=True, sqlite_where=_LIVE, postgresql_where=_LIVE)


def downgrade() -> None:
    op.drop_index("uq_vpnsessionrecord_live_vpn_address", table_name="vpnsessionrecord")
    with op.batch_alter_table("vpnsessionrecord", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vpnsessionrecord_node"))
        batch_op.drop_column("end_requested")
        batch_op.drop_column("node")
