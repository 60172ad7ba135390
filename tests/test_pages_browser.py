"""The member pages in a real browser (Debian's Chromium under Playwright): the sidebar against the
simulator's JS-SDK stand-in and against a stub of WeCom's script in real mode, and the dashboard.

WeCom's authorize page is played by a small server of the test (it answers with a fresh simulator
code), so the OAuth login runs as in WeCom. No CSP violation may appear on any page. Screenshots for the
README are written to docs/screenshots/ (SQLite run only).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from aiohttp import web
from sqlalchemy import select

from bot.models import Event, Share
from tests.pages_seed import FUNNEL, ITEM, page_settings, seed
from tests.test_browser import (  # noqa: F401  (fixture)
    PHONE,
    PHONE_UA,
    SCREENSHOTS,
    WAIT_S,
    chromium,
    save_screenshot_here,
    until,
)

pytestmark = pytest.mark.browser
WECOM_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 "
    "wxwork/4.1.22 MicroMessenger/7.0.1 Language/zh ColorScheme/Light"
)
DESKTOP = {"viewport": {"width": 1280, "height": 900}, "device_scale_factor": 1}
JSSDK = "https://res.wx.qq.com/open/js/jweixin-1.2.0.js"
# A stand-in for WeCom's script in real mode: records agentConfig and plays a chat with wmC1.
REAL_SDK_STUB = """
window.__real = {};
window.wx = {
  agentConfig: function (cfg) { window.__real.config = cfg; setTimeout(function () { cfg.success({}); }, 0); },
  invoke: function (name, params, cb) {
    var answers = {
      getContext: {err_msg: "getContext:ok", entry: "single_chat_tools"},
      getCurExternalContact: {err_msg: "getCurExternalContact:ok", userId: "wmC1"},
      sendChatMessage: {err_msg: "sendChatMessage:ok"}
    };
    window.__real[name] = params;
    setTimeout(function () { cb(answers[name]); }, 0);
  }
};
"""


@dataclass
class Authorize:
    """WeCom's authorize page, played on a loopback port: a fresh simulator code for `userid`, then
    back to Beacon's callback (Playwright cannot route requests that are redirects)."""

    url: str = ""
    beacon_base: str = ""
    userid: str = "rep1"


@pytest.fixture
async def authorize(aiohttp_server: Any, sim: Any) -> Authorize:
    auth = Authorize()

    async def page(request: web.Request) -> web.Response:
        query = request.query
        assert query["scope"] == "snsapi_base" and query["redirect_uri"].endswith("/auth/wecom/callback")
        code = sim.state.issue_oauth_code(userid=auth.userid)
        back = urlsplit(query["redirect_uri"]).path
        raise web.HTTPFound(f"{auth.beacon_base}{back}?{urlencode({'code': code, 'state': query['state']})}")

    app = web.Application()
    app.router.add_get("/connect/oauth2/authorize", page)
    server = await aiohttp_server(app)
    auth.url = str(server.make_url("/connect/oauth2/authorize"))
    return auth


@pytest.fixture
def settings(db_url: str, sim: Any, authorize: Authorize) -> Any:
    return page_settings(db_url, sim.url, links={"oauth_authorize_url": authorize.url})


@pytest.fixture
async def seeded(beacon: Any, lib: Path) -> dict[str, int]:  # noqa: F811
    return await seed(beacon)


def base(beacon: Any) -> str:
    return str(beacon.client.make_url("/")).rstrip("/")


def local(beacon: Any, url: str) -> str:
    """A public_url address on the test server's real port."""
    parts = urlsplit(url)
    return base(beacon) + parts.path + (f"?{parts.query}" if parts.query else "")


class Watch:
    """Script errors, CSP violations and failed requests of a page (none are allowed; browsers ask
    for /favicon.ico on their own)."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda msg: self._console(msg))
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("response", lambda r: self.errors.append(f"{r.status} {r.url}") if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)

    def _console(self, msg: Any) -> None:
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):  # those are in `response`
            self.errors.append(msg.text)

    def assert_clean(self) -> None:
        assert not self.errors, self.errors


async def wecom_page(beacon: Any, chromium: Any, authorize: Authorize, userid: str = "rep1") -> Any:  # noqa: F811
    """A phone in WeCom, whose OAuth login answers for `userid`."""
    authorize.beacon_base, authorize.userid = base(beacon), userid
    context = await chromium.new_context(**PHONE, user_agent=WECOM_UA, locale="zh-CN")
    context.set_default_timeout(WAIT_S * 1000)
    return context


@pytest.fixture
async def contexts() -> AsyncIterator[list[Any]]:
    made: list[Any] = []
    yield made
    for context in made:
        await context.close()


async def test_sidebar_in_simulator_mode_sends_and_sees_the_open(
    beacon: Any, seeded: dict[str, int], chromium: Any, contexts: list[Any], authorize: Authorize, db_url: str  # noqa: F811
) -> None:
    context = await wecom_page(beacon, chromium, authorize)
    contexts.append(context)
    page = await context.new_page()
    watch = Watch(page)
    await page.goto(f"{base(beacon)}/sidebar?sim=1&customer=wmC1")  # OAuth, then the stand-in names the customer
    await page.wait_for_url("**/sidebar?*contact=wmC1*")
    await page.locator("#sidebar[data-ready='1']").wait_for()
    assert await page.locator("#sim-banner").inner_text() == "模拟模式 · 未连接企业微信，“发送”只演示将发出的卡片"
    assert await page.locator("#who h1").inner_text() == "刘总"
    assert await page.locator("#score").inner_text() == "60 分"
    assert (await page.locator("#reasons li").first.inner_text()).startswith("+30")
    config = await page.evaluate("window.__wxSim.config")
    assert config["corpid"] and config["agentid"] and len(config["signature"]) == 40

    first = page.locator("#recommended .item").first
    slug = await first.get_attribute("data-slug")
    title = await first.locator(".title").inner_text()
    await first.locator("button.send").click()
    await page.locator("#sim-sent").wait_for(state="visible")
    assert await page.locator("#sim-sent-title").inner_text() == title
    sent = await page.evaluate("window.__wxSim.sent")
    assert len(sent) == 1 and sent[0]["msgtype"] == "news" and sent[0]["news"]["title"] == title
    await page.locator("#activity .act-share", has_text=f"发送《{title}》").wait_for()
    assert await page.locator("#status").inner_text() == "已发送"
    async with beacon.rt.sessions() as session:
        share = await session.scalar(select(Share).where(Share.source == "sidebar"))
    assert (share.rep_userid, share.contact_id) == ("rep1", seeded["wmC1"])
    assert sent[0]["news"]["link"].endswith(f"/l/{share.token}")
    assert slug != ITEM  # already sent to wmC1: not recommended again
    if save_screenshot_here(db_url):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.evaluate("() => window.scrollTo(0, 0)")  # the banner is sticky: keep it at the top of the picture
        height = await page.evaluate("() => document.documentElement.scrollHeight")
        await page.screenshot(path=str(SCREENSHOTS / "sidebar.png"), full_page=True, clip={"x": 0, "y": 0, "width": 390, "height": min(height, 1500)})

    # the customer opens the card in WeChat
    customer = await chromium.new_context(**PHONE, user_agent=PHONE_UA, locale="zh-CN")  # not HeadlessChrome: that is a preview fetcher
    contexts.append(customer)
    reader = await customer.new_page()
    await reader.goto(local(beacon, sent[0]["news"]["link"]))
    await reader.locator("#content").wait_for()

    async def opened() -> bool:
        await beacon.rt.tracker.drain()
        async with beacon.rt.sessions() as session:
            return bool(await session.scalar(select(Event.id).where(Event.type == "open", Event.share_id == share.id)))

    await until(opened, "the open of the sent link")
    await page.click("#refresh")
    await page.locator("#activity .act-open", has_text=f"打开《{title}》").wait_for()
    watch.assert_clean()


async def test_sidebar_in_real_mode_loads_wecom_script_from_config(
    beacon: Any, seeded: dict[str, int], chromium: Any, contexts: list[Any], authorize: Authorize  # noqa: F811
) -> None:
    context = await wecom_page(beacon, chromium, authorize)
    contexts.append(context)
    loaded: list[str] = []

    async def sdk(route: Any) -> None:
        loaded.append(route.request.url)
        await route.fulfill(status=200, content_type="application/javascript", body=REAL_SDK_STUB)

    await context.route(JSSDK, sdk)
    page = await context.new_page()
    watch = Watch(page)
    await page.goto(f"{base(beacon)}/sidebar")
    await page.wait_for_url("**/sidebar?contact=wmC1")  # WeCom's #wechat_redirect is dropped
    await page.locator("#sidebar[data-ready='1']").wait_for()
    assert loaded and await page.locator("#sim-banner").count() == 0
    config = await page.evaluate("window.__real.config")
    ticket = beacon.sim.state.tickets[-1][1]
    url = page.url.split("#")[0]
    plain = f"jsapi_ticket={ticket}&noncestr={config['nonceStr']}&timestamp={config['timestamp']}&url={url}"
    assert config["signature"] == hashlib.sha1(plain.encode()).hexdigest()
    assert config["jsApiList"] == ["getContext", "getCurExternalContact", "sendChatMessage"]
    await page.locator("#recommended button.send").first.click()
    await page.locator("#status", has_text="已发送").wait_for()
    news = await page.evaluate("window.__real.sendChatMessage")
    assert news["msgtype"] == "news" and "/l/" in news["news"]["link"] and news["news"]["imgUrl"].endswith("/static/sidebar-card.png")
    watch.assert_clean()


async def test_dashboard_login_funnel_filter_and_csv(
    beacon: Any, seeded: dict[str, int], chromium: Any, contexts: list[Any], db_url: str  # noqa: F811
) -> None:
    context = await chromium.new_context(**DESKTOP, locale="zh-CN", accept_downloads=True)
    context.set_default_timeout(WAIT_S * 1000)
    contexts.append(context)
    page = await context.new_page()
    watch = Watch(page)
    await page.goto(f"{base(beacon)}/dashboard")
    await page.wait_for_url("**/login?next=*")
    await page.fill("#token", "test-admin-token")
    await page.click("text=以管理员登录")
    await page.wait_for_url(f"{base(beacon)}/dashboard")
    cells = page.locator("#t-stages td[data-col='reached']")
    assert await cells.all_inner_texts() == [str(n) for n in FUNNEL["admin"]]
    assert await page.locator("#t-stages td[data-col='from_previous']").all_inner_texts() == ["—", "80.0%", "50.0%", "50.0%", "100.0%"]
    await page.locator("canvas[data-rendered='1']").nth(1).wait_for()  # both charts drawn by the local Chart.js
    if save_screenshot_here(db_url):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)

    # a date range that also holds wmC6 (first seen sixty days ago)
    await page.fill("input[name=from]", "2026-09-01")
    await page.click("text=应用")
    await page.wait_for_url("**/dashboard?from=2026-09-01*")
    assert (await cells.all_inner_texts())[0] == "6"

    await page.click("nav.main-nav >> text=客户")
    await page.select_option("select[name=stage]", "nurturing")
    await page.click("text=筛选")
    await page.wait_for_url("**stage=nurturing*")
    assert await page.locator("#contact-count").inner_text() == "共 1 位客户"
    assert await page.locator("td[data-col='external_userid']").all_inner_texts() == ["wmC2"]
    async with page.expect_download() as info:
        await page.click("#t-contacts a.csv")
    download = await info.value
    rows = list(csv.DictReader(io.StringIO(Path(await download.path()).read_text(encoding="utf-8-sig"))))
    assert [(r["external_userid"], r["stage_label"]) for r in rows] == [("wmC2", "可培养")]

    await page.goto(f"{base(beacon)}/dashboard/contacts/wmC1")
    assert await page.locator("#score").inner_text() == "60"
    assert sorted(await page.locator("#t-timeline td[data-col='type']").all_inner_texts()) == ["cta", "open", "read"]
    if save_screenshot_here(db_url):
        await page.screenshot(path=str(SCREENSHOTS / "contact.png"), full_page=True)
    await page.goto(f"{base(beacon)}/dashboard/content")
    await page.locator("canvas[data-rendered='1']").wait_for()
    await page.goto(f"{base(beacon)}/dashboard/reps")
    await page.locator("canvas[data-rendered='1']").wait_for()
    watch.assert_clean()


async def test_admin_mass_send_preview_error_beside_the_field_then_send(
    beacon: Any, seeded: dict[str, int], chromium: Any, contexts: list[Any]  # noqa: F811
) -> None:
    context = await chromium.new_context(**DESKTOP, locale="zh-CN")
    context.set_default_timeout(WAIT_S * 1000)
    contexts.append(context)
    page = await context.new_page()
    watch = Watch(page)
    await page.goto(f"{base(beacon)}/login?next=/admin/mass-sends")
    await page.fill("#token", "test-admin-token")
    await page.click("text=以管理员登录")
    await page.goto(f"{base(beacon)}/admin/mass-sends")
    await page.select_option("select[name=content]", ITEM)
    await page.select_option("select[name=owner]", "rep1")
    await page.fill("textarea[name=text]", "您好 {电话}")
    await page.click("button[value=preview]")
    error = page.locator("#error-text")
    await error.wait_for()
    assert "未知占位符" in await error.inner_text()
    # beside its field: inside the template's label, right after the textarea
    assert await page.locator("label:has(textarea[name=text]) #error-text").count() == 1
    assert await page.locator("textarea[name=text]").input_value() == "您好 {电话}"
    assert watch.errors == [f"400 {base(beacon)}/admin/mass-sends"]  # the form's answer, as intended
    watch.errors.clear()

    await page.fill("textarea[name=text]", "{name}您好，《{title}》请查收：{link}")
    await page.click("button[value=preview]")
    await page.locator("#mass-preview").wait_for()
    count = int(await page.locator("#preview-count").inner_text())
    assert count >= 1 and "您好，《" in await page.locator("#preview-message").inner_text()
    await page.click("button[value=send]")
    await page.locator("#mass-sent").wait_for()
    assert await page.locator("#t-mass-sends td[data-col='recipients']").all_inner_texts() == [str(count)]
    await beacon.process()
    assert len(beacon.sim.state.msg_templates) == count
    watch.assert_clean()
