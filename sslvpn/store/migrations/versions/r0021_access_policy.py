"""Access policy: groups, their members, access rules per group or user, and the policy's
default and revision.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-08 00:25:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import sslvpn.store.types

revision: str = "0021"
down_revision: str | Sequence[str] | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "access_group",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_group")),
    )
    with op.batch_alter_table("access_group", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_access_group_name"), ["name"], unique=True)
    op.create_table(
        "group_member",
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["access_group.id"], ondelete="CASCADE",
                                name=op.f("fk_group_member_group_id_access_group")),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE",
                                name=op.f("fk_group_member_user_id_user")),
        sa.PrimaryKeyConstraint("group_id", "user_id", name=op.f("pk_group_member")),
    )
    with op.batch_alter_table("group_member", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_group_member_user_id"), ["user_id"], unique=False)
    op.create_table(
        "access_rule",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("destination", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("protocol", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("port_low", sa.Integer(), nullable=True),
        sa.Column("port_high", sa.Integer(), nullable=True),
        sa.Column("allow", sa.Boolean(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("created_at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("protocol IN ('any', 'tcp', 'udp', 'icmp')",
                           name=op.f("ck_access_rule_protocol")),
        sa.CheckConstraint("(group_id IS NULL) <> (user_id IS NULL)",
                           name=op.f("ck_access_rule_owner")),
        sa.ForeignKeyConstraint(["group_id"], ["access_group.id"], ondelete="CASCADE",
                                name=op.f("fk_access_rule_group_id_access_group")),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE",
                                name=op.f("fk_access_rule_user_id_user")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_rule")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("access_rule", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_access_rule_group_id"), ["group_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_access_rule_user_id"), ["user_id"], unique=False)
    op.create_table(
        "access_policy",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("default", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("\"default\" IN ('all-vpc', 'nothing')",
                           name=op.f("ck_access_policy_default")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_policy")),
    )


def downgrade() -> None:
    op.drop_table("access_policy")
    with op.batch_alter_table("access_rule", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_access_rule_user_id"))
        batch_op.drop_index(batch_op.f("ix_access_rule_group_id"))
    op.drop_table("access_rule")
    with op.batch_alter_table("group_member", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_group_member_user_id"))
    op.drop_table("group_member")
    with op.batch_alter_table("access_group", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_access_group_name"))
    op.drop_table("access_group")
