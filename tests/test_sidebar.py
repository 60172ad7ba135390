"""The chat-toolbar sidebar through HTTP: modes and CSP, JS-SDK signature and ticket cache, the
customer panel, sending (CSRF, permissions, internal items), activity, simulator login."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.models import Contact, ScoreEntry, Share
from tests.pages_seed import ITEM, PageUser, csrf_of, page_settings, seed

INTERNAL = "talk-track-first-call"
WECOM_UA = "Mozilla/5.0 (iPhone) wxwork/4.1.0 MicroMessenger/7.0.1"


@pytest.fixture
def settings(db_url: str, sim: Any) -> Any:
    return page_settings(db_url, sim.url, links={"oauth_authorize_url": f"{sim.url}/connect/oauth2/authorize"})


@pytest.fixture
async def seeded(beacon: Any, lib: Path) -> dict[str, int]:  # noqa: F811
    ids = await seed(beacon)
    async with beacon.rt.sessions() as session, session.begin():
        for rule, points, reason in (("deleted_rep", -30.0, "删除了销售"), ("deleted_rep", 30.0, "")):
            session.add(ScoreEntry(contact_id=ids["wmC1"], model="default", rule=rule, points=points, reason=reason, at=beacon.clock.now()))
    return ids


@pytest.fixture
async def rep1(beacon: Any) -> AsyncIterator[PageUser]:
    user = PageUser(str(beacon.client.make_url("/")), WECOM_UA)
    await user.login_member(beacon, "rep1", "/sidebar")
    yield user
    await user.close()


def issued(beacon: Any) -> list[Any]:
    """Tickets the simulator handed out (a call refused for an expired access token is retried)."""
    return [r for r in beacon.sim.state.received_for("/cgi-bin/ticket/get") if r.errcode == 0]


def base(beacon: Any) -> str:
    return str(beacon.client.make_url("/")).rstrip("/")


async def test_real_mode_loads_the_configured_sdk_and_widens_csp_for_it_only(beacon: Any, rep1: PageUser) -> None:
    status, html, resp = await rep1.get("/sidebar")
    assert status == 200
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self' https://res.wx.qq.com;" in csp and "unsafe" not in csp
    assert '<script src="https://res.wx.qq.com/open/js/jweixin-1.2.0.js"></script>' in html
    assert "sidebar-wx-sim.js" not in html and "模拟模式" not in html
    assert 'id="loading"' in html  # the script asks WeCom for the customer
    status, html, resp = await rep1.get("/sidebar?sim=1")
    assert "res.wx.qq.com" not in resp.headers["Content-Security-Policy"] and "res.wx.qq.com" not in html
    assert "/static/sidebar-wx-sim.js" in html and 'id="sim-banner"' in html and "模拟模式" in html
    assert 'class="card sim-pick"' in html  # no customer given yet
    _, _, resp = await rep1.get("/dashboard")
    assert "res.wx.qq.com" not in resp.headers["Content-Security-Policy"]


async def test_jsconfig_signs_our_page_url_with_a_cached_ticket(beacon: Any, rep1: PageUser) -> None:
    page = f"{base(beacon)}/sidebar?contact=wmC1&x=1"
    status, body, _ = await rep1.get("/sidebar/jsconfig", params={"url": page + "#section"})
    assert status == 200, body
    cfg = json.loads(body)
    assert cfg["corpid"] == beacon.rt.settings.wecom.corp_id and cfg["agentid"] == beacon.rt.settings.wecom.agent_id
    tickets = beacon.sim.state.tickets
    assert [t[0] for t in tickets] == ["agent_config"]
    plain = f"jsapi_ticket={tickets[0][1]}&noncestr={cfg['nonceStr']}&timestamp={cfg['timestamp']}&url={page}"
    assert cfg["signature"] == hashlib.sha1(plain.encode()).hexdigest()
    assert cfg["timestamp"] == int(beacon.clock.now().timestamp())
    for _ in range(3):
        assert (await rep1.get("/sidebar/jsconfig", params={"url": page}))[0] == 200
    assert len(issued(beacon)) == 1  # cached (WeCom allows 100/h)
    beacon.clock.advance(hours=2)
    assert (await rep1.get("/sidebar/jsconfig", params={"url": page}))[0] == 200
    assert len(issued(beacon)) == 2  # refreshed before it expired
    for bad in ("https://evil.example/sidebar", f"{base(beacon)}/dashboard", "javascript:alert(1)", ""):
        status, body, _ = await rep1.get("/sidebar/jsconfig", params={"url": bad})
        assert status == 400 and "sidebar" in body


async def test_jsconfig_without_a_ticket_is_502(beacon: Any, rep1: PageUser) -> None:
    beacon.sim.state.fail_next("/cgi-bin/ticket/get", 48002)
    status, body, _ = await rep1.get("/sidebar/jsconfig", params={"url": f"{base(beacon)}/sidebar"})
    assert status == 502 and "48002" in body


async def test_the_score_badge_shows_whole_points(beacon: Any, rep1: PageUser, seeded: dict[str, int]) -> None:
    from bot.lifecycle import shown_score
    from bot.models import Contact

    assert [shown_score(s) for s in (62.5, 62.49, 275.82, -0.5, None)] == [63, 62, 276, 0, 0]  # half up
    async with beacon.rt.sessions() as session, session.begin():  # decay leaves fractions
        (await session.get(Contact, seeded["wmC1"])).score = 275.82
    status, html, _ = await rep1.get("/sidebar?contact=wmC1")
    assert status == 200 and 'id="score">276 分' in html


async def test_panel_shows_score_reasons_activity_recommendations_and_library(beacon: Any, rep1: PageUser, seeded: dict[str, int]) -> None:
    status, html, _ = await rep1.get("/sidebar?contact=wmC1")
    assert status == 200
    assert "刘总" in html and 'id="score">60 分' in html and ">MQL<" in html and ">热<" in html
    reasons = re.findall(r'<span class="pts (?:pos|neg)">([^<]+)</span><span class="why">([^<]+?)(?: <span|</span>)', html)
    assert [(pts, label[:4]) for pts, label in reasons] == [("+30", "点击「预"), ("+12", "阅读《华"), ("+10", "电话已填"), ("+5", "阅读《华"), ("+3", "打开《华")]
    # Each line's points once, in its column: the label is the reason without the entry's own "+30".
    assert all(not re.search(r"[+-]\d+$", label.strip()) for _, label in reasons), reasons
    assert "删除了销售" not in html  # a rule whose entries net out to 0 is no reason
    assert "发送《" in html and "张三 · 接口" in html  # the seed's shares
    assert "点击「预约演示」《" in html and "阅读《" in html
    recommended = re.search(r'id="recommended">(.*?)</ul>', html, re.DOTALL).group(1)
    sends = re.findall(r'data-send="([^"]+)"', recommended)
    assert sends and ITEM not in sends  # already sent to this customer
    everything = re.findall(r'data-send="([^"]+)"', html)
    assert INTERNAL not in everything  # internal material is never in a send list
    status, html, _ = await rep1.get("/sidebar?contact=wmC1&q=话术")
    internal = re.search(r'id="internal">(.*?)</ul>', html, re.DOTALL).group(1)
    assert f'data-slug="{INTERNAL}"' in internal and "内部参考" in html and "data-send" not in internal
    status, html, _ = await rep1.get("/sidebar?contact=wmC1&kind=case_study")
    assert set(re.findall(r'data-send="([^"]+)"', re.search(r'id="library">(.*?)</ul>', html, re.DOTALL).group(1))) >= {ITEM}
    status, html, _ = await rep1.get("/sidebar?contact=wmC1&kind=poem")
    assert status == 400 and "kind" in html
    # The industry filter speaks the rep's language; the values stay the library's identifiers.
    status, html, _ = await rep1.get("/sidebar?contact=wmC1&industry=automotive")
    industries = dict(re.findall(r'<option value="([a-z_]+)"[^>]*>([^<]+)</option>', re.search(r'<select name="industry".*?</select>',
                                                                                             html, re.DOTALL).group(0)))
    assert industries["automotive"] == "汽车" and industries["manufacturing"] == "制造业" and industries["chemicals"] == "化工"
    assert '<option value="automotive" selected>汽车</option>' in html


async def test_send_creates_the_tracked_link_for_this_customer(beacon: Any, rep1: PageUser, seeded: dict[str, int]) -> None:
    _, html, _ = await rep1.get("/sidebar?contact=wmC2")
    csrf = csrf_of(html)
    slug = "solution-smart-factory-automotive"
    status, body, _ = await rep1.post("/sidebar/share", data={"slug": slug, "contact": "wmC2"})
    assert status == 403  # no CSRF token
    status, body, _ = await rep1.post("/sidebar/share", data={"csrf": csrf, "slug": slug, "contact": "wmC2"})
    assert status == 200, body
    card = json.loads(body)
    assert card["link"] == f"http://127.0.0.1:8080/l/{card['token']}"
    assert card["title"] and card["desc"] and card["imgUrl"] == "http://127.0.0.1:8080/static/sidebar-card.png"
    async with beacon.rt.sessions() as session:
        share = await session.scalar(select(Share).where(Share.token == card["token"]))
    assert (share.source, share.rep_userid, share.contact_id) == ("sidebar", "rep1", seeded["wmC2"])
    again = json.loads((await rep1.post("/sidebar/share", data={"csrf": csrf, "slug": slug, "contact": "wmC2"}))[1])
    assert again["token"] == card["token"]  # one link per (version, rep, customer)
    status, fragment, _ = await rep1.get("/sidebar/activity?contact=wmC2")
    assert status == 200 and "<html" not in fragment and "侧边栏" in fragment and "发送《" in fragment


@pytest.mark.parametrize(
    ("slug", "contact", "status", "message"),
    [
        (INTERNAL, "wmC1", 400, "内部资料不能发送"),
        ("no-such-item", "wmC1", 404, "unknown content"),
        (ITEM, "wmC3", 403, "不是该客户的跟进成员"),  # rep2's customer, and WeCom does not list rep1
        (ITEM, "bad id!", 400, "required"),
    ],
)
async def test_send_refusals(beacon: Any, rep1: PageUser, seeded: dict[str, int], slug: str, contact: str, status: int, message: str) -> None:
    _, html, _ = await rep1.get("/sidebar?contact=wmC1")
    got, body, _ = await rep1.post("/sidebar/share", data={"csrf": csrf_of(html), "slug": slug, "contact": contact})
    assert got == status and message in body


async def test_a_customer_of_someone_else_only_when_wecom_says_so(beacon: Any, rep1: PageUser, seeded: dict[str, int]) -> None:
    status, html, _ = await rep1.get("/sidebar?contact=wmC3")
    assert status == 403 and "不是该客户的跟进成员" in html
    assert (await rep1.get("/sidebar?contact=wmBrandNew"))[0] == 403
    beacon.sim.state.link_contact("rep1", "wmC3")  # rep1 added the customer in WeCom too
    beacon.sim.state.link_contact("rep1", "wmBrandNew")
    assert (await rep1.get("/sidebar?contact=wmC3"))[0] == 200
    status, html, _ = await rep1.get("/sidebar?contact=wmBrandNew")
    assert status == 200 and "新客户" in html and 'id="recommended"' in html
    status, body, _ = await rep1.post("/sidebar/share", data={"csrf": csrf_of(html), "slug": ITEM, "contact": "wmBrandNew"})
    assert status == 200, body
    async with beacon.rt.sessions() as session:
        assert await session.scalar(select(Contact).where(Contact.external_userid == "wmBrandNew")) is not None
    checks = len(beacon.sim.state.received_for("/cgi-bin/externalcontact/get"))
    await rep1.get("/sidebar?contact=wmC3")
    assert len(beacon.sim.state.received_for("/cgi-bin/externalcontact/get")) == checks  # confirmed follow cached


async def test_malformed_contact_and_admin_session(beacon: Any, rep1: PageUser, seeded: dict[str, int]) -> None:
    status, html, _ = await rep1.get("/sidebar?contact=%3Cscript%3E")
    assert status == 400 and "<script>" not in html
    admin = PageUser(base(beacon))
    try:
        assert (await admin.login_admin())[0] == 303
        status, html, _ = await admin.get("/sidebar?contact=wmC1")
        assert status == 403 and "企业微信成员" in html
        status, _, _ = await admin.get("/sidebar/jsconfig?url=x")
        assert status == 401
    finally:
        await admin.close()


async def test_internal_items_are_readable_not_sendable(beacon: Any, rep1: PageUser, seeded: dict[str, int]) -> None:
    status, html, _ = await rep1.get(f"/sidebar/internal/{INTERNAL}?contact=wmC1")
    assert status == 200 and "内部参考" in html and 'href="/sidebar?contact=wmC1"' in html
    assert (await rep1.get(f"/sidebar/internal/{ITEM}"))[0] == 404  # customer material: read it through a link
    assert (await rep1.get("/sidebar/internal/nope"))[0] == 404


async def test_simulated_login_only_in_simulator_mode(aiohttp_client: Any, db_url: str, sim: Any, clock: Any) -> None:
    from bot.app import create_app

    off = await aiohttp_client(create_app(page_settings(db_url, sim.url), clock=clock, background=False))
    on = await aiohttp_client(create_app(page_settings(db_url, sim.url, pages={"simulator_mode": True}), clock=clock, background=False))
    user_off, user_on = PageUser(str(off.make_url("/"))), PageUser(str(on.make_url("/")))
    try:
        _, html, _ = await user_off.get("/login")
        assert "模拟登录" not in html
        assert (await user_off.post("/login/sim", data={"csrf": csrf_of(html), "userid": "rep1"}))[0] == 404
        _, html, _ = await user_on.get("/login")
        assert "模拟登录" in html and "rep1" in html
        assert (await user_on.post("/login/sim", data={"csrf": "forged", "userid": "rep1"}))[0] == 403
        assert (await user_on.post("/login/sim", data={"csrf": csrf_of(html), "userid": "ghost"}))[0] == 400
        status, _, resp = await user_on.post("/login/sim", data={"csrf": csrf_of(html), "userid": "rep1", "next": "/sidebar"})
        assert status == 303 and resp.headers["Location"] == "/sidebar"
        status, html, resp = await user_on.get("/sidebar")
        assert status == 200 and "模拟模式" in html  # simulator mode: the stand-in without ?sim=1
        # the same cookie means nothing to a server that is not in simulator mode
        cookie = resp.cookies.get("bcn_session") or next(c for c in user_on.http.cookie_jar if c.key == "bcn_session")
        status, _, _ = await user_off.get("/dashboard", cookies={"bcn_session": cookie.value})
        assert status == 302
    finally:
        await user_off.close()
        await user_on.close()
