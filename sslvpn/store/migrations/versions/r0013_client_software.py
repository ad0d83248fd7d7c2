"""Each session's client software, as its peer-info said (version, platform, GUI).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 21:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("client_version", "client_platform", "client_gui")


def upgrade() -> None:
    with op.batch_alter_table("vpnsessionrecord", schema=None) as batch_op:
        for name in COLUMNS:
            batch_op.add_column(sa.Column(name, sqlmodel.sql.sqltypes.AutoString(),
                                          nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vpnsessionrecord", schema=None) as batch_op:
        for name in reversed(COLUMNS):
            batch_op.drop_column(name)
