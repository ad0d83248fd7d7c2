"""Two-factor on the VPN itself: a gateway setting that makes every client connect with its
user's password and a TOTP code (static-challenge) besides its certificate.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-08 00:40:00

Off for existing gateways: their profiles carry no auth-user-pass.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | Sequence[str] | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("gatewaysettings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("vpn_two_factor", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("gatewaysettings", schema=None) as batch_op:
        batch_op.drop_column("vpn_two_factor")
