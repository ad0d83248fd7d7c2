"""The fleet's paths in the OpenAPI document (nodes and their VPC routes, `web.api_nodes`),
merged into `web.openapi.document`.

The patterns (`web.api_models`) are the API's syntax: a field that does not match is a 400;
well-formed values that do not fit the fleet are a 409 (a pool with host bits set, outside
the fleet pools, overlapping another node; a loopback VPC address).
"""

from __future__ import annotations

from typing import Any

from web import api_models as m


def fleet_paths(
    json_answer: Any, errors: Any, body: Any, array: Any, name: dict[str, Any]
) -> dict[str, Any]:
    """The node paths, built with `web.openapi`'s helpers (passed in to avoid a cycle)."""
    return {
        "/nodes": {
            "get": {
                "operationId": "listNodes",
                "responses": {"200": json_answer(array(m.Node), "Every node"), **errors()},
            },
            "post": {
                "operationId": "addNode",
                "description": "Without pool, the next free /26 of the fleet pool. Refused (409) "
                               "when a pool has host bits set, lies outside the fleet pools or "
                               "overlaps another node's, or the fleet pool is full.",
                "requestBody": body(m.NewNode),
                "responses": {"201": json_answer(m.Node, "Added"), **errors(400, 409)},
            },
        },
        "/nodes/{name}": {
            "parameters": [name],
            "delete": {
                "operationId": "removeNode",
                "description": "Refused (409) while the node has live sessions, unless "
                               "force=true (which ends them in the store).",
                "parameters": m.NodeRemovalQuery.parameters(),
                "responses": {
                    "200": json_answer(m.NodeRemoved, "Removed"),
                    **errors(400, 404, 409),
                },
            },
        },
        "/keepalive": {
            "get": {
                "operationId": "getKeepalive",
                "responses": {"200": json_answer(m.Keepalive, "The stored values"),
                              **errors()},
            },
            "put": {
                "operationId": "setKeepalive",
                "description": "A field left out keeps its value. Refused (409) when the "
                               "restart is shorter than two pings. New connections get the "
                               "new values.",
                "requestBody": body(m.KeepaliveChange),
                "responses": {"200": json_answer(m.Keepalive, "Saved"),
                              **errors(400, 409)},
            },
        },
        "/node-routes": {
            "get": {
                "operationId": "listNodeRoutes",
                "description": "The VPC route-table entries the fleet needs (a manual step).",
                "responses": {"200": json_answer(array(m.NodeRoute),
                                                 "Each node's sub-pools via the node"),
                              **errors()},
            },
        },
    }
