"""Every page shows a moment the same way: a <time> element with its UTC instant, which the
browser shows in the reader's zone; no template formats a time of its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from web.timefmt import when

TEMPLATES = Path(__file__).resolve().parents[2] / "web" / "templates"


def test_no_template_formats_a_time_itself() -> None:
    formatted = [p.name for p in TEMPLATES.glob("*.html") if "strftime" in p.read_text()]
    assert formatted == []


def test_when_names_utc_and_carries_the_instant() -> None:
    naive = datetime(2026, 12, 8, 0, 10, 5, 999_000)  # the store's UTC, without tzinfo
    aware = naive.replace(tzinfo=timezone(timedelta(hours=1))) + timedelta(hours=1)
    for moment in (naive, naive.replace(tzinfo=UTC), aware):
        assert str(when(moment)) == (
            '<time datetime="2026-12-08T00:10:05Z" data-precision="second">'
            "2026-12-08 00:10:05 UTC</time>")
    assert ">2026-12-08 00:10 UTC<" in when(naive, "minute")
    assert ">2026-12-08<" in when(naive, "day")
    assert str(when(None, "second", "<never>")) == "&lt;never&gt;"
