"""The soak's portal and API cycle: ``python -m bench.soak_portal`` inside the gateway namespace.

The portal listens on the gateway namespace's loopback, so ``bench.soak`` starts this module
there (``ip netns exec``) and reads its standard output: one JSON object per cycle with the
time of every step in ms, or the error that ended the cycle. A cycle is what an admin and an
automation client do: log in (fresh cookies), open the dashboard, users, certificates,
sessions and audit pages, create a user and disable it (the users page renders after each
POST), log out; then the API lists users, certificates and sessions, and every
``--issue-every``-th cycle issues a certificate for the new user and revokes it.
The user is made before the certificate (a disabled user gets none) and disabled after.
The admin's password comes on standard input, never on the command line.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
NEW_TOKEN = re.compile(r'id="new-token">([^<]+)<')
TIMEOUT_S = 30


class Browser:
    """Cookies and the CSRF token of one portal visit (urllib follows the 303s)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.csrf = ""

    def get(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=TIMEOUT_S) as answer:
            page: str = answer.read().decode()
        found = CSRF.search(page)
        self.csrf = found.group(1) if found else self.csrf
        return page

    def post(self, path: str, **form: str) -> str:
        body = urllib.parse.urlencode({"csrf_token": self.csrf, **form}).encode()
        with self.opener.open(self.base + path, data=body, timeout=TIMEOUT_S) as answer:
            page: str = answer.read().decode()
        found = CSRF.search(page)
        self.csrf = found.group(1) if found else self.csrf
        return page

    def login(self, name: str, password: str) -> None:
        self.get("/login")
        if "/logout" not in self.post("/login", name=name, password=password):
            raise RuntimeError("login failed")


def api(base: str, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 - the portal's own http URL
        base + "/api/v1" + path, data=data, method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:  # noqa: S310
        return json.loads(answer.read() or b"null")


def make_token(base: str, admin: str, password: str) -> str:
    browser = Browser(base)
    browser.login(admin, password)
    browser.get("/admin/api-tokens")
    found = NEW_TOKEN.search(browser.post("/admin/api-tokens", name=f"soak-{time.time_ns()}"))
    if found is None:
        raise RuntimeError("the API token page showed no new token")
    return found.group(1)


def cycle(base: str, admin: str, password: str, token: str, n: int, issue: bool,
          tag: str) -> dict[str, float]:
    """One portal + API round; the time of each step, ms."""
    times: dict[str, float] = {}

    def step(name: str, action: Callable[[], object]) -> None:
        started = time.perf_counter()
        action()
        times[name] = round((time.perf_counter() - started) * 1000, 1)

    browser = Browser(base)
    user = f"soak-{tag}-{n}"
    step("login", lambda: browser.login(admin, password))
    for page in ("/admin", "/admin/users", "/admin/certificates", "/admin/sessions",
                 "/admin/audit"):
        step(page, lambda page=page: browser.get(page))  # type: ignore[misc]
    step("create user", lambda: browser.post("/admin/users", name=user, role="user"))
    if issue:  # while the user is enabled
        issued: dict[str, Any] = {}
        step("api issue", lambda: issued.update(
            api(base, token, "POST", "/certificates", {"user": user, "device": "phone"})))
        step("api revoke", lambda: api(base, token, "POST",
                                       f"/certificates/{issued['serial']}/revoke", {}))
    step("disable user", lambda: browser.post(f"/admin/users/{user}/disable"))
    step("logout", lambda: browser.post("/logout"))
    for path in ("/users", "/certificates", "/sessions"):
        step(f"api {path}", lambda path=path: api(base, token, "GET", path))  # type: ignore[misc]
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak_portal", description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--admin", required=True)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between cycles")
    parser.add_argument("--issue-every", type=int, default=6, help="cycles per cert issue")
    args = parser.parse_args(argv)
    password = sys.stdin.readline().strip()
    token = make_token(args.url, args.admin, password)
    tag = f"{time.time_ns() % 10**8:x}"
    n = 0
    while True:
        started = time.monotonic()
        record: dict[str, Any] = {"t": round(time.time(), 1), "n": n}
        try:
            record["ms"] = cycle(args.url, args.admin, password, token, n,
                                 args.issue_every > 0 and n % args.issue_every == 0, tag)
        except (OSError, RuntimeError, KeyError, ValueError) as exc:  # urllib errors are OSError
            record["error"] = f"{type(exc).__name__}: {exc}"[:300]
        print(json.dumps(record), flush=True)  # the soak reads these lines
        n += 1
        time.sleep(max(0.0, args.every - (time.monotonic() - started)))


if __name__ == "__main__":
    sys.exit(main())
