"""Initial schema: every table of the store.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-24 20:53:12.982601
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import sslvpn.store.types

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "addresslease",
        sa.Column("certificate_serial", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("address", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("updated_at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("certificate_serial", name=op.f("pk_addresslease")),
        sa.UniqueConstraint("address", name=op.f("uq_addresslease_address")),
    )
    op.create_table(
        "auditentry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("target", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("source_address", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("detail", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auditentry")),
    )
    with op.batch_alter_table("auditentry", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_auditentry_action"), ["action"], unique=False)
        batch_op.create_index(batch_op.f("ix_auditentry_at"), ["at"], unique=False)

    op.create_table(
        "customergateway",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("address", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customergateway")),
    )
    with op.batch_alter_table("customergateway", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_customergateway_name"), ["name"], unique=True)

    op.create_table(
        "gatewaysettings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("public_addresses", sa.JSON(), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("protocols", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("vpc_networks", sa.JSON(), nullable=False),
        sa.Column("pool_cidr", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("pool6_cidr", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("dns_servers", sa.JSON(), nullable=False),
        sa.Column("dns_domain", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("reneg_sec", sa.Integer(), nullable=False),
        sa.Column("keepalive_interval", sa.Integer(), nullable=False),
        sa.Column("keepalive_timeout", sa.Integer(), nullable=False),
        sa.Column("client_to_client", sa.Boolean(), nullable=False),
        sa.Column("snat", sa.Boolean(), nullable=False),
        sa.Column("control_channel", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("import_token_ttl_seconds", sa.Integer(), nullable=False),
        sa.Column("crl_days", sa.Integer(), nullable=False),
        sa.Column("portal_listen", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("updated_at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "control_channel IN ('tls-crypt', 'tls-crypt-v2')",
            name=op.f("ck_gatewaysettings_control_channel"),
        ),
        sa.CheckConstraint(
            "protocols IN ('udp', 'tcp', 'both')", name=op.f("ck_gatewaysettings_protocols")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gatewaysettings")),
    )
    with op.batch_alter_table("gatewaysettings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_gatewaysettings_name"), ["name"], unique=True)

    op.create_table(
        "user",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("email", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("role", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("password_hash", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role IN ('admin', 'user')", name=op.f("ck_user_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user")),
    )
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_user_name"), ["name"], unique=True)

    op.create_table(
        "vpngateway",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("public_address", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("bandwidth_bps", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vpngateway")),
    )
    with op.batch_alter_table("vpngateway", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_vpngateway_name"), ["name"], unique=True)

    op.create_table(
        "vpnsessionrecord",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("gateway_name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("user_name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("certificate_serial", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("real_address", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("vpn_address", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("protocol", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("connected_at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("disconnected_at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("bytes_in", sa.BigInteger(), nullable=False),
        sa.Column("bytes_out", sa.BigInteger(), nullable=False),
        sa.Column("disconnect_reason", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vpnsessionrecord")),
    )
    with op.batch_alter_table("vpnsessionrecord", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_vpnsessionrecord_certificate_serial"),
            ["certificate_serial"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_vpnsessionrecord_session_id"), ["session_id"], unique=False
        )

    op.create_table(
        "apitoken",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("token_hash", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["user.id"], name=op.f("fk_apitoken_user_id_user"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_apitoken")),
        sa.UniqueConstraint("user_id", "name", name=op.f("uq_apitoken_user_id_name")),
    )
    with op.batch_alter_table("apitoken", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_apitoken_token_hash"), ["token_hash"], unique=True)
        batch_op.create_index(batch_op.f("ix_apitoken_user_id"), ["user_id"], unique=False)

    op.create_table(
        "certificate",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("serial", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("subject_cn", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("device", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("not_before", sslvpn.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("not_after", sslvpn.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("fingerprint_sha256", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("revoked_at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revocation_reason", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("superseded_by", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("cert_pem", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("key_pem", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("tls_crypt_v2_key", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("created_at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('client', 'server')", name=op.f("ck_certificate_kind")),
        sa.CheckConstraint(
            "status IN ('valid', 'revoked', 'superseded')", name=op.f("ck_certificate_status")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["user.id"], name=op.f("fk_certificate_user_id_user"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_certificate")),
    )
    with op.batch_alter_table("certificate", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_certificate_serial"), ["serial"], unique=True)
        batch_op.create_index(batch_op.f("ix_certificate_user_id"), ["user_id"], unique=False)

    op.create_table(
        "importtoken",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("certificate_serial", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("used_from", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("user_agent", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["user.id"], name=op.f("fk_importtoken_user_id_user"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_importtoken")),
    )
    with op.batch_alter_table("importtoken", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_importtoken_token_hash"), ["token_hash"], unique=True)
        batch_op.create_index(batch_op.f("ix_importtoken_user_id"), ["user_id"], unique=False)

    op.create_table(
        "vpntunnel",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("gateway_id", sa.Integer(), nullable=False),
        sa.Column("customer_gateway_id", sa.Integer(), nullable=False),
        sa.Column("psk", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("ike_proposals", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("esp_proposals", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("start_action", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("admin_up", sa.Boolean(), nullable=False),
        sa.Column("created_at", sslvpn.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "start_action IN ('initiate', 'wait')", name=op.f("ck_vpntunnel_start_action")
        ),
        sa.ForeignKeyConstraint(
            ["customer_gateway_id"],
            ["customergateway.id"],
            name=op.f("fk_vpntunnel_customer_gateway_id_customergateway"),
        ),
        sa.ForeignKeyConstraint(
            ["gateway_id"], ["vpngateway.id"], name=op.f("fk_vpntunnel_gateway_id_vpngateway")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vpntunnel")),
    )
    with op.batch_alter_table("vpntunnel", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_vpntunnel_customer_gateway_id"), ["customer_gateway_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_vpntunnel_gateway_id"), ["gateway_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_vpntunnel_name"), ["name"], unique=True)

    op.create_table(
        "spdpolicy",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tunnel_id", sa.Integer(), nullable=False),
        sa.Column("local_cidr", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("peer_cidr", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tunnel_id"],
            ["vpntunnel.id"],
            name=op.f("fk_spdpolicy_tunnel_id_vpntunnel"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_spdpolicy")),
    )
    with op.batch_alter_table("spdpolicy", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_spdpolicy_tunnel_id"), ["tunnel_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("spdpolicy", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_spdpolicy_tunnel_id"))

    op.drop_table("spdpolicy")
    with op.batch_alter_table("vpntunnel", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vpntunnel_name"))
        batch_op.drop_index(batch_op.f("ix_vpntunnel_gateway_id"))
        batch_op.drop_index(batch_op.f("ix_vpntunnel_customer_gateway_id"))

    op.drop_table("vpntunnel")
    with op.batch_alter_table("importtoken", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_importtoken_user_id"))
        batch_op.drop_index(batch_op.f("ix_importtoken_token_hash"))

    op.drop_table("importtoken")
    with op.batch_alter_table("certificate", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_certificate_user_id"))
        batch_op.drop_index(batch_op.f("ix_certificate_serial"))

    op.drop_table("certificate")
    with op.batch_alter_table("apitoken", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_apitoken_user_id"))
        batch_op.drop_index(batch_op.f("ix_apitoken_token_hash"))

    op.drop_table("apitoken")
    with op.batch_alter_table("vpnsessionrecord", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vpnsessionrecord_session_id"))
        batch_op.drop_index(batch_op.f("ix_vpnsessionrecord_certificate_serial"))

    op.drop_table("vpnsessionrecord")
    with op.batch_alter_table("vpngateway", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vpngateway_name"))

    op.drop_table("vpngateway")
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_user_name"))

    op.drop_table("user")
    with op.batch_alter_table("gatewaysettings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_gatewaysettings_name"))

    op.drop_table("gatewaysettings")
    with op.batch_alter_table("customergateway", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_customergateway_name"))

    op.drop_table("customergateway")
    with op.batch_alter_table("auditentry", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auditentry_at"))
        batch_op.drop_index(batch_op.f("ix_auditentry_action"))

    op.drop_table("auditentry")
    op.drop_table("addresslease")
