"""What the portal answers while its store is down: 503 with Retry-After, never a 500.

Every store call of a handler goes through the portal's `AsyncStore` (in a thread, bounded in
time); when it gives up, `web.portal.Portal` raises `StoreDown`. That is deliberately not a
`StoreError`, so handlers that turn refusals (duplicate, in use) into form errors or 409s
let it pass, and `outage_middleware` answers it: a clear page for people, the API's JSON
error shape under /api/. The bound is per request, not per call: the middleware gives each
request a budget (`STORE_BUDGET` seconds unless the portal's settings say otherwise) and
`store_wait` tells each call what is left, so a login that spent a second verifying a
password still gets its 503 within 5 s. The store facade logs the outage once when it
starts and once when it ends; this module logs nothing per request.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

import aiohttp_jinja2
from aiohttp import web
from aiohttp.typedefs import Middleware

STORE_BUDGET = 4.0  # seconds one request may wait for the store in all (503 within 5 s)
LAST_CALL = 0.5  # seconds a call still gets once the budget is spent (a healthy store answers)
RETRY_AFTER_SECONDS = 5
API_PREFIX = "/api/"
MESSAGE = "the store is unavailable; try again later"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_deadline: ContextVar[float] = ContextVar("sslvpn_store_deadline")


class StoreDown(Exception):
    """The store did not answer this request in time (answered 503, not a form error)."""


def outage_middleware(budget: float) -> Middleware:
    """Give each request ``budget`` seconds of store waiting; turn `StoreDown` from any
    handler or inner middleware into a 503."""

    @web.middleware
    async def guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = _deadline.set(time.monotonic() + budget)
        try:
            return await handler(request)
        except StoreDown:
            return unavailable(request)
        finally:
            _deadline.reset(token)

    return guarded


def store_wait() -> float | None:
    """How long the current request's next store call may wait; None outside a request
    (the store's own timeout applies)."""
    deadline = _deadline.get(None)
    if deadline is None:
        return None
    return max(LAST_CALL, deadline - time.monotonic())


def unavailable(request: web.Request) -> web.Response:
    """503 + Retry-After: JSON like every API error under /api/, a short page elsewhere."""
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if request.path.startswith(API_PREFIX):
        return web.json_response({"error": MESSAGE}, status=503, headers=headers)
    context: dict[str, object] = {
        "me": None, "messages": [], "errors": [], "retry_after": RETRY_AFTER_SECONDS
    }
    response = aiohttp_jinja2.render_template("unavailable.html", request, context, status=503)
    response.headers.update(headers)
    return response
