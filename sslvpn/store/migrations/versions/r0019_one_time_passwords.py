"""One-time passwords: a generated password (the first admin's, an admin's reset) is changed
at the first login and refused 24 h after it was made.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 22:00:00

Existing passwords are the users' own (no expiry).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import sslvpn.store.types

revision: str = "0019"
down_revision: str | Sequence[str] | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.add_column(sa.Column("password_one_time_until",
                                      sslvpn.store.types.UTCDateTime(timezone=True),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.drop_column("password_one_time_until")
