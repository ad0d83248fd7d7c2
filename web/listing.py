"""Search, sort and paging for the admin's long lists: reading them from the query string
(bounded, so no request can ask for a million rows or sort by a column we did not name) and
writing the links that keep the rest of the state when one of them changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode

from aiohttp import web

from sslvpn.store.list_pages import Window

PER_PAGE = 50
MAX_SEARCH = 100
MAX_PAGE = 1_000_000


def window_of(
    request: web.Request, sorts: Mapping[str, object], *, default_sort: str,
    default_descending: bool = False,
) -> Window:
    """The list window the query string asks for; anything unknown falls back to defaults."""
    query = request.query
    sort = query.get("sort", default_sort)
    if sort not in sorts:
        sort = default_sort
    direction = query.get("dir", "")
    if direction in ("asc", "desc"):
        descending = direction == "desc"
    else:  # the default order's own direction, else A to Z
        descending = default_descending and sort == default_sort
    page_text = query.get("page", "1")
    page = min(int(page_text), MAX_PAGE) if page_text.isdigit() and int(page_text) > 0 else 1
    search = query.get("q", "").strip()[:MAX_SEARCH]
    return Window(search=search, sort=sort, descending=descending, page=page,
                  per_page=PER_PAGE)


@dataclass(frozen=True)
class Listing:
    """One shown page of a list, and the links to its neighbours and sort orders."""

    path: str
    window: Window
    total: int
    filters: Mapping[str, str] = field(default_factory=dict)

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.window.per_page))

    @property
    def first(self) -> int:
        return min(self.total, self.window.offset + 1)

    @property
    def last(self) -> int:
        return min(self.total, self.window.offset + self.window.per_page)

    def href(self, **changes: object) -> str:
        """This list with some of its state changed (page, sort, dir)."""
        window = self.window
        state = {"q": window.search, "sort": window.sort,
                 "dir": "desc" if window.descending else "asc", "page": str(window.page),
                 **self.filters}
        state.update({key: str(value) for key, value in changes.items()})
        if state["page"] == "1":
            del state["page"]
        shown = {key: value for key, value in state.items() if value}
        return f"{self.path}?{urlencode(shown)}"

    def page_href(self, page: int) -> str:
        return self.href(page=max(1, min(page, self.pages)))

    def sort_href(self, key: str) -> str:
        """Sort by ``key``; the current sort key turns its direction round."""
        flipped = self.window.sort == key and not self.window.descending
        return self.href(sort=key, dir="desc" if flipped else "asc", page=1)

    def arrow(self, key: str) -> str:
        if self.window.sort != key:
            return ""
        return " ▼" if self.window.descending else " ▲"

    def sorted_as(self, key: str) -> str:
        """The aria-sort value of a column header."""
        if self.window.sort != key:
            return "none"
        return "descending" if self.window.descending else "ascending"
