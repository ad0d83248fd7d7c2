"""Hammer a portal for a while and report every answer, for the store-outage interop test.

``python portal_hammer.py BASE_URL CAFILE SECONDS``, then on stdin the admin's name, password
and API token (one a line). Four workers run for SECONDS (at least one round each): one logs
in again and again, one reads an admin page (logging in first when it has no session), two
call the REST API. Each answer is one JSON line on stdout: kind, status (null when no answer
came), seconds taken, Retry-After and Content-Type. Redirects are reported, not followed.
Only the standard library, so it runs with any Python; HTTPS is verified against CAFILE.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
REQUEST_TIMEOUT = 30.0
PAGE = "/admin/users"
API = "/api/v1/users"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Worker:
    """One browser (own cookies) that records what each request got."""

    def __init__(self, base: str, tls: ssl.SSLContext, out: Callable[[dict[str, Any]], None]):
        self.base, self.tls, self.out = base.rstrip("/"), tls, out
        self.fresh()

    def fresh(self) -> None:
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=self.tls), _NoRedirect(),
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.csrf = ""
        self.logged_in = False

    def request(self, kind: str, path: str, *, form: dict[str, str] | None = None,
                token: str | None = None) -> int | None:
        data = None
        if form is not None:
            data = urllib.parse.urlencode({**form, "csrf_token": self.csrf}).encode()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        started = time.monotonic()
        record: dict[str, Any] = {"kind": kind, "at": time.time()}
        status: int
        try:
            req = urllib.request.Request(self.base + path, data, headers)  # noqa: S310 (https)
            with self.opener.open(req, timeout=REQUEST_TIMEOUT) as response:
                status, answer, body = response.status, response, response.read()
        except urllib.error.HTTPError as exc:
            status, answer, body = exc.code, exc, exc.read()
        except OSError as exc:
            record.update(status=None, seconds=time.monotonic() - started, error=str(exc))
            self.out(record)
            return None
        if match := CSRF.search(body.decode(errors="replace")):
            self.csrf = match.group(1)
        record.update(status=status, seconds=time.monotonic() - started,
                      retry_after=answer.headers.get("Retry-After"),
                      type=answer.headers.get("Content-Type", ""))
        self.out(record)
        return status

    def login(self, name: str, password: str) -> None:
        self.fresh()
        if self.request("login-form", "/login") == 200:
            done = self.request("login", "/login", form={"name": name, "password": password})
            self.logged_in = done == 303


def main(argv: list[str]) -> None:
    base, cafile, seconds = argv
    name, password, token = (sys.stdin.readline().rstrip("\n") for _ in range(3))
    tls = ssl.create_default_context(cafile=cafile)
    lock = threading.Lock()

    def out(record: dict[str, Any]) -> None:
        with lock:
            sys.stdout.write(json.dumps(record) + "\n")

    deadline = time.monotonic() + float(seconds)

    def rounds(step: Callable[[Worker], None]) -> Callable[[], None]:
        def run() -> None:
            worker = Worker(base, tls, out)
            step(worker)
            while time.monotonic() < deadline:
                step(worker)
        return run

    def page(worker: Worker) -> None:
        if not worker.logged_in:
            worker.login(name, password)
        if worker.logged_in and worker.request("page", PAGE) == 303:  # the session is gone
            worker.logged_in = False

    steps = [lambda w: w.login(name, password), page,
             lambda w: w.request("api", API, token=token) and None,
             lambda w: w.request("api", API, token=token) and None]
    threads = [threading.Thread(target=rounds(step)) for step in steps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main(sys.argv[1:])
