"""Every portal page in a real headless Chromium at 1280 px and on a 390 px phone: nothing
wider than the screen (tables turn into cards), no button cut off, the menu folded on the
phone, dark mode from prefers-color-scheme, times in the reader's zone. Screenshots of each
page and size go to test-artifacts/web/pages/.
"""

from __future__ import annotations

import json

import pytest
from playwright.async_api import Browser, Page

from tests.web.conftest import PASSWORDS, FakeGateway, Site, issue_for
from tests.web.test_browser_journey import ARTIFACTS, SIZES, browser, log_in, portal_url

__all__ = ["browser", "portal_url"]  # the fixtures this module uses

pytestmark = pytest.mark.interop

ADMIN_PAGES = ("/admin", "/admin/users", "/admin/certificates", "/admin/sessions",
               "/admin/nodes", "/admin/alarms", "/admin/access", "/admin/ipsec",
               "/admin/ipsec/tunnels",
               "/admin/audit", "/admin/settings", "/admin/api-tokens", "/devices", "/traffic",
               "/account/password", "/account/two-factor", "/no/such/page")
# What sticks out on the right of the screen: the page itself, or a control or cell.
OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  const out = [];
  if (document.documentElement.scrollWidth > width) {
    out.push("page " + document.documentElement.scrollWidth + " > " + width);
  }
  for (const el of document.querySelectorAll("button, a.button, input, select, td, th, canvas")) {
    const box = el.getBoundingClientRect();
    if (box.width && el.offsetParent !== null && (box.right > width + 0.5 || box.left < -0.5)) {
      out.push(el.tagName + " " + (el.textContent || el.name || "").trim().slice(0, 30)
               + " " + Math.round(box.left) + ".." + Math.round(box.right));
    }
  }
  return out;
}"""

# An address split over two lines (a phone user reads 198.18.0.9:50 / 000 as two numbers).
BROKEN_ADDRESSES = """() => [...document.querySelectorAll(".addr")]
  .filter((el) => el.getClientRects().length > 1).map((el) => "broken " + el.textContent)"""


async def sized_page(browser: Browser, size: str, **options: object) -> Page:
    width, height = SIZES[size]
    context = await browser.new_context(viewport={"width": width, "height": height},
                                        is_mobile=size == "phone", **options)  # type: ignore[arg-type]
    return await context.new_page()


@pytest.mark.parametrize("size", sorted(SIZES))
async def test_every_page_fits_the_screen(
    browser: Browser, portal_url: str, site: Site, gateway: FakeGateway, size: str
) -> None:
    serial = issue_for(site, "alice", "laptop")
    gateway.add("live-1", "alice", serial)
    shots = ARTIFACTS / "pages"
    shots.mkdir(parents=True, exist_ok=True)
    page = await sized_page(browser, size)
    await log_in(page, portal_url, "root", PASSWORDS["root"])
    await page.wait_for_url(f"{portal_url}/admin")
    problems = {}
    for path in ADMIN_PAGES:
        await page.goto(portal_url + path)
        name = path.strip("/").replace("/", "-") or "root"
        await page.screenshot(path=shots / f"{name}-{size}.png", full_page=True)
        found = await page.evaluate(OVERFLOW)
        found += await page.evaluate(BROKEN_ADDRESSES)
        if found:
            problems[path] = found
    user = await sized_page(browser, size)
    await log_in(user, portal_url, "alice", PASSWORDS["alice"])
    await user.wait_for_url(f"{portal_url}/devices")
    await user.goto(f"{portal_url}/devices/{serial}")
    await user.click("#import-on-phone")
    await user.locator("#qr").wait_for()
    await user.screenshot(path=shots / f"user-qr-{size}.png", full_page=True)
    for path in ("/devices", "/devices/" + serial, "qr"):
        if path != "qr":
            await user.goto(portal_url + path)
        found = await user.evaluate(OVERFLOW)
        if found:
            problems["alice " + path] = found
    assert not problems, json.dumps(problems, indent=1)


async def test_the_phone_menu_folds_and_opens(browser: Browser, portal_url: str) -> None:
    phone = await sized_page(browser, "phone")
    await log_in(phone, portal_url, "root", PASSWORDS["root"])
    await phone.wait_for_url(f"{portal_url}/admin")
    users = phone.locator("header nav a[href='/admin/users']")
    assert not await users.is_visible()
    await phone.click("#menu-toggle")
    assert await users.is_visible()
    await users.click()
    await phone.wait_for_url(f"{portal_url}/admin/users")
    desktop = await sized_page(browser, "desktop")
    await log_in(desktop, portal_url, "root", PASSWORDS["root"])
    await desktop.wait_for_url(f"{portal_url}/admin")
    assert await desktop.locator("header nav a[href='/admin/users']").is_visible()
    assert not await desktop.locator("#menu-toggle").is_visible()


async def test_dark_mode_follows_the_system(browser: Browser, portal_url: str) -> None:
    shades = {}
    for scheme in ("light", "dark"):
        page = await sized_page(browser, "phone", color_scheme=scheme)
        await log_in(page, portal_url, "root", PASSWORDS["root"])
        await page.wait_for_url(f"{portal_url}/admin")
        await page.goto(f"{portal_url}/admin/users")
        await page.screenshot(path=ARTIFACTS / f"users-{scheme}.png", full_page=True)
        shades[scheme] = await page.evaluate("""() => [
          "body", ".card", "input[name=name]"].map((s) => {
          const [r, g, b] = getComputedStyle(document.querySelector(s))
            .backgroundColor.match(/\\d+/g).map(Number);
          return Math.round((r + g + b) / 3);
        })""")
    assert all(shade > 180 for shade in shades["light"]), shades
    assert all(shade < 80 for shade in shades["dark"]), shades


async def test_times_are_shown_in_the_readers_zone(
    browser: Browser, portal_url: str, site: Site
) -> None:
    page = await sized_page(browser, "desktop", timezone_id="Asia/Kolkata")
    await log_in(page, portal_url, "root", PASSWORDS["root"])
    await page.wait_for_url(f"{portal_url}/admin")
    await page.goto(f"{portal_url}/admin/audit")
    stamp = page.locator("time[data-precision=second]").first
    text, utc = await stamp.inner_text(), await stamp.get_attribute("title")
    assert utc and utc.endswith(" UTC") and text.endswith(("GMT+5:30", "IST")), (text, utc)
    hours = int(utc[11:13]) * 60 + int(utc[14:16])
    local = int(text[11:13]) * 60 + int(text[14:16])
    assert (local - hours) % (24 * 60) == 330  # +05:30


async def test_the_traffic_chart_is_drawn_at_the_size_it_is_shown(
    browser: Browser, portal_url: str
) -> None:
    """On a phone the chart is 360 px wide: drawn into an 800 px buffer and scaled down, its
    axis labels were under 4 px high."""
    phone = await sized_page(browser, "phone")
    await log_in(phone, portal_url, "root", PASSWORDS["root"])
    await phone.wait_for_url(f"{portal_url}/admin")
    await phone.wait_for_selector("#traffic-now:has-text('now: in')", timeout=30_000)
    drawn, shown = await phone.evaluate("""() => {
      const c = document.getElementById("traffic-chart");
      return [c.width, Math.round(c.clientWidth * window.devicePixelRatio)];
    }""")
    assert drawn == shown < 800
    await phone.locator("#traffic-chart").screenshot(path=ARTIFACTS / "chart-phone.png")
