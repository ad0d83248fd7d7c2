"""Portal logins remember their source address, so one source keeps at most its own share of
the stored logins (it cannot push everyone else's out).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07 22:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0020"
down_revision: str | Sequence[str] | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("portallogin", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_address", sqlmodel.sql.sqltypes.AutoString(),
                                      nullable=True))
        batch_op.create_index(batch_op.f("ix_portallogin_source_address"), ["source_address"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("portallogin", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_portallogin_source_address"))
        batch_op.drop_column("source_address")
