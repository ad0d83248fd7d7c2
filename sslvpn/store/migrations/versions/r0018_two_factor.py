"""Portal two-factor sign-in: each user's TOTP secret, last accepted time step, recovery
code hashes and the admin's per-user requirement; the gateway-wide requirement.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 21:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0018"
down_revision: str | Sequence[str] | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.add_column(sa.Column("totp_secret", sqlmodel.sql.sqltypes.AutoString(),
                                      nullable=True))
        batch_op.add_column(sa.Column("totp_last_step", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("recovery_code_hashes", sa.JSON(), nullable=False,
                                      server_default="[]"))
        batch_op.add_column(sa.Column("two_factor_required", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    with op.batch_alter_table("gatewaysettings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("require_two_factor", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("gatewaysettings", schema=None) as batch_op:
        batch_op.drop_column("require_two_factor")
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.drop_column("two_factor_required")
        batch_op.drop_column("recovery_code_hashes")
        batch_op.drop_column("totp_last_step")
        batch_op.drop_column("totp_secret")
