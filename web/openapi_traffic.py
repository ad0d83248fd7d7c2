"""The OpenAPI part of ``GET /api/v1/traffic`` (the traffic history), built with
`web.openapi`'s helpers, which are passed in (that module imports this one)."""

from __future__ import annotations

from typing import Any

SCOPE_PATTERN = r"^(node|tunnel|user):[^\s]{1,200}$"
DATE = {"type": "string", "format": "date-time"}
POINT = {
    "type": "object",
    "required": ["start", "seconds", "bytes_in", "bytes_out"],
    "properties": {
        "start": DATE,
        "seconds": {"type": "integer", "description": "the bucket's length: 60, or 3600 for "
                                                      "history older than 30 days"},
        "bytes_in": {"type": "integer", "description": "tunnelled IP bytes into the VPC"},
        "bytes_out": {"type": "integer", "description": "tunnelled IP bytes back"},
    },
}
SERIES = {
    "type": "object",
    "required": ["scope", "name", "from", "to", "points"],
    "properties": {
        "scope": {"type": "string", "enum": ["node", "tunnel", "user"]},
        "name": {"type": "string"},
        "from": DATE,
        "to": DATE,
        "points": {"type": "array", "items": {"$ref": "#/components/schemas/TrafficPoint"}},
    },
}
SCHEMAS = {"TrafficPoint": POINT, "TrafficSeries": SERIES}


def traffic_paths(json_answer: Any, errors: Any, ref: Any) -> dict[str, Any]:
    return {
        "/traffic": {
            "get": {
                "operationId": "getTraffic",
                "description": "Bytes each way in 1-minute buckets (hourly past 30 days) for "
                               "a node, an IPsec tunnel or a user, in [from, to). Default: "
                               "the last hour; from is moved up to at most 366 days before "
                               "to, and a from after to gives no points.",
                "parameters": [
                    {"name": "scope", "in": "query", "required": True,
                     "description": "node:NAME, tunnel:NAME or user:NAME",
                     "schema": {"type": "string", "pattern": SCOPE_PATTERN}},
                    {"name": "from", "in": "query", "schema": DATE},
                    {"name": "to", "in": "query", "schema": DATE},
                ],
                "responses": {"200": json_answer(ref("TrafficSeries"), "The series"),
                              **errors(400)},
            },
        },
    }
