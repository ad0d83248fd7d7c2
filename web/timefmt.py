"""How the portal shows a moment: one form on every page, ``2026-12-08 00:10:05 UTC`` inside
a ``<time datetime=...>`` element, which static/portal.js rewrites into the reader's own time
zone (naming it). Without script the UTC text stands, so no page ever shows a bare time whose
zone the reader has to guess.
"""

from __future__ import annotations

from datetime import UTC, datetime

from markupsafe import Markup, escape

FORMATS = {
    "second": "%Y-%m-%d %H:%M:%S UTC",
    "minute": "%Y-%m-%d %H:%M UTC",
    "day": "%Y-%m-%d",
}


def when(moment: datetime | None, precision: str = "second", missing: str = "") -> Markup:
    """A ``<time>`` element for ``moment`` (stored naive times are UTC); ``missing`` when
    there is none."""
    if moment is None:
        return Markup(escape(missing))  # noqa: S704 (escaped just here)
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    text = moment.strftime(FORMATS[precision])
    return Markup(  # noqa: S704 (both parts are digits and fixed text)
        f'<time datetime="{stamp}" data-precision="{precision}">{text}</time>'
    )
