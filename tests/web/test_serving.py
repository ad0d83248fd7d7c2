"""Serving: HTTPS with a portal certificate from our CA, plain HTTP only on loopback,
and the first start's one-time admin password."""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import sys

import aiohttp
import pytest

from client_profiles.passwords import verify_password
from sslvpn.store import db, queries
from tests.web.conftest import FakeGateway, Site, login, second_browser_at
from web.app import create_app, ensure_first_admin, is_loopback, parse_listen, start_portal
from web.tls import ensure_portal_certificate, portal_tls, tls_context


async def test_https_with_a_portal_certificate_from_our_ca(site: Site) -> None:
    cert, key = ensure_portal_certificate(site.paths, ["127.0.0.1", "vpn.example.test"])
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    again = ensure_portal_certificate(site.paths, ["other"])
    assert again == (cert, key) and cert.read_bytes() == again[0].read_bytes()
    app = create_app(engine=site.engine, paths=site.paths, control=FakeGateway())
    served = await start_portal(app, "127.0.0.1:0", tls_context(cert, key))
    try:
        assert served.url.startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=str(site.paths.ca_cert))
        async with aiohttp.ClientSession() as session:
            async with session.get(served.url + "login", ssl=trust) as response:
                assert response.status == 200
                assert "Strict-Transport-Security" in response.headers
                cookie = response.cookies["sslvpn_session"]
                assert cookie["secure"] and cookie["httponly"]
    finally:
        await served.runner.cleanup()


async def test_plain_http_is_refused_off_loopback(site: Site) -> None:
    app = create_app(engine=site.engine, paths=site.paths, control=None)
    with pytest.raises(ValueError, match="loopback"):
        await start_portal(app, "198.18.0.1:0", None)


def test_listen_parsing_and_loopback() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:443") == ("::1", 443)
    for bad in ("8080", "host:", "host:99999", ":80"):
        with pytest.raises(ValueError):
            parse_listen(bad)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("vpn.example.test")  # noqa: S104


def test_first_start_creates_an_admin_once(site: Site) -> None:
    with db.session(site.engine, write=True) as s:
        queries.set_user_role(s, name="root", role="user")
    password = ensure_first_admin(site.engine)
    assert password is not None
    with db.session(site.engine, write=False) as s:
        admin = queries.get_user(s, name="admin")
    assert admin.role == "admin" and verify_password(admin.password_hash, password)
    assert ensure_first_admin(site.engine) is None


async def test_sslvpn_portal_command_prints_url_and_one_time_password(site: Site) -> None:
    with db.session(site.engine, write=True) as s:
        queries.set_user_role(s, name="root", role="user")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from sslvpn.cli import main; main()",
        "--data-dir",
        str(site.paths.data_dir),
        "portal",
        "--listen",
        "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert process.stdout is not None
        first = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        second = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        url = re.fullmatch(r"portal: (http://127\.0\.0\.1:\d+/)\n", first)
        password = re.search(r"one-time password (\S+)", second)
        assert url and password, (first, second)
        async with second_browser_at(url.group(1)) as browser:
            await login(browser, "admin", password.group(1))
    finally:
        process.kill()
        await process.wait()


def test_portal_tls_defaults(site: Site) -> None:
    assert portal_tls(site.paths, site.engine, "127.0.0.1:8080") is None
    assert not site.paths.portal_cert.exists()
    context = portal_tls(site.paths, site.engine, "0.0.0.0:8443")  # noqa: S104
    assert isinstance(context, ssl.SSLContext) and site.paths.portal_cert.is_file()
    forced = portal_tls(site.paths, site.engine, "127.0.0.1:8443", https=True)
    assert isinstance(forced, ssl.SSLContext)
    with pytest.raises(ValueError, match="loopback"):
        portal_tls(site.paths, site.engine, "198.18.0.1:80", https=False)
