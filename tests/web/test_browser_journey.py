"""The whole journey in a real headless Chromium (Debian's, driven by Playwright):
the admin creates a user and issues a device; the user logs in, downloads the profile and
opens the QR, which `zbarimg` decodes to a link that yields the same profile once and 410
the second time. Screenshots go to test-artifacts/web/.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, Dialog, Page, async_playwright

from sslvpn.store import db
from sslvpn.store.gateway_queries import TrafficCounted, write_records
from tests.web.conftest import PASSWORDS, PATIENT, FakeGateway, Site, issue_for
from web.app import create_app, start_portal
from web.portal import PortalSettings

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
DEEP_LINK = "openvpn://import-profile/"
SIZES = {"desktop": (1280, 900), "phone": (390, 844)}

pytestmark = pytest.mark.interop


@pytest.fixture
async def portal_url(site: Site, gateway: FakeGateway) -> AsyncIterator[str]:
    settings = PortalSettings(refresh_seconds=1.0, store_budget=PATIENT)
    app = create_app(engine=site.engine, paths=site.paths, control=gateway, settings=settings)
    served = await start_portal(app, "127.0.0.1:0", None)
    try:
        yield served.url.rstrip("/")
    finally:
        await served.runner.cleanup()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing (scripts/install-test-deps installs chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


async def log_in(page: Page, base: str, name: str, password: str) -> None:
    await page.goto(f"{base}/login")
    await page.fill("input[name=name]", name)
    await page.fill("input[name=password]", password)
    await page.click("button[type=submit]")


def decode_qr(png: Path) -> str:
    zbarimg = shutil.which("zbarimg")
    if zbarimg is None:
        pytest.fail("zbarimg is missing (scripts/install-test-deps installs zbar-tools)")
    done = subprocess.run(
        [zbarimg, "--quiet", "--raw", str(png)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def create_user(admin: Page, base: str, name: str) -> None:
    await admin.goto(f"{base}/admin/users")
    await admin.fill("form[action='/admin/users'] input[name=name]", name)
    await admin.fill("input[name=password]", f"{name}-password-1")
    await admin.click("text=Create user")
    await admin.wait_for_selector(f"text=User {name} created.")


async def open_menu(page: Page) -> None:
    """On a phone the menu is folded behind its button."""
    if await page.locator("#menu-toggle").is_visible():
        await page.click("#menu-toggle")


@pytest.mark.parametrize("size", sorted(SIZES))
async def test_admin_issues_and_user_imports_through_the_qr(
    browser: Browser, portal_url: str, tmp_path: Path, size: str
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    width, height = SIZES[size]
    admin = await (await browser.new_context(viewport={"width": width, "height": height},
                                             is_mobile=size == "phone")).new_page()
    await log_in(admin, portal_url, "root", PASSWORDS["root"])
    await admin.wait_for_url(f"{portal_url}/admin")
    assert await admin.locator("#no-vpc").is_visible()  # the test site has no VPC network
    await open_menu(admin)
    await admin.click("header nav >> text=Users")
    await admin.wait_for_url(f"{portal_url}/admin/users")
    for name in ("erin", "temp"):
        await create_user(admin, portal_url, name)
    # Delete asks first: no means nothing happens, yes deletes
    answers: list[str] = []

    async def answer(dialog: Dialog) -> None:
        answers.append(dialog.message)
        await (dialog.dismiss() if len(answers) == 1 else dialog.accept())

    admin.on("dialog", answer)
    delete = "form[action='/admin/users/temp/delete'] button"
    await admin.click(delete)
    assert answers[0].startswith("Delete user temp?")
    assert await admin.locator(delete).count() == 1
    await admin.click(delete)
    await admin.wait_for_selector("text=User temp deleted")
    await admin.fill("input[name=q]", "ERI")  # search, any case
    await admin.click("form.search button")
    await admin.wait_for_url("**/admin/users?q=ERI**")
    assert await admin.locator("#users td[data-label=Name]").all_inner_texts() == ["erin"]
    await admin.goto(f"{portal_url}/admin/certificates")
    await admin.fill("input[name=user]", "erin")
    await admin.fill("input[name=device]", "laptop")
    await admin.fill("input[name=days]", "90")
    await admin.click("text=Issue certificate")
    await admin.wait_for_selector("text=Issued erin/laptop")
    await admin.screenshot(path=ARTIFACTS / f"admin-certificates-{size}.png", full_page=True)
    await admin.goto(f"{portal_url}/no/such/page")  # a styled 404, menu and all
    await admin.wait_for_selector("#error-page >> text=404")
    # import links name the configured public URL, never the request's Host header: here the
    # portal's own loopback address, which the QR page must warn about
    await admin.goto(f"{portal_url}/admin/settings")
    await admin.fill("input[name=portal_public_url]", portal_url)
    await admin.click("form[action='/admin/settings'] button[type=submit]")
    await admin.wait_for_selector("text=Settings saved")

    # the user, on a screen of the same size
    phone = await browser.new_context(
        viewport={"width": width, "height": height}, accept_downloads=True,
        is_mobile=size == "phone")
    user = await phone.new_page()
    await log_in(user, portal_url, "erin", "erin-password-1")
    await user.wait_for_url(f"{portal_url}/devices")
    await user.click("text=laptop")
    async with user.expect_download() as download_info:
        await user.click("#download")
    download = await download_info.value
    saved = tmp_path / "erin.ovpn"
    await download.save_as(saved)
    profile = saved.read_text()
    assert "<cert>" in profile and "<key>" in profile

    await user.click("#import-on-phone")
    qr = user.locator("#qr")
    await qr.wait_for()
    await user.screenshot(path=ARTIFACTS / f"user-qr-{size}.png", full_page=True)
    first_page = user.url  # the QR's own page: a reload shows the same link, mints none
    connect = await user.get_attribute("#open-in-connect", "href")
    await qr.screenshot(path=tmp_path / "qr.png")
    link = decode_qr(tmp_path / "qr.png")
    assert link.startswith(DEEP_LINK + portal_url + "/rest/GetProfileViaToken?token=")
    assert await user.locator("#loopback-warning").is_visible()
    plain = await user.locator("#plain-link").inner_text()
    assert link == DEEP_LINK + plain.strip() == connect
    await user.reload()
    assert user.url == first_page
    assert await user.locator("#plain-link").inner_text() == plain

    async with aiohttp.ClientSession() as connect_app:
        url = link.removeprefix(DEEP_LINK)
        async with connect_app.get(url, headers={"User-Agent": "OpenVPNConnect/3.5"}) as first:
            assert first.status == 200
            assert first.content_type == "application/x-openvpn-profile"
            assert await first.text() == profile
        async with connect_app.get(url) as second:
            assert second.status == 410

    await user.reload()  # the owner sees the import
    assert "imported at" in await user.content()


async def test_dashboard_chart_and_sessions_refresh_live(
    browser: Browser, portal_url: str, gateway: FakeGateway, site: Site
) -> None:
    admin = await (await browser.new_context()).new_page()
    errors: list[str] = []
    admin.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await log_in(admin, portal_url, "root", PASSWORDS["root"])
    await admin.wait_for_url(f"{portal_url}/admin")
    # the gateway is sampled every 5 s; the chart shows a rate once two samples exist
    await admin.wait_for_selector("#traffic-now:has-text('now: in')", timeout=30_000)
    await admin.screenshot(path=ARTIFACTS / "admin-dashboard.png", full_page=True)
    await admin.goto(f"{portal_url}/admin/sessions")
    assert "No live sessions." in await admin.content()
    serial = issue_for(site, "alice")
    gateway.add("live-1", "alice", serial)
    await admin.wait_for_selector("#sessions >> text=198.18.0.9:50000", timeout=30_000)
    await admin.goto(f"{portal_url}/admin/sessions?older_than=2.6")  # 2.6.14 is not older
    assert "No live sessions of older clients." in await admin.content()
    gateway.add("live-2", "alice", serial, client=("2.4.12", "linux", None))
    await admin.wait_for_selector("#sessions >> text=2.4.12 linux", timeout=30_000)
    assert "2.6.14" not in await admin.inner_text("#sessions")  # the refresh kept the filter
    book = [TrafficCounted("user", "alice", datetime.now(UTC) - timedelta(minutes=m),
                           60_000 * m, 6_000) for m in (2, 1)]
    with db.session(site.engine, write=True) as s:
        write_records(s, records=book, gateway_name="default", now=datetime.now(UTC))
    await admin.goto(f"{portal_url}/traffic?scope=user%3Aalice&span=hour")
    # drawn from the stored history, with the last point's rates under the chart
    await admin.wait_for_selector("#traffic-now:has-text('now: in')", timeout=30_000)
    assert await admin.evaluate(  # the chart has ink: axes, labels and the two lines
        "document.getElementById('traffic-chart').getContext('2d')"
        ".getImageData(0, 0, 800, 240).data.some((v, i) => i % 4 === 3 && v > 0)")
    await admin.screenshot(path=ARTIFACTS / "user-traffic-hour.png", full_page=True)
    assert errors == []  # nothing blocked by the Content-Security-Policy
