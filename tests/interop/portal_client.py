"""A portal user for interop tests, run inside a namespace: log in, then do one thing.

``python portal_client.py BASE_URL CAFILE NAME ACTION [ARG...]``, the password on stdin.
Actions: ``device DEVICE OUT`` creates a device and saves its downloaded `.ovpn` to OUT;
``get PATH`` prints a page; ``kick SESSION_ID`` ends a live session from the admin's
sessions page and prints the page it lands on. Only the standard library, so it runs with
any Python; HTTPS is verified against CAFILE (our CA).
"""

from __future__ import annotations

import http.cookiejar
import re
import ssl
import sys
import urllib.parse
import urllib.request
from pathlib import Path

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Browser:
    """Cookies, CSRF tokens and redirects the way a browser handles them."""

    def __init__(self, base: str, cafile: str) -> None:
        self.base = base.rstrip("/")
        context = ssl.create_default_context(cafile=cafile)
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context),
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
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
        self.get("/login")
        url, body = self.post("/login", {"name": name, "password": password})
        if url.endswith("/login"):
            raise SystemExit(f"login as {name} failed:\n{body}")


def main(argv: list[str]) -> None:
    base, cafile, name, action, *args = argv
    browser = Browser(base, cafile)
    browser.login(name, sys.stdin.readline().rstrip("\n"))
    if action == "device":
        device, out = args
        browser.get("/devices")
        url, _ = browser.post("/devices", {"device": device})
        serial = url.rstrip("/").rsplit("/", 1)[-1]
        Path(out).write_bytes(browser.download(f"/devices/{serial}/profile.ovpn"))
        sys.stdout.write(serial + "\n")
    elif action == "get":
        sys.stdout.write(browser.get(args[0])[1])
    elif action == "kick":
        browser.get("/admin/sessions")
        sys.stdout.write(browser.post(f"/admin/sessions/{args[0]}/kick", {})[1])
    else:
        raise SystemExit(f"unknown action {action!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
