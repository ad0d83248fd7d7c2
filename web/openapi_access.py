"""The access policy's paths in the OpenAPI document (groups, members, rules, the default and
the "who can reach what" check, `web.api_access`), merged into `web.openapi.document`.

A field that does not match a pattern (`web.api_models`) is a 400; a well-formed rule the
policy refuses (a destination outside the VPC networks, ports without tcp/udp) or a
destination to check that is no address or port a 409; an unknown group or user a 404.
"""

from __future__ import annotations

from typing import Any

from web import api_models as m


def access_paths(json_answer: Any, errors: Any, body: Any, array: Any,
                 name: dict[str, Any]) -> dict[str, Any]:
    """The access paths, built with `web.openapi`'s helpers (passed in to avoid a cycle)."""
    deleted = json_answer(m.Deleted, "Deleted")
    live = "Live sessions follow within 5 s; pushed routes change at the next connect."
    return {
        "/groups": {
            "get": {"operationId": "listGroups",
                    "responses": {"200": json_answer(array(m.AccessGroup), "Every group"),
                                  **errors()}},
            "post": {"operationId": "addGroup",
                     "requestBody": body(m.NewGroup),
                     "responses": {"201": json_answer(m.AccessGroup, "Added"),
                                   **errors(400, 409)}},
        },
        "/groups/{name}": {
            "parameters": [name],
            "delete": {"operationId": "deleteGroup", "description": "Its rules go with it.",
                       "responses": {"200": deleted, **errors(404)}},
        },
        "/users/{name}/groups": {
            "parameters": [name],
            "get": {"operationId": "getUserGroups",
                    "responses": {"200": json_answer(m.GroupMembership, "The groups"),
                                  **errors(404)}},
            "post": {"operationId": "changeUserGroups", "description": live,
                     "requestBody": body(m.GroupChange),
                     "responses": {"200": json_answer(m.GroupMembership, "The groups now"),
                                   **errors(400, 404)}},
        },
        "/rules": {
            "get": {"operationId": "listRules", "description": "In evaluation order.",
                    "responses": {"200": json_answer(array(m.AccessRule), "Every rule"),
                                  **errors()}},
            "post": {"operationId": "addRule",
                     "description": "For one group or one user. Refused (409) when the "
                                    "destination is outside the VPC networks or ports come "
                                    "without tcp/udp. " + live,
                     "requestBody": body(m.NewRule),
                     "responses": {"201": json_answer(m.AccessRule, "Added"),
                                   **errors(400, 404, 409)}},
        },
        "/rules/{rule_id}": {
            "parameters": [{"name": "rule_id", "in": "path", "required": True,
                            "schema": {"type": "integer"}}],
            "delete": {"operationId": "deleteRule",
                       "responses": {"200": deleted, **errors(404)}},
        },
        "/access-default": {
            "get": {"operationId": "getAccessDefault",
                    "responses": {"200": json_answer(m.AccessDefault, "The default"),
                                  **errors()}},
            "put": {"operationId": "setAccessDefault", "description": live,
                    "requestBody": body(m.AccessDefault),
                    "responses": {"200": json_answer(m.AccessDefault, "Saved"),
                                  **errors(400)}},
        },
        "/policy-check": {
            "get": {"operationId": "checkPolicy",
                    "description": "What the gateway decides for USER's packet to DEST, with "
                                   "the same lookup it runs per packet (sslvpn policy check).",
                    "parameters": m.PolicyCheckQuery.parameters(),
                    "responses": {"200": json_answer(m.PolicyCheck, "The verdict"),
                                  **errors(400, 404, 409)}},
        },
    }
