"""API tokens get an optional expiry and a scope (full, read-only, issue-only); existing
tokens keep working as before (full, no expiry).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 21:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import sslvpn.store.types

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("apitoken", schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            "expires_at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("scope", sqlmodel.sql.sqltypes.AutoString(),
                                      nullable=False, server_default="full"))
        batch_op.create_check_constraint(
            "scope", "scope IN ('full', 'read-only', 'issue-only')")


def downgrade() -> None:
    with op.batch_alter_table("apitoken", schema=None) as batch_op:
        batch_op.drop_constraint("scope", type_="check")
        batch_op.drop_column("scope")
        batch_op.drop_column("expires_at")
