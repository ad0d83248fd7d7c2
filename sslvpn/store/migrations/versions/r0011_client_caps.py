"""OpenVPN listener caps: max-clients in all and per source address, tls-crypt-v2
force-cookie.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 21:00:00

Existing gateways get no cap beyond their pool and force-cookie on: only OpenVPN 2.5 clients
with a tls-crypt-v2 profile over UDP are refused by it (tls-crypt profiles, TCP, 2.6 and
OpenVPN 3 clients are not).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("gatewaysettings", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("max_clients", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("max_clients_per_address", sa.Integer(), nullable=False,
                      server_default="0"))
        batch_op.add_column(
            sa.Column("tls_crypt_v2_force_cookie", sa.Boolean(), nullable=False,
                      server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("gatewaysettings", schema=None) as batch_op:
        batch_op.drop_column("tls_crypt_v2_force_cookie")
        batch_op.drop_column("max_clients_per_address")
        batch_op.drop_column("max_clients")
