"""The OpenAPI 3.0 document of /api/v1, served at /api/v1/openapi.json.

The paths are written here; every request and response body, and every route's query
parameters, is a model in `web.api_models`, the same models the handlers (bodies) and the
API middleware (queries, `web.api.QUERIES`) validate input with, and its schema comes from
there. The schemathesis test checks that every answer matches what the document says.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from web import api_models as m
from web.openapi_access import access_paths
from web.openapi_fleet import fleet_paths
from web.openapi_traffic import traffic_paths

JSON = "application/json"
PROFILE = "application/x-openvpn-profile"
REF = "#/components/schemas/{model}"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _array(model: type[BaseModel]) -> dict[str, Any]:
    return {"type": "array", "items": _ref(model)}


def _json(schema: dict[str, Any] | type[BaseModel], description: str) -> dict[str, Any]:
    if not isinstance(schema, dict):
        schema = _ref(schema)
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    """The error answers of an operation: ``codes`` plus those every operation may give."""
    texts = {
        400: "The request does not match this document",
        401: "No, unknown or expired bearer token",
        403: "The token's owner is not an enabled administrator, or the token's scope "
             "(read-only: GET, but no profile and no PSK; issue-only: read and issue "
             "certificates, fetch profiles) "
             "does not cover the request",
        404: "No such object",
        409: "The operation conflicts with the object's state",
        503: "The store did not answer in time; try again after Retry-After seconds "
        "(a change may still have been made)",
    }
    answers = {str(code): _json(m.Error, texts[code]) for code in (401, 403, *codes, 503)}
    answers["503"]["headers"] = {
        "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
    }
    return answers


def _body(model: type[m.Body]) -> dict[str, Any]:
    required = any(field.is_required() for field in model.model_fields.values())
    return {"required": required, "content": {JSON: {"schema": _ref(model)}}}


def _path_param(name: str, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "schema": schema}


NAME = _path_param("name")
SERIAL = _path_param("serial")


def _paths() -> dict[str, Any]:
    return {
        "/users": {
            "get": {"operationId": "listUsers",
                    "responses": {"200": _json(_array(m.User), "Every user"), **_errors()}},
            "post": {"operationId": "createUser", "requestBody": _body(m.NewUser),
                     "responses": {"201": _json(m.User, "Created"), **_errors(400, 409)}},
        },
        "/users/{name}": {
            "parameters": [NAME],
            "get": {"operationId": "getUser",
                    "responses": {"200": _json(m.User, "The user"), **_errors(404)}},
            "patch": {"operationId": "updateUser", "requestBody": _body(m.UserChange),
                      "responses": {"200": _json(m.User, "Updated"), **_errors(400, 404, 409)}},
            "delete": {"operationId": "deleteUser",
                       "description": "Deletes the user and revokes their certificates.",
                       "responses": {"200": _json(m.UserDeleted, "Deleted"),
                                     **_errors(404, 409)}},
        },
        "/users/{name}/two-factor/reset": {
            "parameters": [NAME],
            "post": {
                "operationId": "resetUserTwoFactor",
                "description": "Forgets the user's authenticator and recovery codes: they enrol "
                "again at their next sign-in when two-factor sign-in is required of them.",
                "responses": {"200": _json(m.User, "Reset"), **_errors(404)},
            },
        },
        "/certificates": {
            "get": {
                "operationId": "listCertificates",
                "parameters": m.CertificateQuery.parameters(),
                "responses": {"200": _json(_array(m.Certificate), "Client certificates"),
                              **_errors(400)},
            },
            "post": {"operationId": "issueCertificate", "requestBody": _body(m.NewCertificate),
                     "responses": {"201": _json(m.Certificate, "Issued"),
                                   **_errors(400, 404, 409)}},
        },
        "/certificates/{serial}": {
            "parameters": [SERIAL],
            "get": {"operationId": "getCertificate",
                    "responses": {"200": _json(m.Certificate, "The certificate"),
                                  **_errors(404)}},
        },
        "/certificates/{serial}/revoke": {
            "parameters": [SERIAL],
            "post": {"operationId": "revokeCertificate", "requestBody": _body(m.Revocation),
                     "responses": {
                         "200": _json(m.Revoked, "Revoked; live sessions of the certificate "
                                                 "ended"),
                         **_errors(400, 404, 409)}},
        },
        "/certificates/{serial}/renew": {
            "parameters": [SERIAL],
            "post": {"operationId": "renewCertificate", "requestBody": _body(m.Renewal),
                     "responses": {"201": _json(m.Certificate, "The replacement certificate"),
                                   **_errors(400, 404, 409)}},
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
                "parameters": m.SessionQuery.parameters(),
                "responses": {"200": _json(_array(m.Session), "Live sessions"), **_errors(400)},
            },
        },
        "/sessions/{session_id}/kick": {
            "parameters": [_path_param("session_id")],
            "post": {"operationId": "kickSession",
                     "responses": {"200": _json(m.Kicked, "Kicked"), **_errors(404)}},
        },
    }


DELETED = _json(m.Deleted, "Deleted")


def _listing(operation: str, model: type[BaseModel], what: str) -> dict[str, Any]:
    return {"operationId": operation,
            "responses": {"200": _json(_array(model), what), **_errors()}}


def _ipsec_paths() -> dict[str, Any]:
    base = "/ipsec"
    return {
        f"{base}/gateways": {
            "get": _listing("listVpnGateways", m.VpnGateway, "Every VPN gateway"),
            "post": {"operationId": "createVpnGateway", "requestBody": _body(m.NewVpnGateway),
                     "responses": {"201": _json(m.VpnGateway, "Created"),
                                   **_errors(400, 404, 409)}},
        },
        f"{base}/gateways/{{name}}": {
            "parameters": [NAME],
            "get": {"operationId": "getVpnGateway",
                    "responses": {"200": _json(m.VpnGateway, "The gateway"), **_errors(404)}},
            "patch": {
                "operationId": "updateVpnGateway",
                "description": "Change or lift (null) the bandwidth cap; tunnels keep their SAs.",
                "requestBody": _body(m.VpnGatewayChange),
                "responses": {"200": _json(m.VpnGateway, "Updated"), **_errors(400, 404)},
            },
            "delete": {
                "operationId": "deleteVpnGateway",
                "description": "Refused (409) while tunnels use the gateway.",
                "responses": {"200": DELETED, **_errors(404, 409)},
            },
        },
        f"{base}/customer-gateways": {
            "get": _listing("listCustomerGateways", m.CustomerGateway, "Every customer gateway"),
            "post": {"operationId": "createCustomerGateway",
                     "requestBody": _body(m.NewCustomerGateway),
                     "responses": {"201": _json(m.CustomerGateway, "Created"),
                                   **_errors(400, 409)}},
        },
        f"{base}/customer-gateways/{{name}}": {
            "parameters": [NAME],
            "get": {"operationId": "getCustomerGateway",
                    "responses": {"200": _json(m.CustomerGateway, "The customer gateway"),
                                  **_errors(404)}},
            "delete": {
                "operationId": "deleteCustomerGateway",
                "description": "Refused (409) while tunnels use the customer gateway.",
                "responses": {"200": DELETED, **_errors(404, 409)},
            },
        },
        f"{base}/tunnels": {
            "get": _listing("listTunnels", m.Tunnel, "Every tunnel with its live status"),
            "post": {"operationId": "createTunnel", "requestBody": _body(m.NewTunnel),
                     "responses": {"201": _json(m.Tunnel, "Created"),
                                   **_errors(400, 404, 409)}},
        },
        f"{base}/tunnels/{{name}}": {
            "parameters": [NAME],
            "get": {"operationId": "getTunnel",
                    "responses": {"200": _json(m.Tunnel, "The tunnel"), **_errors(404)}},
            "patch": {
                "operationId": "updateTunnel",
                "description": "The admin switch, start action and timers (merged over the "
                "stored ones); the running gateway follows them without renegotiating.",
                "requestBody": _body(m.TunnelChange),
                "responses": {"200": _json(m.Tunnel, "Updated"), **_errors(400, 404)},
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
                "parameters": m.PeerConfigQuery.parameters(),
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
                    **({"requestBody": _body(m.Rekey)} if verb == "rekey" else {}),
                    "responses": {"200": _json(m.Message, "What the gateway did"),
                                  **_errors(400, 404, 409)},
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
            "get": {"operationId": "listPolicies",
                    "responses": {"200": _json(_array(m.SpdPolicy), "Its policies"),
                                  **_errors(404)}},
            "post": {"operationId": "addPolicy", "requestBody": _body(m.NewSpdPolicy),
                     "responses": {"201": _json(m.SpdPolicy, "Added"),
                                   **_errors(400, 404, 409)}},
        },
        f"{base}/tunnels/{{name}}/policies/{{policy_id}}": {
            "parameters": [
                NAME,
                {"name": "policy_id", "in": "path", "required": True,
                 "schema": {"type": "integer"}},
            ],
            "delete": {"operationId": "deletePolicy",
                       "responses": {"200": DELETED, **_errors(404)}},
        },
    }


def _openapi30(node: Any) -> Any:
    """Pydantic's JSON Schema in OpenAPI 3.0's dialect: null as ``nullable``, no titles."""
    if isinstance(node, list):
        return [_openapi30(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _openapi30(value) for key, value in node.items()
            if not (key == "title" and isinstance(value, str))
            and not (key == "default" and value is None)}
    null = {"type": "null"}
    if null in node.get("anyOf", []):
        rest = [alternative for alternative in node.pop("anyOf") if alternative != null]
        node.update(rest[0] if len(rest) == 1 else {"anyOf": rest})
        node["nullable"] = True
    return node


def schemas() -> dict[str, Any]:
    """Every model's schema, by name, for components/schemas."""
    _, top = models_json_schema([(model, "validation") for model in m.MODELS],
                                ref_template=REF)
    return {name: _openapi30(schema) for name, schema in top["$defs"].items()}


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
            **fleet_paths(_json, _errors, _body, _array, NAME),
            **traffic_paths(_json, _errors),
            **access_paths(_json, _errors, _body, _array, NAME),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(),
        },
    }
