"""Tracked links in a real browser: Debian's Chromium driven by Playwright against the app on a loopback port.

What only a browser shows: landing.js reporting read depth while the article is scrolled, visible time
when the page is left, CTA clicks, the address bar replaced by the viewer's own child link, the gate
form's messages beside its fields, a real download, and a second person opening a forwarded link.
Nothing waits a fixed time: every wait is on a condition (in the page or in the database), bounded.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import select

from bot.models import Contact, Event
from bot.pages import PAGE_TEXT
from tests.conftest import REQUIRE_BROWSER

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
# The README's screenshots are refreshed with UPDATE_SCREENSHOTS=1; otherwise they go to a temp folder,
# so a test run leaves the working tree as it found it.
SCREENSHOTS = (ROOT / "docs" / "screenshots" if os.environ.get("UPDATE_SCREENSHOTS") == "1"
               else Path(tempfile.gettempdir()) / f"beacon-screenshots-{os.getpid()}")
CHROMIUM = "/usr/bin/chromium"
# Playwright adds --headless itself (headless=True); these are the rest of the flags this machine needs:
# without the background-networking ones Chromium keeps dialling Google's hosts through a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# A phone in WeChat. Never HeadlessChrome: that user agent is treated as a preview fetcher on purpose.
PHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Mobile/15E148 MicroMessenger/8.0.47 NetType/WIFI Language/zh_CN"
)
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
AUTH = {"Authorization": "Bearer test-admin-token"}
T = PAGE_TEXT["zh"]
WAIT_S = 10.0


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    """Debian's Chromium under Playwright (async API); skipped when absent unless REQUIRE_BROWSER=1."""
    problem = None
    if not os.path.exists(CHROMIUM):
        problem = f"{CHROMIUM} not found (apt-get install chromium)"
    else:
        try:
            from playwright.async_api import async_playwright
        except ImportError as exc:
            problem = f"the playwright package is not installed ({exc})"
    if problem:
        if REQUIRE_BROWSER:
            pytest.fail(f"REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(problem)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def phone(chromium: Any) -> AsyncIterator[Callable[[], Awaitable[Any]]]:
    """New phones on demand: each a browser context of its own (its own cookies: a different person)."""
    contexts: list[Any] = []

    async def new() -> Any:
        context = await chromium.new_context(**PHONE, user_agent=PHONE_UA, locale="zh-CN", accept_downloads=True)
        context.set_default_timeout(WAIT_S * 1000)
        contexts.append(context)
        return await context.new_page()

    yield new
    for context in contexts:
        await context.close()


async def share(beacon: Any, content: str, contact: str | None = "wmCustomerA") -> dict[str, Any]:
    resp = await beacon.client.post("/api/shares", json={"content": content, "rep": "rep1", "contact": contact}, headers=AUTH)
    assert resp.status == 201, await resp.text()
    return await resp.json()


def url(beacon: Any, token: str) -> str:
    # The share API answers with public_url; the browser must reach the test server's real port.
    return str(beacon.client.make_url(f"/l/{token}"))


async def events(beacon: Any, *where: Any) -> list[Event]:
    async with beacon.rt.sessions() as session:
        return list((await session.scalars(select(Event).where(*where).order_by(Event.id))).all())


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = WAIT_S) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def child_of(page: Any, token: str) -> str:
    """Wait for landing.js to swap the address to the viewer's child link; return the child token."""
    await page.wait_for_function("t => location.pathname !== '/l/' + t", arg=token)
    child = await page.locator("#content").get_attribute("data-child")
    assert child and child != token
    assert page.url.endswith(f"/l/{child}")
    return child


async def scroll_to_end(page: Any) -> None:
    """Scroll down a part of a screen at a time, as a thumb does, until the bottom of the page."""
    for _ in range(200):
        at_end = await page.evaluate(
            "() => { window.scrollBy(0, Math.round(innerHeight * 0.4));"
            " return innerHeight + scrollY >= document.documentElement.scrollHeight - 1; }"
        )
        # let the scroll handler's animation frame run before the next step
        await page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        if at_end:
            return
    pytest.fail("the page never reached its end")


def save_screenshot_here(db_url: str) -> bool:
    return db_url.startswith("sqlite")  # one set of pictures per run, not one per database


async def test_read_cta_dwell_and_child_link(beacon: Any, lib: Path, phone: Any, db_url: str) -> None:
    s = await share(beacon, "product-manual-platform-onboarding")
    page = await phone()
    response = await page.goto(url(beacon, s["token"]))
    assert response.status == 200
    await child_of(page, s["token"])
    assert await page.evaluate("document.visibilityState") == "visible"  # else no visible time accrues
    assert await page.locator("#content > h1").inner_text() == s["title"]
    article_px = await page.evaluate("document.getElementById('content').getBoundingClientRect().height")
    assert article_px > 2 * 844, "the item must be several screens long for read depth to mean anything"
    if save_screenshot_here(db_url):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / "landing.png"))

    async def depths() -> list[int]:
        return sorted(e.props["depth"] for e in await events(beacon, Event.type == "read"))

    assert 100 not in await depths()  # the end is not on screen yet
    await scroll_to_end(page)
    await until(lambda: _has(depths, 100), "the read-100 beacon")
    await page.evaluate("window.scrollTo(0, 0)")  # up and down again: nothing is reported twice
    await scroll_to_end(page)

    await page.get_by_role("button", name=T["cta_demo"]).click()
    thanks = page.locator("#cta-thanks")
    await thanks.wait_for(state="visible")
    assert await thanks.inner_text() == T["cta_thanks"]
    await until(lambda: events(beacon, Event.type == "cta"), "the CTA beacon")

    # at least a second of visible time (a function, not a string: the page's CSP forbids eval)
    await page.wait_for_function("() => performance.now() > 1500")
    await page.goto("about:blank")  # leaving: visibilitychange/pagehide send the visible time
    await until(lambda: events(beacon, Event.type == "dwell"), "the dwell beacon")

    await beacon.rt.tracker.drain()
    async with beacon.rt.sessions() as session:
        contact = await session.scalar(select(Contact).where(Contact.external_userid == "wmCustomerA"))
    stored = await events(beacon)
    assert {e.contact_id for e in stored} == {contact.id}
    types = [e.type for e in stored]
    assert types.count("open") == 1
    assert await depths() == [25, 50, 75, 100]
    assert [e.props for e in stored if e.type == "cta"] == [{"cta": "demo"}]
    dwell = [e.props for e in stored if e.type == "dwell"]
    assert len(dwell) == 1 and dwell[0]["seconds"] >= 1
    assert sorted(set(types)) == ["cta", "dwell", "open", "read"]

    resp = await beacon.client.get("/api/contacts/wmCustomerA", headers=AUTH)
    assert resp.status == 200
    timeline = (await resp.json())["timeline"]
    assert sorted(e["type"] for e in timeline) == sorted(types)
    assert {e["item_title"] for e in timeline} == {s["title"]}


async def _has(get: Callable[[], Awaitable[list[int]]], value: int) -> bool:
    return value in await get()


async def test_gate_form_errors_then_unlock_and_download(beacon: Any, lib: Path, phone: Any, db_url: str) -> None:
    s = await share(beacon, "manufacturing-digital-whitepaper", contact=None)
    page = await phone()
    await page.goto(url(beacon, s["token"]))
    assert await page.locator(".body").count() == 0
    await page.fill("#f-company", "华东汽车")
    await page.fill("#f-phone", "12345")
    await page.get_by_role("button", name=T["gate_submit"]).click()
    await page.locator("#e-name").wait_for()

    for field, message in (("name", T["err_required"].format(field=T["name"])), ("phone", T["err_phone"])):
        error = page.locator(f"#e-{field}")
        assert await error.inner_text() == message
        # beside its own input: the next element after it, announced by it, and drawn right under it
        assert await page.evaluate(f"document.getElementById('f-{field}').nextElementSibling.id") == f"e-{field}"
        assert await page.get_attribute(f"#f-{field}", "aria-describedby") == f"e-{field}"
        box_in, box_err = await page.locator(f"#f-{field}").bounding_box(), await error.bounding_box()
        assert 0 <= box_err["y"] - (box_in["y"] + box_in["height"]) < 24
        assert abs(box_err["x"] - box_in["x"]) < 2
    assert await page.locator("#e-company").count() == 0
    assert await page.input_value("#f-company") == "华东汽车"  # what was typed is kept
    if save_screenshot_here(db_url):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / "gate-errors.png"))

    await page.fill("#f-name", "赵六")
    await page.fill("#f-company", "华东汽车集团")
    await page.fill("#f-title", "CIO")
    await page.fill("#f-phone", "+86 138-1234-5678")
    async with page.expect_navigation(url=re.compile(r"/l/[A-Za-z0-9_-]+$")):
        await page.get_by_role("button", name=T["gate_submit"]).click()
    await page.locator(".body").wait_for()
    await child_of(page, s["token"])

    async with page.expect_download() as info:
        await page.click("#download")
    download = await info.value
    assert download.suggested_filename == "manufacturing-digital-whitepaper.pdf"
    assert Path(await download.path()).read_bytes().startswith(b"%PDF")

    await beacon.rt.tracker.drain()
    async with beacon.rt.sessions() as session:
        contact = await session.scalar(select(Contact).where(Contact.phone == "13812345678"))
    assert contact is not None
    assert (contact.name, contact.company, contact.title, contact.owner_userid) == ("赵六", "华东汽车集团", "CIO", "rep1")
    stored = await events(beacon)
    assert {e.contact_id for e in stored} == {contact.id}
    # the item is short: once unlocked, its end is on screen at once and read depth is reported too
    assert [e.type for e in stored if e.type != "read"] == ["open", "form_submit", "download"]
    assert [e.props["file"] for e in stored if e.type == "download"] == ["manufacturing-digital-whitepaper.pdf"]


async def test_forwarded_link_opened_by_someone_else(beacon: Any, lib: Path, phone: Any) -> None:
    s = await share(beacon, "case-electronics-smt-yield", contact="wmChampion")
    alice, bob = await phone(), await phone()
    await alice.goto(url(beacon, s["token"]))
    child_a = await child_of(alice, s["token"])
    await bob.goto(url(beacon, child_a))  # Alice passed her page on to Bob
    child_b = await child_of(bob, child_a)
    assert child_b != child_a
    await until(lambda: _count(beacon, "open", 2), "both opens")
    await beacon.rt.tracker.drain()
    async with beacon.rt.sessions() as session:
        champion = await session.scalar(select(Contact).where(Contact.external_userid == "wmChampion"))
    forwards = await events(beacon, Event.type == "forward")
    assert [f.contact_id for f in forwards] == [champion.id]
    opens = await events(beacon, Event.type == "open")
    assert opens[0].contact_id == champion.id and opens[1].contact_id != champion.id


async def _count(beacon: Any, type_: str, n: int) -> bool:
    return len(await events(beacon, Event.type == type_)) >= n


async def test_reopening_within_the_window_is_one_open(beacon: Any, lib: Path, phone: Any) -> None:
    s = await share(beacon, "pitch-deck-company-overview")
    page = await phone()
    for _ in range(2):  # the chat card tapped, then tapped again
        await page.goto(url(beacon, s["token"]))
        await child_of(page, s["token"])
    await beacon.rt.tracker.drain()
    assert len(await events(beacon, Event.type == "open")) == 1


async def test_browser_reload_of_the_child_address_is_not_a_new_open(beacon: Any, lib: Path, phone: Any) -> None:
    s = await share(beacon, "pitch-deck-company-overview")
    page = await phone()
    await page.goto(url(beacon, s["token"]))
    child = await child_of(page, s["token"])
    await page.reload()
    await page.locator("#content").wait_for()
    await beacon.rt.tracker.drain()
    opens = await events(beacon, Event.type == "open")
    assert len(opens) == 1, f"{len(opens)} opens on shares {[e.share_id for e in opens]}"
    assert page.url.endswith(f"/l/{child}")  # the address forwarded on stays this viewer's child link
