"""Tracked links through real HTTP: shares, landing pages, gate form, beacons, downloads, forwards."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from sqlalchemy import func, select

from bot.models import Contact, ContentItem, ContentVersion, Event, Share, Visitor
from bot.shares import LinkInfo
from content.importer import import_library

AUTH = {"Authorization": "Bearer test-admin-token"}
PHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Mobile/15E148 MicroMessenger/8.0.47 NetType/WIFI Language/zh_CN"
)


class Browser:
    """One person's browser: its own cookie jar and a phone's user agent."""

    def __init__(self, base: str, ua: str = PHONE_UA) -> None:
        self.base = base.rstrip("/")
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), headers={"User-Agent": ua})

    async def get(self, path: str, **kw: Any) -> tuple[int, str, Any]:
        async with self.http.get(self.base + path, allow_redirects=False, **kw) as resp:
            return resp.status, (await resp.read()).decode("utf-8", "replace"), resp

    async def post(self, path: str, **kw: Any) -> tuple[int, str, Any]:
        async with self.http.post(self.base + path, allow_redirects=False, **kw) as resp:
            return resp.status, await resp.text(), resp

    def page_data(self, html: str) -> dict[str, str]:
        return dict(re.findall(r'data-(token|key|child|pv)="([^"]*)"', html))

    async def beacon(self, token: str, html: str, **payload: Any) -> int:
        data = self.page_data(html)
        body = {"k": data["key"], "pv": data["pv"], **payload}
        status, _, _ = await self.post(f"/l/{token}/b", json=body)
        return status

    async def close(self) -> None:
        await self.http.close()


@pytest.fixture
async def browsers(beacon: Any) -> AsyncIterator[Any]:
    made: list[Browser] = []

    def new(ua: str = PHONE_UA) -> Browser:
        b = Browser(str(beacon.client.make_url("/")), ua)
        made.append(b)
        return b

    yield new
    for b in made:
        await b.close()


async def share(beacon: Any, content: str, contact: str | None = "wmCustomerA", rep: str = "rep1") -> dict[str, Any]:
    resp = await beacon.client.post("/api/shares", json={"content": content, "rep": rep, "contact": contact, "channel": None}, headers=AUTH)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def events(beacon: Any, *where: Any) -> list[Event]:
    async with beacon.rt.sessions() as session:
        return list((await session.scalars(select(Event).where(*where).order_by(Event.id))).all())


async def test_share_and_open_records_one_open(beacon: Any, lib: Path, browsers: Any) -> None:
    s = await share(beacon, "case-auto-parts-oee")
    assert s["url"].endswith(f"/l/{s['token']}")
    assert len(s["token"]) >= 22  # ≥128 bits of randomness
    again = await share(beacon, "case-auto-parts-oee")
    assert again["token"] == s["token"]  # one link per (version, rep, contact)
    b = browsers()
    status, html, resp = await b.get(f"/l/{s['token']}")
    assert status == 200
    assert "OEE" in html and "<h1>" in html
    assert "Content-Security-Policy" in resp.headers
    await b.get(f"/l/{s['token']}")  # a reload
    await beacon.rt.tracker.drain()
    opens = await events(beacon, Event.type == "open")
    assert len(opens) == 1
    async with beacon.rt.sessions() as session:
        contact = await session.scalar(select(Contact).where(Contact.external_userid == "wmCustomerA"))
    assert opens[0].contact_id == contact.id
    assert opens[0].rep_userid == "rep1"


async def test_a_reload_within_the_window_is_not_written_at_all(beacon: Any, lib: Path, browsers: Any) -> None:
    """The process remembers (share, browser) for `reload_window_s`: a reload costs no write (the event's
    idempotency key would drop it anyway, after a trip through the group commit)."""
    s = await share(beacon, "case-auto-parts-oee")
    b = browsers()
    writer = beacon.rt.events.writer
    assert (await b.get(f"/l/{s['token']}"))[0] == 200
    written = writer.rows
    assert written >= 1
    for _ in range(3):
        assert (await b.get(f"/l/{s['token']}"))[0] == 200
    assert writer.rows == written
    assert (await browsers().get(f"/l/{s['token']}"))[0] == 200  # another browser is another open
    assert writer.rows == written + 1


async def test_the_landing_page_is_rendered_once_and_filled_per_request(beacon: Any, lib: Path, browsers: Any) -> None:
    """Two browsers opening the same link get the page rendered once, with their own token, beacon key,
    child link and page view filled in: each body equals a full render with that request's values."""
    s = await share(beacon, "case-auto-parts-oee")
    pages = []
    for b in (browsers(), browsers()):
        status, html, _ = await b.get(f"/l/{s['token']}")
        assert status == 200
        pages.append((b, html))
    (b1, html1), (b2, html2) = pages
    d1, d2 = b1.page_data(html1), b2.page_data(html2)
    assert d1["token"] == d2["token"] == s["token"]
    assert len({d1["key"], d2["key"]}) == len({d1["child"], d2["child"]}) == len({d1["pv"], d2["pv"]}) == 2
    assert len(beacon.rt.pages._slotted) == 1  # one render served both
    link = await beacon.rt.links.resolve(s["token"])
    body_html, attachment = await beacon.rt.rendered.get(link.current_version_id)
    for html, data in ((html1, d1), (html2, d2)):
        full = beacon.rt.pages.render(
            "landing.html", "zh", token=s["token"], title=link.title, summary=link.summary, kind_label="客户案例",
            body_html=body_html, unlocked=True, outdated=False, attachment=attachment, track=True,
            beacon_key=data["key"], child_token=data["child"], pageview=data["pv"],
        )
        assert html == full
    for b, html in pages:  # and the filled-in keys are the real ones
        assert await b.beacon(s["token"], html, t="read", d=50) == 204


@pytest.mark.parametrize(
    "ua",
    [
        "facebookexternalhit/1.1",
        "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
        "TelegramBot (like TwitterBot)",
        "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        "curl/8.4.0",
        "",
    ],
)
async def test_preview_fetchers_do_not_count(beacon: Any, lib: Path, browsers: Any, ua: str) -> None:
    s = await share(beacon, "case-auto-parts-oee")
    status, html, resp = await browsers(ua).get(f"/l/{s['token']}")
    assert status == 200
    assert 'og:title' in html
    assert "bcn_v" not in resp.cookies
    await beacon.rt.events.writer.close()
    assert await events(beacon) == []


async def test_head_and_prefetch_do_not_count(beacon: Any, lib: Path, browsers: Any) -> None:
    s = await share(beacon, "case-auto-parts-oee")
    b = browsers()
    async with b.http.head(f"{b.base}/l/{s['token']}") as resp:
        assert resp.status == 200
    await b.get(f"/l/{s['token']}", headers={"Sec-Purpose": "prefetch"})
    assert await events(beacon) == []


async def test_unknown_and_forged_tokens_are_friendly_404(beacon: Any, lib: Path, browsers: Any) -> None:
    b = browsers()
    for token in ("nope", "A" * 24, "x" * 500, "<script>"):
        status, html, _ = await b.get(f"/l/{token}")
        assert status == 404
        assert "链接不存在" in html
    status, html, _ = await b.get("/l/" + "A" * 24 + "?lang=en")
    assert "Link not found" in html


async def test_internal_items_cannot_be_shared(beacon: Any, lib: Path) -> None:
    resp = await beacon.client.post("/api/shares", json={"content": "talk-track-first-call", "rep": "rep1", "contact": None}, headers=AUTH)
    assert resp.status == 400
    assert "internal" in (await resp.json())["error"]


async def test_share_api_errors(beacon: Any, lib: Path) -> None:
    async def post(body: Any, headers: dict[str, str] = AUTH) -> Any:
        return await beacon.client.post("/api/shares", json=body, headers=headers)

    assert (await post({"content": "case-auto-parts-oee", "rep": "rep1"}, {})).status == 401
    assert (await post({"content": "case-auto-parts-oee", "rep": "rep1"}, {"Authorization": "Bearer wrong"})).status == 401
    r = await post({"content": "no-such-item", "rep": "rep1"})
    assert r.status == 404 and "no-such-item" in (await r.json())["error"]
    r = await post({"content": "case-auto-parts-oee", "rep": "ghost"})
    assert r.status == 404 and "ghost" in (await r.json())["error"]
    assert (await post({"rep": "rep1"})).status == 400
    r = await beacon.client.post("/api/shares", data="not json", headers=AUTH)
    assert r.status == 400


async def test_read_depth_dwell_and_cta_beacons(beacon: Any, lib: Path, browsers: Any) -> None:
    s = await share(beacon, "solution-smart-factory-automotive")
    b = browsers()
    _, html, _ = await b.get(f"/l/{s['token']}")
    token = s["token"]
    assert await b.beacon(token, html, t="read", d=25) == 204
    assert await b.beacon(token, html, t="read", d=25) == 204  # a repeat is harmless and not counted
    assert await b.beacon(token, html, t="read", d=100) == 204
    assert await b.beacon(token, html, t="dwell", s=42, n=1) == 204
    assert await b.beacon(token, html, t="cta", c="demo") == 204
    assert await b.beacon(token, html, t="read", d=33) == 400
    assert await b.beacon(token, html, t="cta", c="hack") == 400
    assert await b.beacon(token, html, t="dwell", s=99999, n=2) == 400
    kinds = [(e.type, e.props) for e in await events(beacon) if e.type != "open"]
    assert kinds == [
        ("read", {"depth": 25}),
        ("read", {"depth": 100}),
        ("dwell", {"seconds": 42, "pageview": b.page_data(html)["pv"]}),
        ("cta", {"cta": "demo"}),
    ]


async def test_beacons_cannot_be_forged(beacon: Any, lib: Path, browsers: Any) -> None:
    s = await share(beacon, "solution-smart-factory-automotive")
    victim, attacker = browsers(), browsers()
    _, victim_html, _ = await victim.get(f"/l/{s['token']}")
    await attacker.get(f"/l/{s['token']}")
    # The attacker replays the victim's page key from their own browser: refused.
    assert await attacker.beacon(s["token"], victim_html, t="cta", c="demo") == 403
    assert await victim.beacon(s["token"], victim_html.replace('data-key="', 'data-key="x'), t="read", d=25) == 403
    status, _, _ = await victim.post(f"/l/{s['token']}/b", data=b"{not json")
    assert status in (400, 403)
    status, _, _ = await victim.post(f"/l/{s['token']}/b", data=b"x" * 5000)
    assert status == 413
    assert [e.type for e in await events(beacon)] == ["open", "open"]


async def test_beacon_rate_limit(beacon: Any, lib: Path, browsers: Any) -> None:
    s = await share(beacon, "solution-smart-factory-automotive")
    b = browsers()
    _, html, _ = await b.get(f"/l/{s['token']}")
    statuses = [await b.beacon(s["token"], html, t="read", d=25) for _ in range(65)]
    assert statuses.count(204) == 60
    assert statuses[-1] == 429
    beacon.clock.advance(seconds=2)  # refilled at 60 a minute: two more
    statuses = [await b.beacon(s["token"], html, t="read", d=25) for _ in range(3)]
    assert statuses == [204, 204, 429]


async def test_gate_form_validation_then_unlock(beacon: Any, lib: Path, browsers: Any) -> None:
    s = await share(beacon, "manufacturing-digital-whitepaper", contact=None)
    b = browsers()
    status, html, _ = await b.get(f"/l/{s['token']}")
    assert status == 200
    assert 'name="phone"' in html and 'class="body"' not in html
    csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
    status, html, _ = await b.post(
        f"/l/{s['token']}/gate", data={"csrf": csrf, "name": "", "company": "华东汽车", "title": "", "phone": "12345"}
    )
    assert status == 400
    assert "请填写姓名" in html
    assert "请输入11位中国大陆手机号" in html
    assert 'value="华东汽车"' in html  # what was typed is kept
    status, html, _ = await b.post(f"/l/{s['token']}/gate", data={"name": "赵六", "company": "X", "phone": "13812345678"})
    assert status == 403 and "页面已过期" in html  # no CSRF token
    status, _, resp = await b.post(
        f"/l/{s['token']}/gate",
        data={"csrf": csrf, "name": "赵六", "company": "华东汽车集团", "title": "CIO", "phone": "+86 138-1234-5678"},
    )
    assert status == 303
    status, html, _ = await b.get(f"/l/{s['token']}")
    assert 'class="body"' in html
    status, body, resp = await b.get(f"/l/{s['token']}/file")
    assert status == 200 and resp.headers["Content-Type"] == "application/pdf"
    assert "attachment" in resp.headers["Content-Disposition"]
    await beacon.rt.tracker.drain()
    async with beacon.rt.sessions() as session:
        contact = await session.scalar(select(Contact).where(Contact.phone == "13812345678"))
    assert (contact.name, contact.company, contact.title, contact.owner_userid) == ("赵六", "华东汽车集团", "CIO", "rep1")
    types = [(e.type, e.contact_id) for e in await events(beacon)]
    # the second view after unlocking is a reload within the window: not a second open
    assert types == [("open", contact.id), ("form_submit", contact.id), ("download", contact.id)]


async def test_gated_download_needs_the_form(beacon: Any, lib: Path, browsers: Any) -> None:
    s = await share(beacon, "manufacturing-digital-whitepaper", contact=None)
    status, _, resp = await browsers().get(f"/l/{s['token']}/file")
    assert status == 303 and resp.headers["Location"] == f"/l/{s['token']}"


async def test_forward_chain_and_attribution(beacon: Any, lib: Path, browsers: Any) -> None:
    s = await share(beacon, "case-electronics-smt-yield", contact="wmChampion")
    alice, bob, carol = browsers(), browsers(), browsers()
    _, html_a, _ = await alice.get(f"/l/{s['token']}")  # the contact herself
    child_a = alice.page_data(html_a)["child"]
    _, html_b, _ = await bob.get(f"/l/{child_a}")  # Alice forwarded her page to Bob
    child_b = bob.page_data(html_b)["child"]
    _, html_c, _ = await carol.get(f"/l/{child_b}")  # Bob forwarded to Carol
    await beacon.rt.tracker.drain()
    async with beacon.rt.sessions() as session:
        champion = await session.scalar(select(Contact).where(Contact.external_userid == "wmChampion"))
        bob_visitor = await session.scalar(select(Visitor).where(Visitor.id == (await session.scalar(select(Share.visitor_id).where(Share.token == child_b)))))
    forwards = await events(beacon, Event.type == "forward")
    assert len(forwards) == 2
    assert forwards[0].contact_id == champion.id  # Alice → Bob: Alice (the champion) gets the credit
    assert forwards[1].contact_id is None and forwards[1].visitor_id == bob_visitor.id  # Bob is anonymous so far
    # Bob identifies himself on a gated item: he becomes a contact referred by the champion,
    # and his earlier anonymous activity (including the forward to Carol) is his.
    gated = await share(beacon, "manufacturing-digital-whitepaper", contact="wmChampion")
    _, html, _ = await bob.get(f"/l/{gated['token']}")
    csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
    await bob.post(f"/l/{gated['token']}/gate", data={"csrf": csrf, "name": "Bob", "company": "同一家公司", "phone": "13900001111"})
    await beacon.rt.tracker.drain()
    async with beacon.rt.sessions() as session:
        bob_contact = await session.scalar(select(Contact).where(Contact.phone == "13900001111"))
        assert bob_contact.referrer_contact_id == champion.id
        assert bob_contact.owner_userid == "rep1"
        bob_events = (await session.scalars(select(Event.type).where(Event.contact_id == bob_contact.id).order_by(Event.id))).all()
    assert bob_events[:2] == ["open", "forward"]
    from bot.tracker import referral_chain

    async with beacon.rt.sessions() as session:
        chain = await referral_chain(session, child_b)
    assert [link["contact_id"] for link in chain] == [champion.id, champion.id, bob_contact.id]


async def test_a_token_resolves_to_its_share_item_and_parent(beacon: Any, lib: Path, browsers: Any) -> None:
    """What the link path knows about a token (bot.shares.LINK_BY_TOKEN, read from columns on a cache
    miss) is what the share, its item, the item's current version and the parent share say."""
    gated = await share(beacon, "manufacturing-digital-whitepaper", contact="wmChampion")  # gated, with a PDF
    s = await share(beacon, "case-electronics-smt-yield", contact="wmChampion")
    viewer = browsers()
    _, html, _ = await viewer.get(f"/l/{s['token']}")
    child = viewer.page_data(html)["child"]
    await browsers().get(f"/l/{child}")  # a forward: the child share is written with the open
    beacon.rt.links.forget()
    async with beacon.rt.sessions() as session:
        for token in (gated["token"], s["token"], child):
            sh, item, version = (await session.execute(
                select(Share, ContentItem, ContentVersion).join(ContentItem, ContentItem.id == Share.item_id)
                .join(ContentVersion, ContentVersion.id == ContentItem.current_version_id).where(Share.token == token)
            )).one()
            parent_token = await session.scalar(select(Share.token).where(Share.id == sh.parent_share_id)) if sh.parent_share_id else None
            link = await beacon.rt.links.resolve(token)
            assert link == LinkInfo(
                share_id=sh.id, token=token, item_id=item.id, version_id=sh.version_id,
                current_version_id=item.current_version_id, rep_userid="rep1", contact_id=sh.contact_id,
                channel_id=None, parent_share_id=sh.parent_share_id, parent_token=parent_token, slug=item.slug,
                title=item.title, summary=item.summary, kind=item.kind, gated=item.gated, internal=False, retired=False,
                attachment_name=version.attachment_name,
            )
    assert (await beacon.rt.links.resolve(gated["token"])).attachment_name == "manufacturing-digital-whitepaper.pdf"
    assert (await beacon.rt.links.resolve(gated["token"])).gated is True
    assert (await beacon.rt.links.resolve(child)).parent_token == s["token"]
    assert (await beacon.rt.links.resolve(child)).contact_id is None
    assert (await beacon.rt.links.resolve(s["token"])).parent_token is None
    assert await beacon.rt.links.resolve("A" * 24) is None


async def test_new_version_forwards_old_links_with_notice(beacon: Any, lib: Path, browsers: Any) -> None:
    s = await share(beacon, "blog-oee-common-mistakes")
    path = lib / "blog-oee-common-mistakes.md"
    path.write_text(path.read_text(encoding="utf-8") + "\n\n## 新增章节：第四个误区\n", encoding="utf-8")
    async with beacon.rt.sessions() as session, session.begin():
        await import_library(session, lib, now=beacon.clock.now())
    beacon.rt.links.forget()
    _, html, _ = await browsers().get(f"/l/{s['token']}")
    assert "此资料已更新" in html
    assert "第四个误区" in html
    new = await share(beacon, "blog-oee-common-mistakes")
    assert new["token"] != s["token"]  # the new version gets its own link


async def test_retired_item_link_is_410(beacon: Any, lib: Path, browsers: Any) -> None:
    s = await share(beacon, "blog-oee-common-mistakes")
    (lib / "blog-oee-common-mistakes.md").unlink()
    async with beacon.rt.sessions() as session, session.begin():
        await import_library(session, lib, now=beacon.clock.now())
    beacon.rt.links.forget()
    status, html, _ = await browsers().get(f"/l/{s['token']}")
    assert status == 410 and "资料已下架" in html


async def test_markdown_is_sanitized_on_the_page(beacon: Any, lib: Path, browsers: Any) -> None:
    path = lib / "blog-oee-common-mistakes.md"
    path.write_text(
        path.read_text(encoding="utf-8") + '\n<script>alert(1)</script>\n[x](javascript:alert(1))\n<img src=x onerror="alert(1)">\n',
        encoding="utf-8",
    )
    async with beacon.rt.sessions() as session, session.begin():
        await import_library(session, lib, now=beacon.clock.now())
    s = await share(beacon, "blog-oee-common-mistakes")
    _, html, _ = await browsers().get(f"/l/{s['token']}")
    assert "<script>alert" not in html and 'href="javascript:' not in html and "onerror" not in html
    assert "<script" not in html.split('<div class="body">')[1].split("</div>")[0]


async def test_timeline_and_offline_events(beacon: Any, lib: Path, browsers: Any) -> None:
    s = await share(beacon, "case-auto-parts-oee")
    await browsers().get(f"/l/{s['token']}")
    bad = await beacon.client.post("/api/events", json={"contact": "wmCustomerA", "type": "teleport"}, headers=AUTH)
    assert bad.status == 400
    body = await bad.json()
    assert "payment" in body["known"] and "teleport" in body["error"]
    assert (await beacon.client.post("/api/events", json={"contact": "wmNobody", "type": "call"}, headers=AUTH)).status == 404
    assert (await beacon.client.post("/api/events", json={"contact": "wmCustomerA", "type": "call", "at": "yesterday"}, headers=AUTH)).status == 400
    ok = await beacon.client.post(
        "/api/events",
        json={"contact": "wmCustomerA", "type": "payment", "at": "2026-11-20T10:00:00+08:00", "props": {"amount": 120000}},
        headers=AUTH,
    )
    assert ok.status == 202
    await beacon.rt.tracker.drain()
    resp = await beacon.client.get("/api/contacts/wmCustomerA", headers=AUTH)
    assert resp.status == 200
    data = await resp.json()
    assert [e["type"] for e in data["timeline"]] == ["open", "payment"]  # newest first
    assert data["timeline"][0]["item_title"].startswith("华东")
    assert data["score"] == sum(e["points"] for e in data["score_breakdown"])
    assert (await beacon.client.get("/api/contacts/wmNobody", headers=AUTH)).status == 404


async def test_answered_events_survive_shutdown(beacon: Any, lib: Path, browsers: Any) -> None:
    s = await share(beacon, "case-auto-parts-oee")
    people = [browsers() for _ in range(20)]
    for p in people:
        status, _, _ = await p.get(f"/l/{s['token']}")
        assert status == 200
    await beacon.rt.events.close()
    async with beacon.rt.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Event)) == 20
