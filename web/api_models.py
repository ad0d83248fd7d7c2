"""Every /api/v1 request and response body, described once.

The handlers validate what they are sent with the request models (`parsed`), and
`web.openapi` takes the document's schemas from all of them, so the document cannot drift
from the checks. Field rules come from where the CLI and the portal keep them.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.json_schema import SkipJsonSchema

from client_profiles.accounts import USER_NAME_PATTERN
from client_profiles.inputs import DEVICE_PATTERN, MAX_CLIENT_DAYS, MAX_KEEPALIVE
from client_profiles.lifecycle import MAX_OVERLAP_DAYS, RENEWAL_OVERLAP_DAYS
from client_profiles.passwords import MIN_PASSWORD_LENGTH
from sslvpn.ipsec import policy
from sslvpn.ipsec.peer_config import FORMATS
from sslvpn.store.models import (
    ACCESS_DEFAULT_VALUES,
    ACCESS_PROTOCOL_VALUES,
    CERTIFICATE_STATUS_VALUES,
    DPD_ACTION_VALUES,
    ROLE_VALUES,
    START_ACTION_VALUES,
)
from web.views.admin import REVOCATION_REASONS
from web.views.admin_ops import MAX_HEARTBEAT_TIMEOUT as MAX_HEARTBEAT

Omit = SkipJsonSchema[None]  # a request field that may be left out, but is never null
Model = TypeVar("Model", bound=BaseModel)


def whole(pattern: str) -> str:
    """A pattern the CLI uses with fullmatch, anchored as JSON Schema needs it."""
    return f"^{pattern}$"


def _unique(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("names must be unique")
    return values


# Patterns that are only the API's syntax (the meaning is checked by the operations).
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = rf"(?:{_OCTET}\.){{3}}{_OCTET}"
_IPV6 = r"[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*"
_FIRST = r"(?:[1-9]|[1-9]\d|1[01]\d|12[0-6]|12[89]|1[3-5]\d|16[0-8]|1[7-9]\d|2[01]\d|22[0-3])"
_NOT_LINK_LOCAL = r"169\.(?:25[0-35]|2[0-4]\d|1\d\d|[1-9]?\d)"
SCOPE_PATTERN = r"^(node|tunnel|user):[^\s]{1,200}$"  # the traffic history's scope
PATTERNS = {
    "user": whole(USER_NAME_PATTERN.pattern),
    "device": whole(DEVICE_PATTERN.pattern),
    "object": whole(policy.NAME.pattern),  # IPsec gateways, tunnels; fleet nodes
    "group": r"^[A-Za-z0-9._-]{1,64}$",
    "public_address": r"^[A-Za-z0-9.:_-]{1,253}$",
    "vpc_address": rf"^(?:{_IPV4}|{_IPV6})$",
    "pool": rf"^{_IPV4}/(?:[1-9]|1\d|2[0-9])$",  # a node needs a /29 or larger
    "pool6": rf"^{_IPV6}/(?:[1-9]|[1-9]\d|1[01]\d|12[0-8])$",
    "unicast": rf"^(?:{_FIRST}\.{_OCTET}|{_NOT_LINK_LOCAL})\.{_OCTET}\.{_OCTET}$",
    "to": r"^[0-9A-Fa-f.:]{2,45}(/[0-9]{1,3})?$",
    "port": r"^[0-9]{1,5}(-[0-9]{1,5})?$",
    "dest": r"^(\[[0-9A-Fa-f:.]{2,45}\]|[0-9A-Fa-f.:]{2,45})(:[0-9]{1,5}(/(tcp|udp))?)?$",
    "version": r"^\d{1,4}(\.\d{1,4}){0,2}$",
}
UserName = Annotated[str, Field(pattern=PATTERNS["user"])]
NodeName = Annotated[str, Field(pattern=PATTERNS["object"])]
GroupName = Annotated[str, Field(pattern=PATTERNS["group"])]
# IPsec fields checked by `sslvpn.ipsec.policy` itself, so the API says what the CLI says.
ObjectName = Annotated[str, AfterValidator(lambda name: policy.check_name(name, "the")),
                       Field(json_schema_extra={"pattern": PATTERNS["object"]})]
Unicast = Annotated[str, AfterValidator(policy.check_unicast_address), Field(
    json_schema_extra={"pattern": PATTERNS["unicast"]},
    description="A usable unicast address (the pattern shows IPv4; IPv6 is accepted too).")]
Role = Literal[ROLE_VALUES]  # type: ignore[valid-type]
StartAction = Annotated[Literal[START_ACTION_VALUES],  # type: ignore[valid-type]
                        Field(description="trap: start on the first packet for the peer")]
Bandwidth = Annotated[int, AfterValidator(policy.check_bandwidth), Field(json_schema_extra={
    "minimum": policy.MIN_BANDWIDTH_BPS, "maximum": policy.MAX_BANDWIDTH_BPS})]
# Checked with the settings page's parse_liveness (out of range there is a 409).
Seconds = Annotated[int, Field(json_schema_extra={"minimum": 1, "maximum": MAX_KEEPALIVE})]


class Body(BaseModel):
    """A request body: only the fields named, each of its JSON type (no coercion)."""

    model_config = ConfigDict(extra="forbid", strict=True, regex_engine="python-re")
    nullable: ClassVar[frozenset[str]] = frozenset()  # fields where null means something

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        """A field left out and a field sent as null are not the same request."""
        if isinstance(data, dict):
            for key, value in data.items():
                if value is None and key in cls.model_fields and key not in cls.nullable:
                    raise ValueError(f"field {key!r} may not be null")
        return data


class BadRequest(Exception):
    """The body or query is not what the OpenAPI document allows (answered 400)."""


def _complaint(error: Any) -> str:
    """One line for the first thing wrong with a body, naming the field."""
    loc = [str(part) for part in error["loc"]]
    setting = len(loc) > 1 and loc[0] == "settings"
    what, name = ("tunnel setting", loc[1]) if setting else ("field", loc[0] if loc else "")
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown {what} {name!r}"
    if kind == "string_pattern_mismatch":
        return f"{what} {name!r} does not match {error['ctx']['pattern']}"
    if kind.endswith("_type") or kind == "model_attributes_type":
        return f"{what} {name!r} has the wrong type"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    if kind == "literal_error":
        return f"{name.replace('_', ' ')} must be one of {error['ctx']['expected']}"
    return f"{what} {name!r}: {error['msg']}"


async def parsed(request: web.Request, model: type[Model]) -> Model:
    """The request's JSON body as ``model``, or `BadRequest` with one line."""
    body = await request.read()
    try:
        data = json.loads(body or b"{}")
        # a lone surrogate ("\ud800") is valid JSON but no text the store can keep
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("body holds a lone UTF-16 surrogate (\\ud800-\\udfff)") from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("body is not JSON") from None
    except RecursionError:  # thousands of nested brackets
        raise BadRequest("body is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        missing = [str(e["loc"][0]) for e in errors if e["type"] == "missing"]
        if missing:
            raise BadRequest(f"missing field(s): {', '.join(missing)}") from None
        raise BadRequest(_complaint(errors[0])) from None


# Users, certificates, sessions -------------------------------------------------------------


class NewUser(Body):
    name: UserName
    role: Role = "user"
    email: Annotated[str, Field(json_schema_extra={"format": "email"})] | Omit = None
    password: Annotated[str, Field(min_length=MIN_PASSWORD_LENGTH,
                                   description="refused when common or guessable")] | Omit = None


class UserChange(Body):
    disabled: bool | Omit = None
    role: Role | Omit = None
    two_factor_required: bool | Omit = None


class User(BaseModel):
    name: str
    role: Role
    email: str | None
    disabled: bool
    created_at: datetime
    two_factor_enrolled: bool
    two_factor_required: bool = Field(
        description="required of this user (the gateway setting may require it of all)")
    password: str | Omit = Field(None, description="only when generated, shown once")


class UserDeleted(BaseModel):
    certificates_revoked: int
    sessions_ended: int


class NewCertificate(Body):
    user: str
    device: Annotated[str, Field(pattern=PATTERNS["device"])]
    days: Annotated[int, Field(ge=1, le=MAX_CLIENT_DAYS)] = 365


class Revocation(Body):
    reason: Literal[REVOCATION_REASONS] = "unspecified"  # type: ignore[valid-type]


class Renewal(Body):
    overlap_days: int = Field(
        RENEWAL_OVERLAP_DAYS, ge=0, le=MAX_OVERLAP_DAYS,
        description="days the old certificate keeps working unless the new one connects "
                    "first (default 7; 0 revokes it now)")


class Certificate(BaseModel):
    serial: str
    user: str | None
    device: str | None
    subject_cn: str
    status: Literal[CERTIFICATE_STATUS_VALUES]  # type: ignore[valid-type]
    not_before: datetime
    not_after: datetime
    revoked_at: datetime | None = None
    revocation_reason: str | None = None
    superseded_by: str | None = None
    overlap_until: datetime | None = Field(
        None, description="renewed: still works until then, or until its renewal connects")


class Revoked(BaseModel):
    certificate: Certificate
    sessions_ended: int


class Session(BaseModel):
    session_id: str
    user: str
    device: str
    certificate_serial: str | Omit = None
    real_address: str
    vpn_address: str
    protocol: str | Omit = None
    connected_at: datetime
    bytes_in: int | Omit = None
    bytes_out: int | Omit = None
    tls_group: str | None = Field(None, description="the control channel's TLS key exchange")
    node: str | None = Field(
        None, description="The fleet node holding it (null: the single implicit node)")
    client_version: str | None = Field(
        None, description="The client's OpenVPN version (peer-info IV_VER)")
    client_platform: str | None = Field(None, description="Its platform (IV_PLAT, IV_PLAT_VER)")
    client_gui: str | None = Field(None, description="Its app or GUI (IV_GUI_VER)")


class Kicked(BaseModel):
    kicked: bool


class Deleted(BaseModel):
    deleted: bool


class Error(BaseModel):
    error: str


# Site-to-site IPsec ------------------------------------------------------------------------

NodeNames = Annotated[list[NodeName], AfterValidator(_unique), Field(
    json_schema_extra={"uniqueItems": True},
    description="fleet nodes that may carry its tunnels, one at a time; empty: single gateway")]


class NewVpnGateway(Body):
    nullable = frozenset({"bandwidth_bps"})
    name: ObjectName
    public_address: Unicast
    bandwidth_bps: Bandwidth | None = None
    nodes: NodeNames = []


class VpnGatewayChange(Body):
    nullable = frozenset({"bandwidth_bps"})
    bandwidth_bps: Bandwidth | None = None


class VpnGateway(BaseModel):
    name: str
    public_address: str
    bandwidth_bps: int | None = Field(description="cap for all its tunnels; null: none")
    nodes: list[str]


class NewCustomerGateway(Body):
    name: ObjectName
    address: Unicast


class CustomerGateway(BaseModel):
    name: str
    address: str


Setting = int | float | str | Omit  # seconds, or a duration such as 30s, 5m, 1h; or bytes


class TunnelSettingsChange(Body):
    """Any of the tunnel settings; refused (400) with one line when out of range."""

    dpd_delay: Setting = None
    dpd_timeout: Setting = None
    dpd_action: Setting = None
    ike_lifetime: Setting = None
    child_lifetime: Setting = None
    rekey_margin: Setting = None
    rekey_fuzz: Setting = None
    retransmit_timeout: Setting = None
    retransmit_tries: Setting = None
    retransmit_base: Setting = None
    retransmit_limit: Setting = None
    fragment_size: Setting = None


class TunnelSettings(BaseModel):
    """Timers with strongSwan's names; durations in seconds."""

    dpd_delay: float
    dpd_timeout: float
    dpd_action: Literal[DPD_ACTION_VALUES]  # type: ignore[valid-type]
    ike_lifetime: float
    child_lifetime: float
    rekey_margin: float
    rekey_fuzz: int = Field(description="percent of the rekey margin")
    retransmit_timeout: float
    retransmit_tries: int
    retransmit_base: float
    retransmit_limit: float
    fragment_size: int = Field(description="largest IKE datagram in bytes; larger messages "
                                           "go as RFC 7383 fragments")


class NewTunnel(Body):
    name: ObjectName
    gateway: str
    customer_gateway: str
    psk: Annotated[str, Field(json_schema_extra={  # its strength: policy.check_psk
        "minLength": policy.MIN_PSK_LENGTH, "maxLength": policy.MAX_PSK_LENGTH})]
    ike_proposals: str | Omit = None
    esp_proposals: str | Omit = None
    start_action: StartAction | Omit = None
    settings: TunnelSettingsChange = TunnelSettingsChange()


class TunnelChange(Body):
    admin_up: bool | Omit = None
    start_action: StartAction | Omit = None
    settings: TunnelSettingsChange = TunnelSettingsChange()


class Rekey(Body):
    ike: bool = False


class Message(BaseModel):
    message: str


class NewSpdPolicy(Body):
    local_cidr: str
    peer_cidr: str


class SpdPolicy(BaseModel):
    id: int
    local_cidr: str
    peer_cidr: str


class TunnelStatus(BaseModel):
    state: Literal["down", "connecting", "up", "elsewhere"] = Field(
        description="elsewhere: another fleet node carries it (see node)")
    node: str | None = Field(None, description="the fleet node holding it; null: single")
    last_error: str | None
    established_at: datetime | None
    spi_in: str | None
    spi_out: str | None
    bytes_in: int | Omit = None
    bytes_out: int | Omit = None
    packets_in: int | Omit = None
    packets_out: int | Omit = None
    ike_rekey_in: float | None = Field(None, description="Seconds until the IKE SA is rekeyed")
    child_rekey_in: float | None = Field(
        None, description="Seconds until the current CHILD_SA is rekeyed")
    child_expires_in: float | None = Field(
        None, description="Seconds until the current CHILD_SA expires")
    ike_proposal: str | None = Field(
        None, description="negotiated IKE suite, e.g. aes256-sha256-modp2048 (strongSwan "
                          "notation)")
    esp_proposal: str | None = Field(None, description="negotiated ESP suite")


class Tunnel(BaseModel):
    """A tunnel; its pre-shared key is never returned."""

    name: str
    gateway: str
    customer_gateway: str
    peer_address: str | Omit = None
    ike_proposals: str | Omit = None
    esp_proposals: str | Omit = None
    start_action: StartAction | Omit = None
    settings: TunnelSettings | Omit = None
    admin_up: bool
    policies: list[SpdPolicy]
    status: TunnelStatus


# Fleet nodes -------------------------------------------------------------------------------


class NewNode(Body):
    name: NodeName
    public_addresses: list[Annotated[str, Field(pattern=PATTERNS["public_address"])]] = Field(
        min_length=1)
    pool: Annotated[str, Field(pattern=PATTERNS["pool"])] | Omit = None
    pool6: Annotated[str, Field(pattern=PATTERNS["pool6"])] | Omit = None
    vpc_addresses: list[Annotated[str, Field(pattern=PATTERNS["vpc_address"])]] = Field(
        [], max_length=2, description="at most one per IP version")


class Node(BaseModel):
    name: str
    public_addresses: list[str]
    pool: str = Field(description="its IPv4 client sub-pool")
    pool6: str | None = Field(description="its IPv6 sub-pool; null: no IPv6 pool")
    state: Literal["up", "down"] = Field(
        description="down: no heartbeat within the heartbeat timeout")
    sessions: int = Field(description="live sessions in the store")
    software_version: str | None
    last_seen: datetime | None


class NodeRemoved(BaseModel):
    deleted: bool
    sessions_ended: int


class NodeRoute(BaseModel):
    node: str
    destination: str
    next_hop: str | None = Field(description="null: not known until the node runs")


_PING = "pushed `ping`: seconds between keepalive pings"
_RESTART = ("pushed `ping-restart`: a client reconnects (to another node if this one died) "
            "after this many silent seconds; at least twice the ping")
_HEARTBEAT = "a node without a heartbeat this long is down"
Heartbeat = Annotated[int, Field(json_schema_extra={"minimum": 3, "maximum": MAX_HEARTBEAT},
                                 description=_HEARTBEAT)]


class Keepalive(BaseModel):
    keepalive_interval: Seconds = Field(description=_PING)
    keepalive_timeout: Seconds = Field(description=_RESTART)
    heartbeat_timeout: Heartbeat


class KeepaliveChange(Body):
    keepalive_interval: Seconds | Omit = Field(None, description=_PING)
    keepalive_timeout: Seconds | Omit = Field(None, description=_RESTART)
    heartbeat_timeout: Heartbeat | Omit = None


# Traffic history ---------------------------------------------------------------------------


class TrafficPoint(BaseModel):
    start: datetime
    seconds: int = Field(description="the bucket's length: 60, or 3600 for history older "
                                     "than 30 days")
    bytes_in: int = Field(description="tunnelled IP bytes into the VPC")
    bytes_out: int = Field(description="tunnelled IP bytes back")


class TrafficSeries(BaseModel):
    scope: Literal["node", "tunnel", "user"]
    name: str
    start: datetime = Field(alias="from")
    end: datetime = Field(alias="to")
    points: list[TrafficPoint]


# Access policy -----------------------------------------------------------------------------

Protocol = Literal[ACCESS_PROTOCOL_VALUES]  # type: ignore[valid-type]
Default = Literal[ACCESS_DEFAULT_VALUES]  # type: ignore[valid-type]


class NewGroup(Body):
    name: GroupName


class AccessGroup(BaseModel):
    name: str
    members: list[str]
    rules: int = Field(description="rules naming the group")


class GroupChange(Body):
    add: list[GroupName] = []
    remove: list[GroupName] = []


class GroupMembership(BaseModel):
    user: str
    groups: list[str]


class NewRule(Body):
    """For one group or one user."""

    group: GroupName | Omit = None
    user: UserName | Omit = None
    to: Annotated[str, Field(pattern=PATTERNS["to"])]
    proto: Protocol = "any"
    port: Annotated[str, Field(pattern=PATTERNS["port"])] | Omit = None
    deny: bool = False
    priority: Annotated[int, Field(ge=0, le=1_000_000)] = 100


class AccessRule(BaseModel):
    id: int
    group: str | None = Field(description="the group it is for (or null)")
    user: str | None = Field(description="the user it is for (or null)")
    to: str = Field(description="destination network")
    proto: Protocol
    ports: str | None = Field(description="N or N-M; null: any port")
    action: Literal["allow", "deny"]
    priority: int = Field(description="lower first; deny first on a tie")
    packets: int | None = Field(description="packets it decided on this host's gateway "
                                            "(null: none attached to this portal)")


class AccessDefault(Body):
    default: Default = Field(description="what a user no rule matches reaches")


class PolicyCheck(BaseModel):
    allow: bool
    user: str
    destination: str = Field(description="as understood: ADDRESS:PORT/PROTO, or ADDRESS "
                                         "(icmp) for a ping")
    decided_by: str = Field(description="the rule, the default, or outside the VPC networks")
    rule_id: int | None
    route: str
    nodes: list[str]
    pushed_routes: list[str] = Field(description="what the user is pushed at the next connect")


# Query parameters --------------------------------------------------------------------------


class Query(BaseModel):
    """A request's query parameters: only those named, each a string of its pattern. The
    middleware validates a request's query with its route's model (`web.api.QUERIES`) and
    the OpenAPI document lists the model's fields as the operation's parameters."""

    model_config = ConfigDict(extra="forbid", regex_engine="python-re")

    @classmethod
    def parameters(cls) -> list[dict[str, Any]]:
        """The fields as OpenAPI 3.0 query parameters."""
        schema = cls.model_json_schema()
        required = set(schema.get("required", ()))
        listed = []
        for name, field in schema["properties"].items():
            field = {k: v for k, v in field.items() if k not in ("title", "default")}
            described = {"description": field.pop("description")} if "description" in field else {}
            listed.append({"name": name, "in": "query", "required": name in required,
                           **described, "schema": field})
        return listed


def parsed_query(request: web.Request, model: type[Query]) -> Query:
    """The request's query as ``model``, or `BadRequest` with one line."""
    allowed = sorted(field.alias or name for name, field in model.model_fields.items())
    if set(request.query) - set(allowed):
        raise BadRequest(f"unknown query parameter; allowed: {', '.join(allowed)}")
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        errors = exc.errors()
        missing = [str(e["loc"][0]) for e in errors if e["type"] == "missing"]
        if missing:
            raise BadRequest(f"missing query parameter(s): {', '.join(missing)}") from None
        raise BadRequest(_complaint(errors[0]).replace("field", "query parameter", 1)) from None


TrueFalse = Literal["true", "false"]
DATE_TIME: dict[str, Any] = {"format": "date-time"}


class CertificateQuery(Query):
    user: str | Omit = None
    status: Literal[CERTIFICATE_STATUS_VALUES] | Omit = None  # type: ignore[valid-type]


class SessionQuery(Query):
    older_than: Annotated[str, Field(
        pattern=PATTERNS["version"],
        description="Only clients older than this version (e.g. 2.6), or that sent none",
    )] | Omit = None


class PeerConfigQuery(Query):
    format: Literal[FORMATS]  # type: ignore[valid-type]
    include_psk: TrueFalse | Omit = None


class NodeRemovalQuery(Query):
    force: TrueFalse | Omit = None


class TrafficQuery(Query):
    scope: Annotated[str, Field(pattern=SCOPE_PATTERN,
                                description="node:NAME, tunnel:NAME or user:NAME")]
    start: str | Omit = Field(None, alias="from", json_schema_extra=DATE_TIME)
    to: str | Omit = Field(None, json_schema_extra=DATE_TIME)


class PolicyCheckQuery(Query):
    user: UserName
    dest: Annotated[str, Field(pattern=PATTERNS["dest"],
                               description="ADDRESS[:PORT[/tcp|udp]], IPv6 as "
                                           "[ADDRESS]:PORT; no port: a ping")]


MODELS: tuple[type[BaseModel], ...] = (
    NewUser, UserChange, User, UserDeleted, NewCertificate, Revocation, Renewal, Certificate,
    Revoked, Session, Kicked, Deleted, Error, NewVpnGateway, VpnGatewayChange, VpnGateway,
    NewCustomerGateway, CustomerGateway, TunnelSettingsChange, TunnelSettings, NewTunnel,
    TunnelChange, Rekey, Message, NewSpdPolicy, SpdPolicy, TunnelStatus, Tunnel, NewNode, Node,
    NodeRemoved, NodeRoute, Keepalive, KeepaliveChange, TrafficPoint, TrafficSeries, NewGroup,
    AccessGroup, GroupChange, GroupMembership, NewRule, AccessRule, AccessDefault, PolicyCheck,
)
