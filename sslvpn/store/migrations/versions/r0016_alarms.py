"""Alarms: rule and channel settings, raised alarms, and the notifications owed (an outbox).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 21:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import sslvpn.store.types

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TEXT = sqlmodel.sql.sqltypes.AutoString
_AT = sslvpn.store.types.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "alarmsetting",
        sa.Column("key", _TEXT(), nullable=False),
        sa.Column("value", _TEXT(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_alarmsetting")),
    )
    op.create_table(
        "alarmstate",
        sa.Column("key", _TEXT(), nullable=False),
        sa.Column("rule", _TEXT(), nullable=False),
        sa.Column("subject", _TEXT(), nullable=False),
        sa.Column("message", _TEXT(), nullable=False),
        sa.Column("raised_at", _AT(timezone=True), nullable=False),
        sa.Column("cleared_at", _AT(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_alarmstate")),
    )
    op.create_index(op.f("ix_alarmstate_rule"), "alarmstate", ["rule"])
    op.create_index(op.f("ix_alarmstate_cleared_at"), "alarmstate", ["cleared_at"])
    op.create_table(
        "alarmnotice",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alarm_key", _TEXT(), nullable=False),
        sa.Column("event", _TEXT(), nullable=False),
        sa.Column("at", _AT(timezone=True), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("recipients", sa.JSON(), nullable=False),
        sa.Column("pending", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_try_at", _AT(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alarmnotice")),
    )
    op.create_index(op.f("ix_alarmnotice_alarm_key"), "alarmnotice", ["alarm_key"])
    op.create_index(op.f("ix_alarmnotice_next_try_at"), "alarmnotice", ["next_try_at"])


def downgrade() -> None:
    op.drop_table("alarmnotice")
    op.drop_table("alarmstate")
    op.drop_table("alarmsetting")
