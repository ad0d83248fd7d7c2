"""The OpenAPI paths of ``GET /api/v1/traffic`` (the traffic history), built with
`web.openapi`'s helpers, which are passed in (that module imports this one)."""

from __future__ import annotations

from typing import Any

from web.api_models import TrafficQuery, TrafficSeries


def traffic_paths(json_answer: Any, errors: Any) -> dict[str, Any]:
    return {
        "/traffic": {
            "get": {
                "operationId": "getTraffic",
                "description": "Bytes each way in 1-minute buckets (hourly past 30 days) for "
                               "a node, an IPsec tunnel or a user, in [from, to). Default: "
                               "the last hour; from is moved up to at most 366 days before "
                               "to, and a from after to gives no points.",
                "parameters": TrafficQuery.parameters(),
                "responses": {"200": json_answer(TrafficSeries, "The series"), **errors(400)},
            },
        },
    }
