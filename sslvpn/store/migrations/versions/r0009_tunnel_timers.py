"""Per-tunnel timers (DPD, lifetimes, retransmission) and start action "trap".

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 18:00:00

Existing tunnels get the defaults of `sslvpn.ipsec.tunnel_settings.TunnelSettings`, which
keep their behaviour apart from a dead peer being noticed sooner.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FLOATS = {
    "dpd_delay": "30.0",
    "dpd_timeout": "30.0",
    "ike_lifetime": "10800.0",
    "child_lifetime": "3600.0",
    "rekey_margin": "540.0",
    "retransmit_timeout": "4.0",
    "retransmit_base": "1.8",
    "retransmit_limit": "20.0",
}
INTEGERS = {"rekey_fuzz": "100", "retransmit_tries": "5"}


def upgrade() -> None:
    with op.batch_alter_table("vpntunnel", schema=None) as batch_op:
        for name, default in FLOATS.items():
            batch_op.add_column(sa.Column(name, sa.Float(), nullable=False,
                                          server_default=default))
        for name, default in INTEGERS.items():
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=False,
                                          server_default=default))
        batch_op.add_column(sa.Column("dpd_action", sqlmodel.sql.sqltypes.AutoString(),
                                      nullable=False, server_default="restart"))
        batch_op.drop_constraint("start_action", type_="check")
        batch_op.create_check_constraint(
            "start_action", "start_action IN ('initiate', 'wait', 'trap')")
        batch_op.create_check_constraint(
            "dpd_action", "dpd_action IN ('restart', 'clear', 'none')")


def downgrade() -> None:
    op.execute("UPDATE vpntunnel SET start_action = 'initiate' WHERE start_action = 'trap'")
    with op.batch_alter_table("vpntunnel", schema=None) as batch_op:
        batch_op.drop_constraint("dpd_action", type_="check")
        batch_op.drop_constraint("start_action", type_="check")
        batch_op.create_check_constraint("start_action", "start_action IN ('initiate', 'wait')")
        for name in ("dpd_action", *INTEGERS, *FLOATS):
            batch_op.drop_column(name)
