"""Portal logins in the store: every node's portal serves any user, a restart logs nobody out;
and the fleet's key for the login form's CSRF token.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 18:00:00
"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import sslvpn.store.types

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "portallogin",
        sa.Column("id_hash", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sslvpn.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], name=op.f("fk_portallogin_user_id_user"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_portallogin")),
    )
    with op.batch_alter_table("portallogin", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_portallogin_last_seen"), ["last_seen"], unique=False)
        batch_op.create_index(batch_op.f("ix_portallogin_user_id"), ["user_id"], unique=False)
    key = op.create_table(
        "portalkey",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("secret", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portalkey")),
    )
    op.bulk_insert(key, [{"id": 1, "secret": secrets.token_hex(32)}])


def downgrade() -> None:
    op.drop_table("portalkey")
    with op.batch_alter_table("portallogin", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_portallogin_user_id"))
        batch_op.drop_index(batch_op.f("ix_portallogin_last_seen"))
    op.drop_table("portallogin")
