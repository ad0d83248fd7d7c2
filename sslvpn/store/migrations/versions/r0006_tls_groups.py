"""TLS key-exchange groups: the gateway's tls-groups setting and each session's group.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_TLS_GROUPS = "X25519MLKEM768:X25519:P-256"  # as the model's default was then


def upgrade() -> None:
    with op.batch_alter_table("gatewaysettings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tls_groups", sqlmodel.sql.sqltypes.AutoString(),
                                      nullable=False, server_default=DEFAULT_TLS_GROUPS))
    with op.batch_alter_table("vpnsessionrecord", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tls_group", sqlmodel.sql.sqltypes.AutoString(),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vpnsessionrecord", schema=None) as batch_op:
        batch_op.drop_column("tls_group")
    with op.batch_alter_table("gatewaysettings", schema=None) as batch_op:
        batch_op.drop_column("tls_groups")
