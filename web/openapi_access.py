"""The access policy's part of the OpenAPI document (groups, members, rules, the default and
the "who can reach what" check, `web.api_access`), merged into `web.openapi.document`.

A field that does not match a pattern here is a 400; a well-formed rule the policy refuses
(a destination outside the VPC networks, ports without tcp/udp) or a destination to check
that is no address or port a 409; an unknown group or user a 404.
"""

from __future__ import annotations

from typing import Any

PATTERNS = {
    "name": r"^[A-Za-z0-9._-]{1,64}$",
    "user": r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$",
    "to": r"^[0-9A-Fa-f.:]{2,45}(/[0-9]{1,3})?$",
    "port": r"^[0-9]{1,5}(-[0-9]{1,5})?$",
    "dest": r"^(\[[0-9A-Fa-f:.]{2,45}\]|[0-9A-Fa-f.:]{2,45})(:[0-9]{1,5}(/(tcp|udp))?)?$",
}
PROTOCOLS = ["any", "tcp", "udp", "icmp"]
DEFAULTS = ["all-vpc", "nothing"]
NULLABLE_TEXT = {"type": "string", "nullable": True}
GROUP = {
    "type": "object",
    "required": ["name", "members", "rules"],
    "properties": {
        "name": {"type": "string"},
        "members": {"type": "array", "items": {"type": "string"}},
        "rules": {"type": "integer", "description": "rules naming the group"},
    },
}
RULE = {
    "type": "object",
    "required": ["id", "group", "user", "to", "proto", "ports", "action", "priority",
                 "packets"],
    "properties": {
        "id": {"type": "integer"},
        "group": {**NULLABLE_TEXT, "description": "the group it is for (or null)"},
        "user": {**NULLABLE_TEXT, "description": "the user it is for (or null)"},
        "to": {"type": "string", "description": "destination network"},
        "proto": {"type": "string", "enum": PROTOCOLS},
        "ports": {**NULLABLE_TEXT, "description": "N or N-M; null: any port"},
        "action": {"type": "string", "enum": ["allow", "deny"]},
        "priority": {"type": "integer", "description": "lower first; deny first on a tie"},
        "packets": {"type": "integer", "nullable": True,
                    "description": "packets it decided on this host's gateway (null: none "
                                   "attached to this portal)"},
    },
}
MEMBERSHIP = {
    "type": "object",
    "required": ["user", "groups"],
    "properties": {"user": {"type": "string"},
                   "groups": {"type": "array", "items": {"type": "string"}}},
}
DEFAULT = {
    "type": "object",
    "required": ["default"],
    "properties": {"default": {"type": "string", "enum": DEFAULTS,
                               "description": "what a user no rule matches reaches"}},
}
CHECK = {
    "type": "object",
    "required": ["allow", "user", "destination", "decided_by", "rule_id", "route", "nodes",
                 "pushed_routes"],
    "properties": {
        "allow": {"type": "boolean"},
        "user": {"type": "string"},
        "destination": {"type": "string", "description": "as understood: ADDRESS:PORT/PROTO, "
                                                         "or ADDRESS (icmp) for a ping"},
        "decided_by": {"type": "string", "description": "the rule, the default, or outside "
                                                        "the VPC networks"},
        "rule_id": {"type": "integer", "nullable": True},
        "route": {"type": "string"},
        "nodes": {"type": "array", "items": {"type": "string"}},
        "pushed_routes": {"type": "array", "items": {"type": "string"},
                          "description": "what the user is pushed at the next connect"},
    },
}
SCHEMAS = {"AccessGroup": GROUP, "AccessRule": RULE, "GroupMembership": MEMBERSHIP,
           "AccessDefault": DEFAULT, "PolicyCheck": CHECK}


def access_paths(json_answer: Any, errors: Any, body: Any, ref: Any,
                 name: dict[str, Any]) -> dict[str, Any]:
    """The access paths, built with `web.openapi`'s helpers (passed in to avoid a cycle)."""
    def text(field: str) -> dict[str, str]:
        return {"type": "string", "pattern": PATTERNS[field]}

    deleted = json_answer({"type": "object", "required": ["deleted"],
                           "properties": {"deleted": {"type": "boolean"}}}, "Deleted")
    live = "Live sessions follow within 5 s; pushed routes change at the next connect."
    return {
        "/groups": {
            "get": {"operationId": "listGroups",
                    "responses": {"200": json_answer({"type": "array",
                                                      "items": ref("AccessGroup")},
                                                     "Every group"), **errors()}},
            "post": {"operationId": "addGroup",
                     "requestBody": body({"name": text("name")}, ["name"]),
                     "responses": {"201": json_answer(ref("AccessGroup"), "Added"),
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
                    "responses": {"200": json_answer(ref("GroupMembership"), "The groups"),
                                  **errors(404)}},
            "post": {"operationId": "changeUserGroups", "description": live,
                     "requestBody": body({"add": {"type": "array", "items": text("name")},
                                          "remove": {"type": "array",
                                                     "items": text("name")}}),
                     "responses": {"200": json_answer(ref("GroupMembership"), "The groups now"),
                                   **errors(400, 404)}},
        },
        "/rules": {
            "get": {"operationId": "listRules", "description": "In evaluation order.",
                    "responses": {"200": json_answer({"type": "array",
                                                      "items": ref("AccessRule")},
                                                     "Every rule"), **errors()}},
            "post": {"operationId": "addRule",
                     "description": "For one group or one user. Refused (409) when the "
                                    "destination is outside the VPC networks or ports come "
                                    "without tcp/udp. " + live,
                     "requestBody": body({
                         "group": text("name"), "user": text("user"), "to": text("to"),
                         "proto": {"type": "string", "enum": PROTOCOLS},
                         "port": text("port"), "deny": {"type": "boolean"},
                         "priority": {"type": "integer", "minimum": 0, "maximum": 1000000},
                     }, ["to"]),
                     "responses": {"201": json_answer(ref("AccessRule"), "Added"),
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
                    "responses": {"200": json_answer(ref("AccessDefault"), "The default"),
                                  **errors()}},
            "put": {"operationId": "setAccessDefault", "description": live,
                    "requestBody": body(DEFAULT["properties"], ["default"]),
                    "responses": {"200": json_answer(ref("AccessDefault"), "Saved"),
                                  **errors(400)}},
        },
        "/policy-check": {
            "get": {"operationId": "checkPolicy",
                    "description": "What the gateway decides for USER's packet to DEST, with "
                                   "the same lookup it runs per packet (sslvpn policy check).",
                    "parameters": [
                        {"name": "user", "in": "query", "required": True,
                         "schema": text("user")},
                        {"name": "dest", "in": "query", "required": True,
                         "description": "ADDRESS[:PORT[/tcp|udp]], IPv6 as [ADDRESS]:PORT; "
                                        "no port: a ping",
                         "schema": text("dest")},
                    ],
                    "responses": {"200": json_answer(ref("PolicyCheck"), "The verdict"),
                                  **errors(400, 404, 409)}},
        },
    }
