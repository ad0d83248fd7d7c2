"""The signed CRL moves into the store (the truth); pki/crl.pem and crl.der are copies.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07 15:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import sslvpn.store.types

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "signedcrl",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("last_update", sslvpn.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("next_update", sslvpn.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signedcrl")),
    )


def downgrade() -> None:
    op.drop_table("signedcrl")
