"""The admin page for alarms: what is raised now and what was cleared lately, every rule and
channel setting (secrets never shown), and a form that changes one, audited as `sslvpn
alarm set` is. The running gateway reads the settings each round: no restart needed.
"""

from __future__ import annotations

from aiohttp import web

from sslvpn.store import RejectedError, alarm_queries
from web.pages import flash, form_of, portal_of, render, require_admin, user_of
from web.security import client_address

PAGE = "/admin/alarms"
MAX_VALUE = 2000  # characters: a URL, a list of addresses


async def render_alarms(request: web.Request, *, status: int = 200,
                        errors: list[str] | None = None) -> web.Response:
    alarms, settings = await portal_of(request).read(
        lambda s: (alarm_queries.alarm_list(s), alarm_queries.alarm_settings(s)))
    rows = [{"key": key, "meaning": meaning, "secret": key in alarm_queries.SECRET_KEYS,
             "value": ("(set)" if settings[key] else "") if key in alarm_queries.SECRET_KEYS
             else settings[key]}
            for key, (_, meaning) in alarm_queries.DEFAULTS.items()]
    return render(request, "admin_alarms.html", {"alarms": alarms, "settings": rows},
                  status=status, errors=errors)


@require_admin
async def alarms_page(request: web.Request) -> web.StreamResponse:
    return await render_alarms(request)


@require_admin
async def set_alarm(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    key, value = form.get("key", ""), form.get("value", "").strip()
    if key not in alarm_queries.DEFAULTS:
        return await render_alarms(request, status=400, errors=["no such alarm setting"])
    if len(value) > MAX_VALUE or any(ord(c) < 32 for c in value):
        return await render_alarms(request, status=400, errors=[
            f"{key}: at most {MAX_VALUE} printable characters"])
    user = user_of(request)
    actor, address = (user.name if user else "anonymous"), client_address(request)
    try:
        await portal_of(request).write(lambda s: alarm_queries.set_alarm_setting(
            s, key, value, actor=actor, source_address=address))
    except RejectedError as exc:
        return await render_alarms(request, status=400, errors=[str(exc)])
    flash(request, f"{key} set.")
    raise web.HTTPSeeOther(PAGE)


def add_routes(app: web.Application) -> None:
    app.router.add_get(PAGE, alarms_page)
    app.router.add_post(PAGE, set_alarm)
