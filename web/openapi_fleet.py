"""The fleet's part of the OpenAPI document (nodes and their VPC routes, `web.api_nodes`),
merged into `web.openapi.document`.

The patterns are the API's syntax: `web.api_nodes` answers 400 for a field that does not
match, and 409 when well-formed values do not fit the fleet (a pool with host bits set,
outside the fleet pools, overlapping another node; a loopback VPC address).
"""

from __future__ import annotations

from typing import Any

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = rf"(?:{_OCTET}\.){{3}}{_OCTET}"
_IPV6 = r"[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*"
PATTERNS = {
    "name": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
    "public_address": r"^[A-Za-z0-9.:_-]{1,253}$",
    "vpc_address": rf"^(?:{_IPV4}|{_IPV6})$",
    "pool": rf"^{_IPV4}/(?:[1-9]|1\d|2[0-9])$",  # a node needs a /29 or larger
    "pool6": rf"^{_IPV6}/(?:[1-9]|[1-9]\d|1[01]\d|12[0-8])$",
}
NULLABLE_TEXT = {"type": "string", "nullable": True}
NODE = {
    "type": "object",
    "required": ["name", "public_addresses", "pool", "pool6", "state", "sessions",
                 "software_version", "last_seen"],
    "properties": {
        "name": {"type": "string"},
        "public_addresses": {"type": "array", "items": {"type": "string"}},
        "pool": {"type": "string", "description": "its IPv4 client sub-pool"},
        "pool6": {**NULLABLE_TEXT, "description": "its IPv6 sub-pool; null: no IPv6 pool"},
        "state": {"type": "string", "enum": ["up", "down"],
                  "description": "down: no heartbeat within the heartbeat timeout"},
        "sessions": {"type": "integer", "description": "live sessions in the store"},
        "software_version": NULLABLE_TEXT,
        "last_seen": {"type": "string", "format": "date-time", "nullable": True},
    },
}
ROUTE = {
    "type": "object",
    "required": ["node", "destination", "next_hop"],
    "properties": {
        "node": {"type": "string"},
        "destination": {"type": "string"},
        "next_hop": {**NULLABLE_TEXT, "description": "null: not known until the node runs"},
    },
}
SECONDS = {"type": "integer", "minimum": 1, "maximum": 3600}
KEEPALIVE = {
    "type": "object",
    "required": ["keepalive_interval", "keepalive_timeout", "heartbeat_timeout"],
    "properties": {
        "keepalive_interval": {**SECONDS, "description": "pushed `ping`: seconds between "
                                                         "keepalive pings"},
        "keepalive_timeout": {**SECONDS, "description": "pushed `ping-restart`: a client "
                                                        "reconnects (to another node if this "
                                                        "one died) after this many silent "
                                                        "seconds; at least twice the ping"},
        "heartbeat_timeout": {**SECONDS, "minimum": 3,
                              "description": "a node without a heartbeat this long is down"},
    },
}
SCHEMAS = {"Node": NODE, "NodeRoute": ROUTE, "Keepalive": KEEPALIVE}


def fleet_paths(
    json_answer: Any, errors: Any, body: Any, ref: Any, name: dict[str, Any]
) -> dict[str, Any]:
    """The node paths, built with `web.openapi`'s helpers (passed in to avoid a cycle)."""
    def text(field: str) -> dict[str, str]:
        return {"type": "string", "pattern": PATTERNS[field]}

    return {
        "/nodes": {
            "get": {
                "operationId": "listNodes",
                "responses": {"200": json_answer({"type": "array", "items": ref("Node")},
                                                 "Every node"), **errors()},
            },
            "post": {
                "operationId": "addNode",
                "description": "Without pool, the next free /26 of the fleet pool. Refused (409) "
                               "when a pool has host bits set, lies outside the fleet pools or "
                               "overlaps another node's, or the fleet pool is full.",
                "requestBody": body(
                    {"name": text("name"),
                     "public_addresses": {"type": "array", "items": text("public_address"),
                                          "minItems": 1},
                     "pool": text("pool"), "pool6": text("pool6"),
                     "vpc_addresses": {"type": "array", "items": text("vpc_address"),
                                       "maxItems": 2,
                                       "description": "at most one per IP version"}},
                    ["name", "public_addresses"],
                ),
                "responses": {"201": json_answer(ref("Node"), "Added"), **errors(400, 409)},
            },
        },
        "/nodes/{name}": {
            "parameters": [name],
            "delete": {
                "operationId": "removeNode",
                "description": "Refused (409) while the node has live sessions, unless "
                               "force=true (which ends them in the store).",
                "parameters": [{"name": "force", "in": "query", "schema": {"type": "boolean"}}],
                "responses": {
                    "200": json_answer({
                        "type": "object",
                        "required": ["deleted", "sessions_ended"],
                        "properties": {"deleted": {"type": "boolean"},
                                       "sessions_ended": {"type": "integer"}},
                    }, "Removed"),
                    **errors(400, 404, 409),
                },
            },
        },
        "/keepalive": {
            "get": {
                "operationId": "getKeepalive",
                "responses": {"200": json_answer(ref("Keepalive"), "The stored values"),
                              **errors()},
            },
            "put": {
                "operationId": "setKeepalive",
                "description": "A field left out keeps its value. Refused (409) when the "
                               "restart is shorter than two pings. New connections get the "
                               "new values.",
                "requestBody": body(KEEPALIVE["properties"]),
                "responses": {"200": json_answer(ref("Keepalive"), "Saved"),
                              **errors(400, 409)},
            },
        },
        "/node-routes": {
            "get": {
                "operationId": "listNodeRoutes",
                "description": "The VPC route-table entries the fleet needs (a manual step).",
                "responses": {"200": json_answer({"type": "array", "items": ref("NodeRoute")},
                                                 "Each node's sub-pools via the node"),
                              **errors()},
            },
        },
    }
