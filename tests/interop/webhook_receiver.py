"""An alarm webhook receiver for interop tests, run inside a namespace (aiohttp).

``python webhook_receiver.py PORT SECRET OUT``: listens on 127.0.0.1:PORT, checks each
POST's ``X-Sslvpn-Signature`` (HMAC-SHA256 of the body with SECRET), appends each good body
to OUT as one JSON line (a bad signature is answered 401 and written as ``{"refused": 1}``),
and prints ``listening`` once bound.
"""

from __future__ import annotations

import hashlib
import hmac
import sys
from pathlib import Path

from aiohttp import web


def main(port: int, secret: str, out: Path) -> None:
    async def hook(request: web.Request) -> web.Response:
        payload = await request.read()
        expected = "sha256=" + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()
        good = hmac.compare_digest(request.headers.get("X-Sslvpn-Signature", ""), expected)
        with out.open("a") as lines:
            lines.write((payload.decode() if good else '{"refused": 1}') + "\n")
        return web.Response(status=204 if good else 401)

    async def started(app: web.Application) -> None:
        print("listening", flush=True)  # noqa: T201 - the test waits for this line

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.on_startup.append(started)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
