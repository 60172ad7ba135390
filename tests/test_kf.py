"""WeChat Customer Service through the simulator: sync_msg paging, menus, links, budget, hand-over."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select

from bot.config import Settings
from bot.kf_menus import MENU_MAX, item_entry, msgmenu, page_of, parse_menu_id
from bot.models import Contact, ContentItem, Event, Identity, InboxItem, KfCursor, OutboxItem, Share
from tests.conftest import Sim, make_settings

PHONE_UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148 MicroMessenger/8.0.47"
KF = "wkBeaconKf0001"
CUST = "wmKfCustomer01"
SYNC = "/cgi-bin/kf/sync_msg"
PUBLIC_KINDS = {"whitepaper", "case_study", "solution", "product_manual", "pitch_deck", "faq", "report", "webinar", "blog"}


@pytest.fixture
def settings(db_url: str, sim: Sim) -> Settings:
    # Small sync pages so that a handful of messages spans several pages.
    return make_settings(db_url, api_base=sim.url, kf={"page_size": 2})


@pytest.fixture
async def lib(lib: Path, beacon: Any) -> Path:
    """The sample library (conftest's `lib`), and the kf account in the simulator."""
    beacon.sim.state.add_kf_account(KF, "云桥资料助手")
    return lib


async def say(beacon: Any, content: str, menu_id: str | None = None, customer: str = CUST) -> Any:
    """The customer writes (or picks a menu entry) a second later; Beacon processes everything."""
    beacon.clock.advance(seconds=1)
    assert (await beacon.driver.kf_customer_text(KF, customer, content, menu_id=menu_id)).status == 200
    await beacon.process()
    return beacon.sim.state.kf_sent[-1] if beacon.sim.state.kf_sent else None


def sent_to(beacon: Any, customer: str = CUST) -> list[Any]:
    return [s for s in beacon.sim.state.kf_sent if s.touser == customer]


def ids(message: Any) -> list[str]:
    return [entry["click"]["id"] for entry in message.payload["msgmenu"]["list"]]


async def rows(beacon: Any, model: Any, *where: Any) -> list[Any]:
    async with beacon.rt.sessions() as session:
        return list((await session.scalars(select(model).where(*where))).all())


async def cursor(beacon: Any) -> str | None:
    async with beacon.rt.sessions() as session:
        return await session.scalar(select(KfCursor.cursor).where(KfCursor.open_kfid == KF))


# ---- menus at two levels --------------------------------------------------------------------------


async def test_first_message_category_menu_then_category_then_item(beacon: Any, lib: Path) -> None:
    first = await say(beacon, "你好")
    assert first.msgtype == "msgmenu" and first.touser == CUST
    menu = first.payload["msgmenu"]
    assert menu["head_content"].startswith("您好，欢迎咨询！") and menu["tail_content"]
    assert {i.split(":")[2] for i in ids(first)} == PUBLIC_KINDS  # no talk tracks or competitor briefs
    labels = [entry["click"]["content"] for entry in menu["list"]]
    assert "白皮书" in labels and "客户案例" in labels and len(labels) <= MENU_MAX

    cases = await say(beacon, "客户案例", menu_id="cat:kind:case_study")
    assert cases.msgtype == "msgmenu"
    assert set(ids(cases)) == {
        "item:case-auto-parts-oee", "item:case-auto-parts-oee-finance", "item:case-chemicals-energy",
        "item:case-electronics-smt-yield", "item:case-food-erp-expansion",
    }  # fmt: skip
    assert "客户案例" in cases.payload["msgmenu"]["head_content"]

    link = await say(beacon, "华东某汽车零部件集团：六个月 OEE 提升 12%", menu_id="item:case-auto-parts-oee")
    assert link.msgtype == "link"
    body = link.payload["link"]
    assert body["title"] == "华东某汽车零部件集团：六个月 OEE 提升 12%" and body["desc"]
    assert body["thumb_media_id"] in beacon.sim.state.media
    token = body["url"].rsplit("/l/", 1)[1]
    (share,) = await rows(beacon, Share, Share.token == token)
    assert share.source == "kf"
    resp = await beacon.client.get(f"/l/{token}", headers={"User-Agent": PHONE_UA})
    assert resp.status == 200 and "OEE" in await resp.text()

    await say(beacon, "白皮书", menu_id="item:manufacturing-digital-whitepaper")
    assert len(beacon.sim.state.media) == 1  # the thumbnail is uploaded once and reused

    (contact,) = await rows(beacon, Contact, Contact.external_userid == CUST)
    assert share.contact_id == contact.id
    kinds = {(i.kind, i.value) for i in await rows(beacon, Identity, Identity.contact_id == contact.id)}
    assert kinds == {("external_userid", CUST), ("kf", CUST)}
    events = sorted(await rows(beacon, Event, Event.contact_id == contact.id), key=lambda e: e.id)
    assert [e.type for e in events] == ["message", "menu_click", "menu_click", "menu_click"]
    assert events[1].props["category"] == "kind:case_study" and events[1].item_id is None
    assert events[2].item_id == share.item_id and events[2].share_id == share.id
    assert all(e.idempotency_key.startswith("kf:") for e in events)


async def test_keywords_and_free_text_search(beacon: Any, lib: Path) -> None:
    await say(beacon, "你好")
    again = await say(beacon, "资料！")
    assert again.payload["msgmenu"]["head_content"] == "请选择您感兴趣的资料类型："  # a keyword, not a first message

    found = await say(beacon, "OEE")
    assert found.msgtype == "msgmenu" and "item:case-auto-parts-oee" in ids(found)
    assert "OEE" in found.payload["msgmenu"]["head_content"]

    missing = await say(beacon, "量子计算")
    head = missing.payload["msgmenu"]["head_content"]
    assert "没有找到" in head and "量子计算" in head
    assert all(i.startswith("cat:") for i in ids(missing))

    internal = await say(beacon, "销售话术")  # only an internal talk track has this title
    assert "没有找到" in internal.payload["msgmenu"]["head_content"]
    (contact,) = await rows(beacon, Contact, Contact.external_userid == CUST)
    searches = [e for e in await rows(beacon, Event, Event.contact_id == contact.id) if e.props.get("text") == "量子计算"]
    assert searches[0].type == "message" and searches[0].props["results"] == 0


async def test_menus_never_offer_internal_or_retired_items(beacon: Any, lib: Path) -> None:
    async with beacon.rt.sessions() as session, session.begin():
        retired = await session.scalar(select(ContentItem).where(ContentItem.slug == "case-chemicals-energy"))
        retired.retired_at = beacon.clock.now()
    await say(beacon, "你好")
    cases = await say(beacon, "客户案例", menu_id="cat:kind:case_study")
    assert "item:case-chemicals-energy" not in ids(cases) and len(ids(cases)) == 4
    forged = await say(beacon, "话术", menu_id="item:talk-track-first-call")
    assert forged.msgtype == "text" and "无法查看" in forged.payload["text"]["content"]
    stale = await say(beacon, "化工", menu_id="item:case-chemicals-energy")
    assert stale.msgtype == "text"
    assert await rows(beacon, Share) == []


async def test_long_menus_page_with_more(beacon: Any, lib: Path) -> None:
    # 9 kinds + 6 industries (no logistics items) + 4 stages = 19 categories
    beacon.rt.settings = beacon.rt.settings.replace(kf={"menu_by": ["kind", "industry", "stage"]})
    first = await say(beacon, "你好")
    assert len(ids(first)) == MENU_MAX and ids(first)[-1] == "cats:9"
    assert first.payload["msgmenu"]["list"][-1]["click"]["content"] == "更多分类…"
    second = await say(beacon, "更多分类…", menu_id="cats:9")
    assert len(ids(second)) == MENU_MAX and not set(ids(second)) & set(ids(first))
    assert ids(second)[0] == "cat:industry:manufacturing" and ids(second)[-1] == "cat:stage:retention"
    industry = await say(beacon, "汽车", menu_id="cat:industry:automotive")
    assert "item:case-auto-parts-oee" in ids(industry)


def test_menu_building_respects_wecom_limits() -> None:
    entries = [(f"item:x{n}", "长标题" * 40) for n in range(25)]
    shown = page_of(entries, 0, ("cat:kind:report:", "更多…"))
    assert len(shown) == 10 and shown[-1] == ("cat:kind:report:9", "更多…")
    assert page_of(entries, 18, ("m:", "more")) == entries[18:25]
    body = msgmenu("头" * 500, shown, "尾" * 500)
    assert len(body["head_content"].encode()) <= 1024 and len(body["tail_content"].encode()) <= 1024
    assert all(len(e["click"]["content"].encode()) <= 128 for e in body["list"])
    long_slug = ContentItem(id=7, slug="a" * 100, title="t")
    assert item_entry(long_slug) == ("iid:7", "t")
    assert parse_menu_id("iid:7").item_id == 7
    assert parse_menu_id("cat:kind:case_study:9").offset == 9
    assert parse_menu_id("whatever") is None and parse_menu_id("cat:color:red") is None


# ---- sync_msg: paging, duplicates, restarts -------------------------------------------------------


async def test_paging_across_pages_and_an_empty_page(beacon: Any, lib: Path) -> None:
    state = beacon.sim.state
    customers = ["wmPageA", "wmPageB", "wmPageC", "wmPageD", "wmPageE"]
    for customer in customers:
        state.add_kf_message(KF, customer, content="资料")
    state.kf_empty_page_next()
    await beacon.driver.kf_event(KF)
    await beacon.process()
    calls = state.received_for(SYNC)
    assert len(calls) == 4  # empty page (has_more=1), then 2 + 2 + 1
    assert calls[0].payload["token"] == beacon.driver.last_kf_token and calls[0].payload["limit"] == 2
    assert sorted(s.touser for s in state.kf_sent) == customers
    assert await cursor(beacon) == "4gw00000005"

    await beacon.driver.kf_event(KF)  # nothing new
    await beacon.process()
    assert len(state.kf_sent) == 5


async def test_duplicate_msgids_and_redeliveries_are_processed_once(beacon: Any, lib: Path) -> None:
    state = beacon.sim.state
    await say(beacon, "你好")
    await beacon.driver.redeliver()  # WeCom retries the same callback
    await beacon.process()
    original = state.kf_log[KF][-1]
    state.kf_log[KF].append(dict(original))  # WeCom repeats a message with the same msgid
    await beacon.driver.kf_event(KF)
    await beacon.process()
    assert len(sent_to(beacon)) == 1

    async with beacon.rt.sessions() as session, session.begin():
        await session.execute(delete(KfCursor))  # even a lost cursor replays nothing
    await beacon.driver.kf_event(KF)
    await beacon.process()
    assert len(sent_to(beacon)) == 1
    assert len(await rows(beacon, Event, Event.idempotency_key.startswith("kf:"))) == 1


async def test_failure_mid_page_resumes_without_skipping_or_repeating(
    beacon: Any, lib: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.kf_replies import Conversation

    state = beacon.sim.state
    real_search = Conversation.search

    async def flaky_search(self: Conversation, query: str) -> None:
        if query == "BOOM":
            raise RuntimeError("handler bug")
        await real_search(self, query)

    monkeypatch.setattr(Conversation, "search", flaky_search)
    for customer, content in [("wmA", "白皮书"), ("wmB", "案例"), ("wmC", "BOOM"), ("wmD", "报告")]:
        state.add_kf_message(KF, customer, content=content)
    await beacon.driver.kf_event(KF)
    await beacon.process()
    # Page 1 (A, B) committed with its cursor; page 2 (C, D) rolled back as a whole.
    assert sorted(s.touser for s in state.kf_sent) == ["wmA", "wmB"]
    assert await cursor(beacon) == "4gw00000002"
    (item,) = await rows(beacon, InboxItem, InboxItem.kind == "event:kf_msg_or_event")
    assert item.status == "pending" and item.attempts == 1 and "handler bug" in (item.last_error or "")
    assert {e.props.get("text") for e in await rows(beacon, Event)} == {"白皮书", "案例"}

    monkeypatch.setattr(Conversation, "search", real_search)
    beacon.clock.advance(minutes=11)  # the callback's Token has expired by the retry
    await beacon.process()
    assert sorted(s.touser for s in state.kf_sent) == ["wmA", "wmB", "wmC", "wmD"]
    assert await cursor(beacon) == "4gw00000004"
    assert 95007 in [c.errcode for c in state.received_for(SYNC)]
    (item,) = await rows(beacon, InboxItem, InboxItem.kind == "event:kf_msg_or_event")
    assert item.status == "done"


# ---- WeCom's budget: 5 messages within 48 h of the customer's last message ------------------------


async def test_five_messages_per_customer_message(beacon: Any, lib: Path) -> None:
    state = beacon.sim.state
    for n in range(6):
        state.add_kf_message(KF, CUST, content=f"资料{n}")
    await beacon.driver.kf_event(KF)
    await beacon.process()
    assert len(sent_to(beacon)) == 5
    assert all(c.errcode == 0 for c in state.received_for("/cgi-bin/kf/send_msg"))  # never hit 95001
    (skipped,) = await rows(beacon, OutboxItem, OutboxItem.status == "skipped")
    assert "kf budget" in (skipped.last_error or "") and skipped.payload["touser"] == CUST
    assert len(await rows(beacon, Event, Event.type == "message")) == 6  # all recorded all the same

    await say(beacon, "资料")  # a new customer message opens a new budget
    assert len(sent_to(beacon)) == 6


async def test_nothing_is_sent_48h_after_the_last_customer_message(beacon: Any, lib: Path) -> None:
    beacon.sim.state.add_kf_message(KF, CUST, content="资料")
    beacon.clock.advance(hours=49)
    await beacon.driver.kf_event(KF)
    await beacon.process()
    assert sent_to(beacon) == [] and beacon.sim.state.received_for("/cgi-bin/kf/send_msg") == []
    (skipped,) = await rows(beacon, OutboxItem, OutboxItem.status == "skipped")
    assert "48 h" in (skipped.last_error or "")


# ---- hand-over, enter_session, identity -----------------------------------------------------------


async def test_handover_to_the_owner_then_the_bot_stays_quiet(beacon: Any, lib: Path) -> None:
    state = beacon.sim.state
    state.add_external_contact_profile(CUST, "周总")
    await beacon.driver.add_external_contact("rep1", CUST)  # a rep already knows this customer
    await beacon.process()
    await say(beacon, "你好")
    reply = await say(beacon, "转人工")
    assert reply.msgtype == "text" and "人工" in reply.payload["text"]["content"]
    (trans,) = state.received_for("/cgi-bin/kf/service_state/trans")
    assert trans.payload == {"open_kfid": KF, "external_userid": CUST, "service_state": 3, "servicer_userid": "rep1"}
    assert state.kf_service_state[(KF, CUST)] == 3
    (notice,) = state.messages_to("rep1")
    assert "周总" in notice.payload["text"]["content"] and "人工" in notice.payload["text"]["content"]

    before = len(state.kf_sent)
    await say(beacon, "资料")
    assert len(state.kf_sent) == before  # a human has the chat now
    (contact,) = await rows(beacon, Contact, Contact.external_userid == CUST)
    assert len(await rows(beacon, Contact)) == 1  # the kf customer is the rep's contact
    last = max(await rows(beacon, Event, Event.contact_id == contact.id), key=lambda e: e.id)
    assert last.props["service_state"] == 3 and last.rep_userid == "rep1"


async def test_handover_without_owner_goes_to_the_pool(beacon: Any, lib: Path) -> None:
    await say(beacon, "人工")
    (trans,) = beacon.sim.state.received_for("/cgi-bin/kf/service_state/trans")
    assert trans.payload["service_state"] == 2 and "servicer_userid" not in trans.payload
    assert beacon.sim.state.delivered == []


async def test_enter_session_menu_once_via_send_msg_on_event(beacon: Any, lib: Path) -> None:
    resp = await beacon.client.post(
        "/api/channels", json={"name": "官网客服", "reps": ["rep1"]}, headers={"Authorization": "Bearer test-admin-token"}
    )
    channel = await resp.json()
    await beacon.driver.kf_enter_session(KF, CUST, scene_param=channel["state"])
    await beacon.process()
    (call,) = beacon.sim.state.received_for("/cgi-bin/kf/send_msg_on_event")
    assert call.errcode == 0 and call.payload["code"] == beacon.driver.last_welcome_code
    assert call.payload["msgtype"] == "msgmenu" and call.payload["msgmenu"]["head_content"].startswith("您好")
    (contact,) = await rows(beacon, Contact, Contact.external_userid == CUST)
    assert contact.channel_id == channel["id"]

    async with beacon.rt.sessions() as session, session.begin():
        await session.execute(delete(KfCursor))
    await beacon.driver.kf_event(KF)
    await beacon.process()
    assert len(beacon.sim.state.received_for("/cgi-bin/kf/send_msg_on_event")) == 1


async def test_forged_kf_callback_is_refused(beacon: Any, lib: Path) -> None:
    beacon.sim.state.add_kf_message(KF, CUST, content="资料")
    result = await beacon.driver.post_raw(
        f"<xml><ToUserName>x</ToUserName><MsgType>event</MsgType><Event>kf_msg_or_event</Event>"
        f"<Token>t</Token><OpenKfId>{KF}</OpenKfId></xml>",
        tamper_signature=True,
    )
    assert result.status == 403
    await beacon.process()
    assert beacon.sim.state.received_for(SYNC) == []


async def test_cursor_compare_and_set_refuses_a_stale_cursor(beacon: Any, lib: Path) -> None:
    from bot.kf import advance_cursor

    now = beacon.clock.now()
    async with beacon.rt.sessions() as session, session.begin():
        assert await advance_cursor(session, KF, None, "4gw00000001", now)
        assert not await advance_cursor(session, KF, None, "4gw00000009", now)  # another worker created it
        assert not await advance_cursor(session, KF, "4gw00000000", "4gw00000009", now)  # moved meanwhile
        assert await advance_cursor(session, KF, "4gw00000001", "4gw00000002", now)
    assert await cursor(beacon) == "4gw00000002"


async def test_link_falls_back_to_text_when_no_thumbnail(beacon: Any, lib: Path) -> None:
    beacon.sim.state.fail_next("/cgi-bin/media/upload", 40005)
    await say(beacon, "你好")
    reply = await say(beacon, "白皮书", menu_id="item:manufacturing-digital-whitepaper")
    assert reply.msgtype == "text" and "/l/" in reply.payload["text"]["content"]
    link = await say(beacon, "白皮书", menu_id="item:manufacturing-digital-whitepaper")
    assert link.msgtype == "link"  # the next page uploads the thumbnail again
    assert reply.payload["text"]["content"].endswith(link.payload["link"]["url"])  # one share per customer
