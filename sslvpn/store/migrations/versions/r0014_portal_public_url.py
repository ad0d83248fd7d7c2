"""The portal's public URL in the settings: import links and QR codes are built from it, never
from the request's Host header.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 21:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("gatewaysettings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("portal_public_url", sqlmodel.sql.sqltypes.AutoString(),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gatewaysettings", schema=None) as batch_op:
        batch_op.drop_column("portal_public_url")
