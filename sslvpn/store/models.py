"""The tables sslvpn remembers, as SQLModel classes (schema changes go through alembic).

Enumerated strings are listed in the ``*_VALUES`` tuples and guarded by CHECK constraints.
Every datetime column is `UTCDateTime`: aware UTC in, aware UTC out, on SQLite and
PostgreSQL alike. Secret-bearing fields are excluded from ``repr``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Index,
    LargeBinary,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel

from sslvpn.store.types import UTCDateTime

# Deterministic constraint names keep alembic migrations (and SQLite batch mode) stable.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ROLE_VALUES = ("admin", "user")
CERTIFICATE_KIND_VALUES = ("client", "server")
CERTIFICATE_STATUS_VALUES = ("valid", "revoked", "superseded")
PROTOCOLS_VALUES = ("udp", "tcp", "both")
CONTROL_CHANNEL_VALUES = ("tls-crypt", "tls-crypt-v2")
START_ACTION_VALUES = ("initiate", "wait", "trap")  # trap: start on the first packet
DPD_ACTION_VALUES = ("restart", "clear", "none")
API_SCOPE_VALUES = ("full", "read-only", "issue-only")
ACCESS_PROTOCOL_VALUES = ("any", "tcp", "udp", "icmp")  # sslvpn.net.access.PROTOCOLS
ACCESS_DEFAULT_VALUES = ("all-vpc", "nothing")  # sslvpn.net.access.DEFAULTS


def utcnow() -> datetime:
    """The default for every ``created_at``/``updated_at`` column."""
    return datetime.now(UTC)


def _one_of(column: str, values: tuple[str, ...]) -> CheckConstraint:
    """A CHECK constraint so a typo in a query cannot store an unknown state."""
    allowed = ", ".join(f"'{value}'" for value in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=column)


class User(SQLModel, table=True):
    """A person who may sign in to the portal and own client certificates."""

    __table_args__ = (_one_of("role", ROLE_VALUES),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    email: str | None = None
    role: str = "user"
    password_hash: str | None = Field(default=None, repr=False)
    disabled: bool = False
    disabled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # retention clock
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # limits of this user; None: the gateway settings' max_devices/max_sessions_per_user
    max_devices: int | None = None
    max_sessions: int | None = None
    # failed portal logins before this no longer count (`sslvpn user unlock`)
    unlocked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # portal two-factor sign-in (TOTP, RFC 6238): the base32 secret once enrolment is
    # confirmed, the last time step accepted (a code is never taken twice), the argon2
    # hashes of the unused recovery codes, and whether an admin requires it of this user
    totp_secret: str | None = Field(default=None, repr=False)
    totp_last_step: int | None = Field(default=None, sa_type=BigInteger)
    recovery_code_hashes: list[str] = Field(default_factory=list, sa_type=JSON, repr=False)
    two_factor_required: bool = False
    # a generated (one-time) password: refused from then on, and changed at the first login
    password_one_time_until: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Certificate(SQLModel, table=True):
    """An issued certificate; client rows keep what is needed to re-render the profile."""

    __table_args__ = (
        _one_of("kind", CERTIFICATE_KIND_VALUES),
        _one_of("status", CERTIFICATE_STATUS_VALUES),
    )

    id: int | None = Field(default=None, primary_key=True)
    serial: str = Field(unique=True, index=True)  # lowercase hex
    subject_cn: str
    user_id: int | None = Field(
        default=None, foreign_key="user.id", ondelete="SET NULL", index=True
    )
    device: str | None = None
    kind: str = "client"
    not_before: datetime = Field(sa_type=UTCDateTime)
    not_after: datetime = Field(sa_type=UTCDateTime)
    fingerprint_sha256: str  # lowercase hex of the DER
    status: str = "valid"
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revocation_reason: str | None = None  # RFC 5280 reason name, e.g. "keyCompromise"
    superseded_by: str | None = Field(default=None, index=True)  # serial of the renewal
    # a renewed client certificate stays valid until this (end of the overlap, or the
    # renewal's first connection), then it is revoked with reason superseded
    overlap_until: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    cert_pem: str
    key_pem: str | None = Field(default=None, repr=False)
    tls_crypt_v2_key: str | None = Field(default=None, repr=False)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class SignedCrl(SQLModel, table=True):
    """The newest CRL the CA signed (one row). The store is the truth: it is signed in the
    transaction that changes what is revoked, and pki/crl.pem and crl.der are copies."""

    id: int | None = Field(default=None, primary_key=True)
    number: int = Field(sa_type=BigInteger)  # CRLNumber, only ever increases
    der: bytes = Field(sa_type=LargeBinary)
    last_update: datetime = Field(sa_type=UTCDateTime)
    next_update: datetime = Field(sa_type=UTCDateTime)


class GatewaySettings(SQLModel, table=True):
    """What an operator configures for one gateway; lists are stored as JSON."""

    __table_args__ = (
        _one_of("protocols", PROTOCOLS_VALUES),
        _one_of("control_channel", CONTROL_CHANNEL_VALUES),
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(default="default", unique=True, index=True)
    public_addresses: list[str] = Field(default_factory=list, sa_type=JSON)
    port: int = 1194
    protocols: str = "udp"
    vpc_networks: list[str] = Field(default_factory=list, sa_type=JSON)
    pool_cidr: str = "10.8.0.0/24"
    pool6_cidr: str | None = None
    dns_servers: list[str] = Field(default_factory=list, sa_type=JSON)
    dns_domain: str | None = None
    reneg_sec: int = 3600
    # pushed ping/ping-restart: a client of a dead node restarts within 12 s and is on a
    # live node within 30 s, a vanished host's too (see README "Running several nodes")
    keepalive_interval: int = 5
    keepalive_timeout: int = 12
    client_to_client: bool = False
    snat: bool = False
    control_channel: str = "tls-crypt"
    # OpenVPN's tls-groups, OpenSSL names, best first: the core's DEFAULT_TLS_GROUPS (a
    # test pins that they agree; the store may not import the protocol core)
    tls_groups: str = "X25519MLKEM768:X25519:P-256"
    import_token_ttl_seconds: int = 600
    crl_days: int = 30
    portal_listen: str = "127.0.0.1:8080"
    # where phones reach the portal (import links, QR); None: the first public address
    portal_public_url: str | None = None
    # Retention in days (0 keeps forever); `sslvpn.store.retention` says what each prunes.
    audit_retention_days: int = 400
    session_retention_days: int = 400
    import_link_retention_days: int = 7
    disabled_user_retention_days: int = 400
    heartbeat_timeout: int = 15  # seconds without a heartbeat after which a node is down
    max_devices_per_user: int = 10  # valid client certificates (devices) a user may hold
    max_sessions_per_user: int = 0  # live VPN sessions at once; 0: one per device
    # OpenVPN's max-clients, in all and per source address (0: as many as the pool holds,
    # no cap per address); refuse UDP tls-crypt-v2 clients that cannot do the cookie
    # exchange (before 2.6), as 2.6's tls-crypt-v2 ... force-cookie
    max_clients: int = 0
    max_clients_per_address: int = 0
    tls_crypt_v2_force_cookie: bool = True
    require_two_factor: bool = False  # every portal user must sign in with a TOTP code
    vpn_two_factor: bool = False  # VPN clients give their password and a TOTP code too
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class AuditEntry(SQLModel, table=True):
    """One security-relevant action: who did what to which object, from where."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    actor: str
    action: str = Field(index=True)
    target: str | None = None
    source_address: str | None = None
    detail: str | None = None


class AddressLease(SQLModel, table=True):
    """The VPN address a certificate had last, so reconnecting clients keep it."""

    certificate_serial: str = Field(primary_key=True)
    address: str = Field(unique=True)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


_LIVE = text("disconnected_at IS NULL")


class VpnSessionRecord(SQLModel, table=True):
    """History of one VPN connection, for the portal and accounting; an open record is a live
    session of its node (None: the single implicit node), and no address is live twice."""

    __table_args__ = (
        Index("uq_vpnsessionrecord_live_vpn_address", "vpn_address", unique=True,
              sqlite_where=_LIVE, postgresql_where=_LIVE),
    )

    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(index=True)
    gateway_name: str
    node: str | None = Field(default=None, index=True)
    user_name: str
    certificate_serial: str = Field(index=True)
    real_address: str
    vpn_address: str
    protocol: str
    connected_at: datetime = Field(sa_type=UTCDateTime)
    disconnected_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    bytes_in: int = Field(default=0, sa_type=BigInteger)
    bytes_out: int = Field(default=0, sa_type=BigInteger)
    disconnect_reason: str | None = None
    tls_group: str | None = None  # the control channel's key exchange, e.g. X25519MLKEM768
    # the client's own peer-info (IV_VER, IV_PLAT + IV_PLAT_VER, IV_GUI_VER), for admins
    # planning to retire old clients; at most 64 printable characters each
    client_version: str | None = None
    client_platform: str | None = None
    client_gui: str | None = None
    end_requested: str | None = None  # a kick's reason, for the node holding the session


class PortalLogin(SQLModel, table=True):
    """One browser's portal session, shared by every node's portal and kept over restarts.

    The browser holds a random id; only its SHA-256 is stored, so reading the table does not
    let anyone in. Deleting the row logs the browser out everywhere at once.
    """

    id_hash: str = Field(primary_key=True)  # sha256 hex of the cookie's id
    user_id: int | None = Field(default=None, foreign_key="user.id", ondelete="CASCADE",
                                index=True)  # None: before login (a login form's CSRF token)
    data: dict[str, object] = Field(default_factory=dict, sa_type=JSON, repr=False)
    created_at: datetime = Field(sa_type=UTCDateTime)
    last_seen: datetime = Field(sa_type=UTCDateTime, index=True)
    source_address: str | None = Field(default=None, index=True)  # where it logged in from


class PortalKey(SQLModel, table=True):
    """The fleet's key for the login form's CSRF token (made by the migration): a visitor
    who is not logged in holds only a random id, so showing the login page writes nothing
    and any node checks the token."""

    id: int = Field(primary_key=True)
    secret: str = Field(repr=False)


class ImportToken(SQLModel, table=True):
    """A short-lived, single-use link to download a profile; only its hash is kept."""

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(unique=True, index=True)  # sha256 hex of the token
    user_id: int = Field(foreign_key="user.id", ondelete="CASCADE", index=True)
    certificate_serial: str
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    used_from: str | None = None
    user_agent: str | None = None
    revoked: bool = False


class ApiToken(SQLModel, table=True):
    """A bearer token for the REST API; only its hash is kept. ``scope`` bounds what it may
    do (read-only: GET; issue-only: read certificates, issue them, fetch profiles); it stops
    working at ``expires_at`` (None: when deleted)."""

    __table_args__ = (UniqueConstraint("user_id", "name"), _one_of("scope", API_SCOPE_VALUES))

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", ondelete="CASCADE", index=True)
    name: str
    token_hash: str = Field(unique=True, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    scope: str = "full"


class VpnGateway(SQLModel, table=True):
    """Our side of site-to-site IPsec tunnels."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    public_address: str  # the IKE identity; with nodes, each node speaks from its own address
    bandwidth_bps: int | None = Field(default=None, sa_type=BigInteger)
    nodes: list[str] = Field(default_factory=list, sa_type=JSON)  # empty: the single gateway
    on_activate: str | None = None  # command run by the node that takes one of its tunnels


class CustomerGateway(SQLModel, table=True):
    """The remote site's IPsec peer."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    address: str


class VpnTunnel(SQLModel, table=True):
    """One IKEv2 tunnel between a VPN gateway and a customer gateway."""

    __table_args__ = (
        _one_of("start_action", START_ACTION_VALUES),
        _one_of("dpd_action", DPD_ACTION_VALUES),
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    gateway_id: int = Field(foreign_key="vpngateway.id", index=True)
    customer_gateway_id: int = Field(foreign_key="customergateway.id", index=True)
    psk: str = Field(repr=False)
    ike_proposals: str = "default"  # strongSwan notation; "default": every suite we support
    esp_proposals: str = "default"
    start_action: str = "initiate"
    admin_up: bool = True
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # written by the node that took the tunnel's lease (the lock itself is the truth)
    owner_node: str | None = None
    owner_since: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # timers (sslvpn.ipsec.tunnel_settings.TunnelSettings), seconds; fragment size, bytes
    dpd_delay: float = 30.0
    dpd_timeout: float = 30.0
    dpd_action: str = "restart"
    ike_lifetime: float = 10800.0
    child_lifetime: float = 3600.0
    rekey_margin: float = 540.0
    rekey_fuzz: int = 100
    retransmit_timeout: float = 4.0
    retransmit_tries: int = 5
    retransmit_base: float = 1.8
    retransmit_limit: float = 20.0
    fragment_size: int = 1280


TUNNEL_TIMER_COLUMNS = (
    "dpd_delay", "dpd_timeout", "dpd_action", "ike_lifetime", "child_lifetime", "rekey_margin",
    "rekey_fuzz", "retransmit_timeout", "retransmit_tries", "retransmit_base", "retransmit_limit",
    "fragment_size",
)


class SpdPolicy(SQLModel, table=True):
    """A traffic selector pair protected by a tunnel; deleted with its tunnel."""

    id: int | None = Field(default=None, primary_key=True)
    tunnel_id: int = Field(foreign_key="vpntunnel.id", ondelete="CASCADE", index=True)
    local_cidr: str
    peer_cidr: str


class Node(SQLModel, table=True):
    """One gateway host of the fleet: where clients reach it, the client sub-pools it alone
    hands out, and its heartbeat (written by the node; "down" is decided from its age)."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    public_addresses: list[str] = Field(default_factory=list, sa_type=JSON)
    pool_cidr: str = Field(unique=True)
    pool6_cidr: str | None = None  # None: the mirror of pool_cidr in the fleet's IPv6 pool
    vpc_addresses: list[str] = Field(default_factory=list, sa_type=JSON)  # operator's next hops
    seen_vpc_addresses: list[str] = Field(default_factory=list, sa_type=JSON)  # node's report
    software_version: str | None = None
    heartbeat_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # database clock
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class AlarmSetting(SQLModel, table=True):
    """One alarm rule parameter or channel setting (``ipsec-down.seconds``, ``webhook.url``)
    that differs from the default in ``sslvpn.runtime.alarm_rules``."""

    key: str = Field(primary_key=True)
    value: str = Field(repr=False)  # webhook.secret and smtp.password live here too


class AlarmState(SQLModel, table=True):
    """An alarm that was raised (``cleared_at`` None while it holds): stored so a restart
    neither raises it again nor forgets to clear it."""

    key: str = Field(primary_key=True)  # rule/subject[/stage], e.g. ipsec-down/hq
    rule: str = Field(index=True)
    subject: str
    message: str
    raised_at: datetime = Field(sa_type=UTCDateTime)
    cleared_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)


class AlarmNotice(SQLModel, table=True):
    """One notification owed (raised or cleared), written in the transaction that changed
    the alarm; ``pending`` lists the channels it has not reached yet (an outbox)."""

    id: int | None = Field(default=None, primary_key=True)
    alarm_key: str = Field(index=True)
    event: str  # "raised" | "cleared" | "test"
    at: datetime = Field(sa_type=UTCDateTime)
    body: dict[str, object] = Field(default_factory=dict, sa_type=JSON)
    recipients: list[str] = Field(default_factory=list, sa_type=JSON)  # extra e-mail owners
    pending: list[str] = Field(default_factory=list, sa_type=JSON)
    attempts: int = 0
    next_try_at: datetime = Field(sa_type=UTCDateTime, index=True)

class TrafficBucket(SQLModel, table=True):
    """Bytes each way through one scope (a node, an IPsec tunnel, a user) in one period
    starting at ``start``: a minute as the accounting writes it, an hour once rolled up.
    The key leads with scope and name, so a chart's range is one index range scan."""

    __tablename__ = "traffic_bucket"

    scope: str = Field(primary_key=True)  # "node", "tunnel" or "user"
    name: str = Field(primary_key=True)
    start: datetime = Field(primary_key=True, sa_type=UTCDateTime)
    seconds: int = 60  # the period: 60, or 3600 once rolled up
    bytes_in: int = Field(default=0, sa_type=BigInteger)  # into the VPC (from the peer)
    bytes_out: int = Field(default=0, sa_type=BigInteger)


class AccessGroup(SQLModel, table=True):
    """A named set of users that access rules can name (`sslvpn group`)."""

    __tablename__ = "access_group"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class GroupMember(SQLModel, table=True):
    """One user in one group; goes with either."""

    __tablename__ = "group_member"

    group_id: int = Field(foreign_key="access_group.id", ondelete="CASCADE", primary_key=True)
    user_id: int = Field(foreign_key="user.id", ondelete="CASCADE", primary_key=True,
                         index=True)


class AccessRule(SQLModel, table=True):
    """Allow or deny a group's or a user's traffic to a VPC destination (`sslvpn rule`);
    ids are never reused (hit counters are kept by id)."""

    __tablename__ = "access_rule"
    __table_args__ = (
        _one_of("protocol", ACCESS_PROTOCOL_VALUES),
        CheckConstraint("(group_id IS NULL) <> (user_id IS NULL)", name="owner"),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    group_id: int | None = Field(default=None, foreign_key="access_group.id",
                                 ondelete="CASCADE", index=True)
    user_id: int | None = Field(default=None, foreign_key="user.id", ondelete="CASCADE",
                                index=True)
    destination: str  # a network inside the VPC networks
    protocol: str = "any"
    port_low: int | None = None  # tcp/udp only; inclusive
    port_high: int | None = None
    allow: bool = True
    priority: int = 100  # lower first; deny before allow on a tie
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class AccessPolicyState(SQLModel, table=True):
    """The access policy's default and its revision (one row): every change to groups,
    members or rules bumps it, and the gateways reload when it moved."""

    __tablename__ = "access_policy"
    __table_args__ = (_one_of("default", ACCESS_DEFAULT_VALUES),)

    id: int | None = Field(default=None, primary_key=True)
    default: str = "all-vpc"
    revision: int = Field(default=0, sa_type=BigInteger)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
