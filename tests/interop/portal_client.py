"""A portal user for interop tests, run inside a namespace: log in, then do one thing.

``python portal_client.py BASE_URL CAFILE NAME ACTION [ARG...]``, the password on stdin.
Actions: ``device DEVICE OUT`` creates a device and saves its downloaded `.ovpn` to OUT;
``get PATH`` prints a page; ``kick SESSION_ID`` ends a live session from the admin's
sessions page and prints the page it lands on; ``revoke SERIAL REASON`` revokes a certificate
from the admin's certificates page and prints the page it lands on; ``cookie`` prints the
session cookie. With NAME ``-`` (no login, no password), ``landing COOKIE PATH`` prints the
path a browser holding only that session cookie ends on after opening PATH (``/login`` when
it is not logged in). Only the standard library, so it runs with any Python; HTTPS is
verified against CAFILE (our CA).
"""

from __future__ import annotations

import http.cookiejar
import re
import ssl
import sys
import urllib.parse
import urllib.request
from pathlib import Path

SESSION_COOKIE = "sslvpn_session"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Browser:
    """Cookies, CSRF tokens and redirects the way a browser handles them."""

    def __init__(self, base: str, cafile: str) -> None:
        self.base = base.rstrip("/")
        context = ssl.create_default_context(cafile=cafile)
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context),
            urllib.request.HTTPCookieProcessor(self.cookies),
        )
        self.csrf = ""

    def get(self, path: str) -> tuple[str, str]:
        """The final URL and body of a page (keeps the page's CSRF token)."""
        with self.opener.open(self.base + path, timeout=20) as response:
            body = response.read().decode()
            url = response.geturl()
        if match := CSRF.search(body):
            self.csrf = match.group(1)
        return url, body

    def post(self, path: str, form: dict[str, str]) -> tuple[str, str]:
        data = urllib.parse.urlencode({**form, "csrf_token": self.csrf}).encode()
        with self.opener.open(self.base + path, data=data, timeout=20) as response:
            body = response.read().decode()
            url = response.geturl()
        if match := CSRF.search(body):
            self.csrf = match.group(1)
        return url, body

    def download(self, path: str) -> bytes:
        with self.opener.open(self.base + path, timeout=20) as response:
            data: bytes = response.read()
        return data

    def login(self, name: str, password: str) -> None:
        """Log in; a one-time password (the portal sends it to the password page) is made
        the user's own, so the next run logs in with it again."""
        self.get("/login")
        url, body = self.post("/login", {"name": name, "password": password})
        if url.endswith("/login"):
            raise SystemExit(f"login as {name} failed:\n{body}")
        if url.endswith("/account/password"):
            url, body = self.post("/account/password", {
                "password": password, "new_password": password, "confirm": password})
            if url.endswith("/account/password"):
                raise SystemExit(f"replacing the one-time password of {name} failed:\n{body}")


def landing(base: str, cafile: str, cookie: str, path: str) -> str:
    """The path a browser holding only this session cookie ends on after opening ``path``."""
    context = ssl.create_default_context(cafile=cafile)
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(base.rstrip("/") + path,  # noqa: S310 (an https base)
                                     headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
    with opener.open(request, timeout=20) as response:
        return urllib.parse.urlparse(response.geturl()).path


def main(argv: list[str]) -> None:
    base, cafile, name, action, *args = argv
    if name == "-" and action == "landing":
        sys.stdout.write(landing(base, cafile, *args) + "\n")
        return
    browser = Browser(base, cafile)
    browser.login(name, sys.stdin.readline().rstrip("\n"))
    if action == "device":
        device, out = args
        browser.get("/devices")
        url, _ = browser.post("/devices", {"device": device})
        serial = url.rstrip("/").rsplit("/", 1)[-1]
        Path(out).write_bytes(browser.download(f"/devices/{serial}/profile.ovpn"))
        sys.stdout.write(serial + "\n")
    elif action == "cookie":
        [cookie] = [c.value for c in browser.cookies if c.name == SESSION_COOKIE]
        sys.stdout.write(cookie + "\n")
    elif action == "get":
        sys.stdout.write(browser.get(args[0])[1])
    elif action == "kick":
        browser.get("/admin/sessions")
        sys.stdout.write(browser.post(f"/admin/sessions/{args[0]}/kick", {})[1])
    elif action == "revoke":
        serial, reason = args
        browser.get("/admin/certificates")
        sys.stdout.write(browser.post(f"/admin/certificates/{serial}/revoke",
                                      {"reason": reason})[1])
    else:
        raise SystemExit(f"unknown action {action!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
