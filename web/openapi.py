"""The OpenAPI 3.0 document of /api/v1, served at /api/v1/openapi.json.

Written by hand next to `web.api`; the schemathesis test checks that every response the
implementation gives matches what this document promises.
"""

from __future__ import annotations

from typing import Any

from sslvpn.ipsec.peer_config import FORMATS
from web.openapi_access import SCHEMAS as ACCESS_SCHEMAS
from web.openapi_access import access_paths
from web.openapi_fleet import SCHEMAS as FLEET_SCHEMAS
from web.openapi_fleet import fleet_paths
from web.openapi_traffic import SCHEMAS as TRAFFIC_SCHEMAS
from web.openapi_traffic import traffic_paths
from web.views.admin import REVOCATION_REASONS

JSON = "application/json"
PROFILE = "application/x-openvpn-profile"
DATE = {"type": "string", "format": "date-time"}
NULLABLE_DATE = {"type": "string", "format": "date-time", "nullable": True}
NULLABLE_TEXT = {"type": "string", "nullable": True}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    """The error answers of an operation: ``codes`` plus those every operation may give."""
    texts = {
        400: "The request does not match this document",
        401: "No, unknown or expired bearer token",
        403: "The token's owner is not an enabled administrator, or the token's scope "
             "(read-only: GET; issue-only: read and issue certificates, fetch profiles) "
             "does not cover the request",
        404: "No such object",
        409: "The operation conflicts with the object's state",
        503: "The store did not answer in time; try again after Retry-After seconds "
        "(a change may still have been made)",
    }
    answers = {str(code): _json(_ref("Error"), texts[code]) for code in (401, 403, *codes, 503)}
    answers["503"]["headers"] = {
        "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
    }
    return answers


def _body(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return {"required": bool(required), "content": {JSON: {"schema": schema}}}


def _path_param(name: str, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "schema": schema}


USER = {
    "type": "object",
    "required": ["name", "role", "email", "disabled", "created_at", "two_factor_enrolled",
                 "two_factor_required"],
    "properties": {
        "name": {"type": "string"},
        "role": {"type": "string", "enum": ["admin", "user"]},
        "email": NULLABLE_TEXT,
        "disabled": {"type": "boolean"},
        "created_at": DATE,
        "two_factor_enrolled": {"type": "boolean"},
        "two_factor_required": {
            "type": "boolean",
            "description": "required of this user (the gateway setting may require it of all)",
        },
        "password": {"type": "string", "description": "only when generated, shown once"},
    },
}
CERTIFICATE = {
    "type": "object",
    "required": ["serial", "user", "device", "subject_cn", "status", "not_before", "not_after"],
    "properties": {
        "serial": {"type": "string"},
        "user": NULLABLE_TEXT,
        "device": NULLABLE_TEXT,
        "subject_cn": {"type": "string"},
        "status": {"type": "string", "enum": ["valid", "revoked", "superseded"]},
        "not_before": DATE,
        "not_after": DATE,
        "revoked_at": NULLABLE_DATE,
        "revocation_reason": NULLABLE_TEXT,
        "superseded_by": NULLABLE_TEXT,
        "overlap_until": {**NULLABLE_DATE, "description":
                          "renewed: still works until then, or until its renewal connects"},
    },
}
SESSION = {
    "type": "object",
    "required": ["session_id", "user", "device", "real_address", "vpn_address", "connected_at"],
    "properties": {
        "session_id": {"type": "string"},
        "user": {"type": "string"},
        "device": {"type": "string"},
        "certificate_serial": {"type": "string"},
        "real_address": {"type": "string"},
        "vpn_address": {"type": "string"},
        "protocol": {"type": "string"},
        "connected_at": DATE,
        "bytes_in": {"type": "integer"},
        "bytes_out": {"type": "integer"},
        "tls_group": NULLABLE_TEXT,  # the control channel's TLS key exchange
        "node": {"type": "string", "nullable": True,
                 "description": "The fleet node holding it (null: the single implicit node)"},
        "client_version": {"type": "string", "nullable": True,
                           "description": "The client's OpenVPN version (peer-info IV_VER)"},
        "client_platform": {"type": "string", "nullable": True,
                            "description": "Its platform (IV_PLAT and IV_PLAT_VER)"},
        "client_gui": {"type": "string", "nullable": True,
                       "description": "Its app or GUI (IV_GUI_VER)"},
    },
}
REASONS = list(REVOCATION_REASONS)  # the API checks against the same list
NAME = _path_param("name")
SERIAL = _path_param("serial")


def _paths() -> dict[str, Any]:
    user_list = {"type": "array", "items": _ref("User")}
    cert_list = {"type": "array", "items": _ref("Certificate")}
    return {
        "/users": {
            "get": {
                "operationId": "listUsers",
                "responses": {"200": _json(user_list, "Every user"), **_errors()},
            },
            "post": {
                "operationId": "createUser",
                "requestBody": _body(
                    {
                        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"},
                        "role": {"type": "string", "enum": ["admin", "user"]},
                        "email": {"type": "string", "format": "email"},
                        "password": {"type": "string", "minLength": 12,
                                     "description": "refused when common or guessable"},
                    },
                    ["name"],
                ),
                "responses": {"201": _json(_ref("User"), "Created"), **_errors(400, 409)},
            },
        },
        "/users/{name}": {
            "parameters": [NAME],
            "get": {
                "operationId": "getUser",
                "responses": {"200": _json(_ref("User"), "The user"), **_errors(404)},
            },
            "patch": {
                "operationId": "updateUser",
                "requestBody": _body(
                    {"disabled": {"type": "boolean"}, "role": {"enum": ["admin", "user"]},
                     "two_factor_required": {"type": "boolean"}}
                ),
                "responses": {"200": _json(_ref("User"), "Updated"), **_errors(400, 404, 409)},
            },
            "delete": {
                "operationId": "deleteUser",
                "description": "Deletes the user and revokes their certificates.",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["certificates_revoked", "sessions_ended"],
                            "properties": {
                                "certificates_revoked": {"type": "integer"},
                                "sessions_ended": {"type": "integer"},
                            },
                        },
                        "Deleted",
                    ),
                    **_errors(404, 409),
                },
            },
        },
        "/users/{name}/two-factor/reset": {
            "parameters": [NAME],
            "post": {
                "operationId": "resetUserTwoFactor",
                "description": "Forgets the user's authenticator and recovery codes: they enrol "
                "again at their next sign-in when two-factor sign-in is required of them.",
                "responses": {"200": _json(_ref("User"), "Reset"), **_errors(404)},
            },
        },
        "/certificates": {
            "get": {
                "operationId": "listCertificates",
                "parameters": [
                    {"name": "user", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["valid", "revoked", "superseded"]},
                    },
                ],
                "responses": {"200": _json(cert_list, "Client certificates"), **_errors(400)},
            },
            "post": {
                "operationId": "issueCertificate",
                "requestBody": _body(
                    {
                        "user": {"type": "string"},
                        "device": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$"},
                        "days": {"type": "integer", "minimum": 1, "maximum": 3650},
                    },
                    ["user", "device"],
                ),
                "responses": {
                    "201": _json(_ref("Certificate"), "Issued"),
                    **_errors(400, 404, 409),
                },
            },
        },
        "/certificates/{serial}": {
            "parameters": [SERIAL],
            "get": {
                "operationId": "getCertificate",
                "responses": {"200": _json(_ref("Certificate"), "The certificate"), **_errors(404)},
            },
        },
        "/certificates/{serial}/revoke": {
            "parameters": [SERIAL],
            "post": {
                "operationId": "revokeCertificate",
                "requestBody": _body({"reason": {"type": "string", "enum": REASONS}}),
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["certificate", "sessions_ended"],
                            "properties": {
                                "certificate": _ref("Certificate"),
                                "sessions_ended": {"type": "integer"},
                            },
                        },
                        "Revoked; live sessions of the certificate ended",
                    ),
                    **_errors(400, 404, 409),
                },
            },
        },
        "/certificates/{serial}/renew": {
            "parameters": [SERIAL],
            "post": {
                "operationId": "renewCertificate",
                "requestBody": _body({"overlap_days": {
                    "type": "integer", "minimum": 0, "maximum": 365,
                    "description": "days the old certificate keeps working unless the new "
                                   "one connects first (default 7; 0 revokes it now)"}}),
                "responses": {
                    "201": _json(_ref("Certificate"), "The replacement certificate"),
                    **_errors(400, 404, 409),
                },
            },
        },
        "/certificates/{serial}/profile": {
            "parameters": [SERIAL],
            "get": {
                "operationId": "getProfile",
                "responses": {
                    "200": {
                        "description": "The inline .ovpn profile",
                        "content": {PROFILE: {"schema": {"type": "string"}}},
                    },
                    **_errors(404, 409),
                },
            },
        },
        "/sessions": {
            "get": {
                "operationId": "listSessions",
                "parameters": [
                    {
                        "name": "older_than",
                        "in": "query",
                        "description": "Only clients older than this version (e.g. 2.6), "
                        "or that sent none",
                        "schema": {"type": "string", "pattern": r"^\d{1,4}(\.\d{1,4}){0,2}$"},
                    },
                ],
                "responses": {
                    "200": _json({"type": "array", "items": _ref("Session")}, "Live sessions"),
                    **_errors(400),
                },
            },
        },
        "/sessions/{session_id}/kick": {
            "parameters": [_path_param("session_id")],
            "post": {
                "operationId": "kickSession",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["kicked"],
                            "properties": {"kicked": {"type": "boolean"}},
                        },
                        "Kicked",
                    ),
                    **_errors(404),
                },
            },
        },
    }


# Site-to-site IPsec (web.api_ipsec) --------------------------------------------------------

OBJECT_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
NULLABLE_INT = {"type": "integer", "nullable": True}
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_FIRST = r"(?:[1-9]|[1-9]\d|1[01]\d|12[0-6]|12[89]|1[3-5]\d|16[0-8]|1[7-9]\d|2[01]\d|22[0-3])"
_NOT_LINK_LOCAL = r"169\.(?:25[0-35]|2[0-4]\d|1\d\d|[1-9]?\d)"
UNICAST_ADDRESS = {
    "type": "string",
    "description": "A usable unicast address (the pattern shows IPv4; IPv6 is accepted too).",
    "pattern": rf"^(?:{_FIRST}\.{_OCTET}|{_NOT_LINK_LOCAL})\.{_OCTET}\.{_OCTET}$",
}
DELETED = _json(
    {"type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "boolean"}}},
    "Deleted",
)
NODE_NAMES = {
    "type": "array",
    "items": {"type": "string"},
    "description": "fleet nodes that may carry its tunnels, one at a time; empty: single gateway",
}
VPN_GATEWAY = {
    "type": "object",
    "required": ["name", "public_address", "bandwidth_bps", "nodes"],
    "properties": {
        "name": {"type": "string"},
        "public_address": {"type": "string"},
        "bandwidth_bps": {**NULLABLE_INT, "description": "cap for all its tunnels; null: none"},
        "nodes": NODE_NAMES,
    },
}
CUSTOMER_GATEWAY = {
    "type": "object",
    "required": ["name", "address"],
    "properties": {"name": {"type": "string"}, "address": {"type": "string"}},
}
POLICY = {
    "type": "object",
    "required": ["id", "local_cidr", "peer_cidr"],
    "properties": {
        "id": {"type": "integer"},
        "local_cidr": {"type": "string"},
        "peer_cidr": {"type": "string"},
    },
}
TUNNEL_STATUS = {
    "type": "object",
    "required": ["state", "last_error", "established_at", "spi_in", "spi_out"],
    "properties": {
        "state": {"type": "string", "enum": ["down", "connecting", "up", "elsewhere"],
                  "description": "elsewhere: another fleet node carries it (see node)"},
        "node": {**NULLABLE_TEXT, "description": "the fleet node holding it; null: single"},
        "last_error": NULLABLE_TEXT,
        "established_at": NULLABLE_DATE,
        "spi_in": NULLABLE_TEXT,
        "spi_out": NULLABLE_TEXT,
        **{
            f"{unit}_{way}": {"type": "integer"}
            for unit in ("bytes", "packets")
            for way in ("in", "out")
        },
        **{
            name: {"type": "number", "nullable": True, "description": text}
            for name, text in (
                ("ike_rekey_in", "Seconds until the IKE SA is rekeyed"),
                ("child_rekey_in", "Seconds until the current CHILD_SA is rekeyed"),
                ("child_expires_in", "Seconds until the current CHILD_SA expires"),
            )
        },
        "ike_proposal": {**NULLABLE_TEXT, "description": "negotiated IKE suite, e.g. "
                         "aes256-sha256-modp2048 (strongSwan notation)"},
        "esp_proposal": {**NULLABLE_TEXT, "description": "negotiated ESP suite"},
    },
}
START_ACTION = {"type": "string", "enum": ["initiate", "wait", "trap"],
                "description": "trap: start on the first packet for the peer"}
_SECONDS = {"type": "number"}
TUNNEL_SETTINGS = {
    "type": "object",
    "description": "Timers with strongSwan's names; durations in seconds.",
    "properties": {
        **{name: _SECONDS for name in (
            "dpd_delay", "dpd_timeout", "ike_lifetime", "child_lifetime", "rekey_margin",
            "retransmit_timeout", "retransmit_base", "retransmit_limit")},
        "dpd_action": {"type": "string", "enum": ["restart", "clear", "none"]},
        "rekey_fuzz": {"type": "integer", "description": "percent of the rekey margin"},
        "retransmit_tries": {"type": "integer"},
    },
}
_SETTING_VALUE = {"oneOf": [{"type": "number"}, {"type": "string"}],
                  "description": "seconds, or a duration such as 30s, 5m, 1h"}
SETTINGS_BODY = {
    "type": "object",
    "description": "Any of the tunnel settings; refused (400) with one line when out of range.",
    "properties": {name: _SETTING_VALUE for name in TUNNEL_SETTINGS["properties"]},
    "additionalProperties": False,
}
TUNNEL = {
    "type": "object",
    "description": "A tunnel; its pre-shared key is never returned.",
    "required": ["name", "gateway", "customer_gateway", "admin_up", "policies", "status"],
    "properties": {
        "name": {"type": "string"},
        "gateway": {"type": "string"},
        "customer_gateway": {"type": "string"},
        "peer_address": {"type": "string"},
        "ike_proposals": {"type": "string"},
        "esp_proposals": {"type": "string"},
        "start_action": START_ACTION,
        "settings": TUNNEL_SETTINGS,
        "admin_up": {"type": "boolean"},
        "policies": {"type": "array", "items": _ref("SpdPolicy")},
        "status": _ref("TunnelStatus"),
    },
}
BANDWIDTH_BODY = {"type": "integer", "minimum": 1000, "maximum": 10**13, "nullable": True}


def _listing(operation: str, schema: str, what: str) -> dict[str, Any]:
    array = {"type": "array", "items": _ref(schema)}
    return {"operationId": operation, "responses": {"200": _json(array, what), **_errors()}}


def _ipsec_paths() -> dict[str, Any]:
    base = "/ipsec"
    return {
        f"{base}/gateways": {
            "get": _listing("listVpnGateways", "VpnGateway", "Every VPN gateway"),
            "post": {
                "operationId": "createVpnGateway",
                "requestBody": _body(
                    {
                        "name": OBJECT_NAME,
                        "public_address": UNICAST_ADDRESS,
                        "bandwidth_bps": BANDWIDTH_BODY,
                        "nodes": {**NODE_NAMES, "items": OBJECT_NAME, "uniqueItems": True},
                    },
                    ["name", "public_address"],
                ),
                "responses": {
                    "201": _json(_ref("VpnGateway"), "Created"),
                    **_errors(400, 404, 409),
                },
            },
        },
        f"{base}/gateways/{{name}}": {
            "parameters": [NAME],
            "get": {
                "operationId": "getVpnGateway",
                "responses": {"200": _json(_ref("VpnGateway"), "The gateway"), **_errors(404)},
            },
            "patch": {
                "operationId": "updateVpnGateway",
                "description": "Change or lift (null) the bandwidth cap; tunnels keep their SAs.",
                "requestBody": _body({"bandwidth_bps": BANDWIDTH_BODY}),
                "responses": {
                    "200": _json(_ref("VpnGateway"), "Updated"),
                    **_errors(400, 404),
                },
            },
            "delete": {
                "operationId": "deleteVpnGateway",
                "description": "Refused (409) while tunnels use the gateway.",
                "responses": {"200": DELETED, **_errors(404, 409)},
            },
        },
        f"{base}/customer-gateways": {
            "get": _listing("listCustomerGateways", "CustomerGateway", "Every customer gateway"),
            "post": {
                "operationId": "createCustomerGateway",
                "requestBody": _body(
                    {"name": OBJECT_NAME, "address": UNICAST_ADDRESS}, ["name", "address"]
                ),
                "responses": {
                    "201": _json(_ref("CustomerGateway"), "Created"),
                    **_errors(400, 409),
                },
            },
        },
        f"{base}/customer-gateways/{{name}}": {
            "parameters": [NAME],
            "get": {
                "operationId": "getCustomerGateway",
                "responses": {
                    "200": _json(_ref("CustomerGateway"), "The customer gateway"),
                    **_errors(404),
                },
            },
            "delete": {
                "operationId": "deleteCustomerGateway",
                "description": "Refused (409) while tunnels use the customer gateway.",
                "responses": {"200": DELETED, **_errors(404, 409)},
            },
        },
        f"{base}/tunnels": {
            "get": _listing("listTunnels", "Tunnel", "Every tunnel with its live status"),
            "post": {
                "operationId": "createTunnel",
                "requestBody": _body(
                    {
                        "name": OBJECT_NAME,
                        "gateway": {"type": "string"},
                        "customer_gateway": {"type": "string"},
                        "psk": {"type": "string", "minLength": 20, "maxLength": 128},
                        "ike_proposals": {"type": "string"},
                        "esp_proposals": {"type": "string"},
                        "start_action": START_ACTION,
                        "settings": SETTINGS_BODY,
                    },
                    ["name", "gateway", "customer_gateway", "psk"],
                ),
                "responses": {
                    "201": _json(_ref("Tunnel"), "Created"),
                    **_errors(400, 404, 409),
                },
            },
        },
        f"{base}/tunnels/{{name}}": {
            "parameters": [NAME],
            "get": {
                "operationId": "getTunnel",
                "responses": {"200": _json(_ref("Tunnel"), "The tunnel"), **_errors(404)},
            },
            "patch": {
                "operationId": "updateTunnel",
                "description": "The admin switch, start action and timers (merged over the "
                "stored ones); the running gateway follows them without renegotiating.",
                "requestBody": _body({"admin_up": {"type": "boolean"},
                                      "start_action": START_ACTION,
                                      "settings": SETTINGS_BODY}),
                "responses": {"200": _json(_ref("Tunnel"), "Updated"), **_errors(400, 404)},
            },
            "delete": {
                "operationId": "deleteTunnel",
                "description": "Deletes the tunnel and its SPD policies.",
                "responses": {"200": DELETED, **_errors(404)},
            },
        },
        f"{base}/tunnels/{{name}}/config": {
            "parameters": [NAME],
            "get": {
                "operationId": "getTunnelPeerConfig",
                "description": "The customer gateway's side of the tunnel, to load into the "
                "peer: strongSwan swanctl.conf or legacy ipsec.conf, Libreswan ipsec.conf, or "
                "a plain-text parameter sheet. The pre-shared key only with include_psk.",
                "parameters": [
                    {"name": "format", "in": "query", "required": True,
                     "schema": {"type": "string", "enum": list(FORMATS)}},
                    {"name": "include_psk", "in": "query", "schema": {"type": "boolean"}},
                ],
                "responses": {
                    "200": {"description": "The configuration file",
                            "content": {"text/plain": {"schema": {"type": "string"}}}},
                    **_errors(400, 404),
                },
            },
        },
        **{
            f"{base}/tunnels/{{name}}/{verb}": {
                "parameters": [NAME],
                "post": {
                    "operationId": operation,
                    "description": text + " Refused (409) when the gateway is not running "
                    "the tunnel.",
                    **({"requestBody": _body({"ike": {"type": "boolean"}})}
                       if verb == "rekey" else {}),
                    "responses": {
                        "200": _json({"type": "object", "required": ["message"],
                                      "properties": {"message": {"type": "string"}}},
                                     "What the gateway did"),
                        **_errors(400, 404, 409),
                    },
                },
            }
            for verb, operation, text in (
                ("rekey", "rekeyTunnel", "Rekey the CHILD_SA (or with ike: true the IKE SA)."),
                ("restart", "restartTunnel", "Delete the SAs and start again from IKE_SA_INIT."),
                ("down", "takeTunnelDown", "Delete the SAs; the tunnel stays down until "
                 "restarted or the peer initiates."),
            )
        },
        f"{base}/tunnels/{{name}}/policies": {
            "parameters": [NAME],
            "get": {
                "operationId": "listPolicies",
                "responses": {
                    "200": _json({"type": "array", "items": _ref("SpdPolicy")}, "Its policies"),
                    **_errors(404),
                },
            },
            "post": {
                "operationId": "addPolicy",
                "requestBody": _body(
                    {"local_cidr": {"type": "string"}, "peer_cidr": {"type": "string"}},
                    ["local_cidr", "peer_cidr"],
                ),
                "responses": {
                    "201": _json(_ref("SpdPolicy"), "Added"),
                    **_errors(400, 404, 409),
                },
            },
        },
        f"{base}/tunnels/{{name}}/policies/{{policy_id}}": {
            "parameters": [
                NAME,
                {
                    "name": "policy_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "integer"},
                },
            ],
            "delete": {
                "operationId": "deletePolicy",
                "responses": {"200": DELETED, **_errors(404)},
            },
        },
    }


def document() -> dict[str, Any]:
    """The whole OpenAPI document (a fresh copy each call)."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "sslvpn API", "version": "1"},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": {
            **_paths(),
            **_ipsec_paths(),
            **fleet_paths(_json, _errors, _body, _ref, NAME),
            **traffic_paths(_json, _errors, _ref),
            **access_paths(_json, _errors, _body, _ref, NAME),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "User": USER,
                "Certificate": CERTIFICATE,
                "Session": SESSION,
                "VpnGateway": VPN_GATEWAY,
                "CustomerGateway": CUSTOMER_GATEWAY,
                "Tunnel": TUNNEL,
                "TunnelStatus": TUNNEL_STATUS,
                "SpdPolicy": POLICY,
                **FLEET_SCHEMAS,
                **TRAFFIC_SCHEMAS,
                **ACCESS_SCHEMAS,
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
            },
        },
    }
