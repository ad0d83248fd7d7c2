"""The OpenAPI 3.0 document of /api/v1, served at /api/v1/openapi.json.

Written by hand next to `web.api`; the schemathesis test checks that every response the
implementation gives matches what this document promises.
"""

from __future__ import annotations

from typing import Any

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
    texts = {
        400: "The request does not match this document",
        401: "No or unknown bearer token",
        403: "The token's owner is not an enabled administrator",
        404: "No such object",
        409: "The operation conflicts with the object's state",
    }
    return {str(code): _json(_ref("Error"), texts[code]) for code in (401, 403, *codes)}


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
    "required": ["name", "role", "email", "disabled", "created_at"],
    "properties": {
        "name": {"type": "string"},
        "role": {"type": "string", "enum": ["admin", "user"]},
        "email": NULLABLE_TEXT,
        "disabled": {"type": "boolean"},
        "created_at": DATE,
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
    },
}
REASONS = [
    "unspecified",
    "keyCompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "privilegeWithdrawn",
]
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
                        "password": {"type": "string", "minLength": 8},
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
                    {"disabled": {"type": "boolean"}, "role": {"enum": ["admin", "user"]}}
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
                "responses": {
                    "201": _json(_ref("Certificate"), "The replacement certificate"),
                    **_errors(404, 409),
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
                "responses": {
                    "200": _json({"type": "array", "items": _ref("Session")}, "Live sessions"),
                    **_errors(),
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


def document() -> dict[str, Any]:
    """The whole OpenAPI document (a fresh copy each call)."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "sslvpn API", "version": "1"},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "User": USER,
                "Certificate": CERTIFICATE,
                "Session": SESSION,
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
            },
        },
    }
