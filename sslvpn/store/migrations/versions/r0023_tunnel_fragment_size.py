"""Per-tunnel IKE fragment size: the largest IP datagram of an RFC 7383 fragment we send.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-08 03:40:00

Existing tunnels get 1280 bytes, the size every tunnel used until now (and strongSwan's).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | Sequence[str] | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("vpntunnel", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fragment_size", sa.Integer(), nullable=False,
                                      server_default="1280"))


def downgrade() -> None:
    with op.batch_alter_table("vpntunnel", schema=None) as batch_op:
        batch_op.drop_column("fragment_size")
