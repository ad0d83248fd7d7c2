"""Refusals people meet in a browser (403, 404, 405) as pages in the portal's own layout,
with the handler's one-line reason; machine faces (the API, Connect's REST calls, JSON feeds,
health probes) keep their plain answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp_jinja2
from aiohttp import web

from web.pages import session_of, user_of
from web.security import CSRF_KEY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STYLED = {
    403: "Not allowed",
    404: "Not found",
    405: "Not done this way",
}
MACHINE_PREFIXES = ("/api/", "/rest/", "/openvpn-api/", "/static/", "/healthz", "/readyz",
                    "/metrics")
HINTS = {
    403: "Your account may not open this page, or the form expired.",
    404: "There is nothing at this address (any more).",
    405: "This address does not take that kind of request; use the page's own buttons.",
}


def styled(request: web.Request) -> bool:
    """A person's page: not a machine face, not a JSON feed."""
    return not request.path.startswith(MACHINE_PREFIXES) and not request.path.endswith(".json")


@web.middleware
async def error_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn the styled statuses raised by handlers or the router into layout pages."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status not in STYLED or not styled(request):
            raise
        return page(request, exc)


def page(request: web.Request, exc: web.HTTPException) -> web.Response:
    """The refusal's page, same status and headers (Allow for a 405)."""
    reason = exc.text if exc.content_type == "text/plain" and exc.text else ""
    if reason.startswith(f"{exc.status}:"):  # aiohttp's default body says nothing more
        reason = ""
    session = session_of(request)
    context: dict[str, object] = {
        "me": user_of(request),
        "csrf_token": session.get(CSRF_KEY, "") if session is not None else "",
        "messages": [],
        "errors": [],
        "status": exc.status,
        "title": STYLED[exc.status],
        "reason": reason,
        "hint": HINTS[exc.status],
    }
    response = aiohttp_jinja2.render_template("error.html", request, context, status=exc.status)
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response
