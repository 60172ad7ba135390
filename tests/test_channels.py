"""Channels through the simulator: QR codes (CLI and API), attribution, profile, welcome, deletions."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.models import Channel, Contact, ContactMerge, ContentItem, Event, Identity, OutboxItem, Share, Task
from tests.conftest import AGENT_ID, CORP_ID, CORP_SECRET
from tests.helpers import run_cli, write_config

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "content" / "library"
AUTH = {"Authorization": "Bearer test-admin-token"}
PHONE_UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148 MicroMessenger/8.0.47"
WELCOME = "/cgi-bin/externalcontact/send_welcome_msg"
STARTER = "manufacturing-digital-whitepaper"


async def make_channel(beacon: Any, name: str = "2026工博会", **body: Any) -> dict[str, Any]:
    payload = {"name": name, "reps": ["rep1"], "welcome": STARTER, "text": "感谢关注云桥科技！"} | body
    resp = await beacon.client.post("/api/channels", json=payload, headers=AUTH)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def rows(beacon: Any, model: Any, *where: Any) -> list[Any]:
    async with beacon.rt.sessions() as session:
        return list((await session.scalars(select(model).where(*where).order_by(model.id))).all())


async def contact_of(beacon: Any, external_userid: str) -> Contact:
    (contact,) = await rows(beacon, Contact, Contact.external_userid == external_userid)
    return contact


async def channel_counts(beacon: Any) -> dict[str, dict[str, Any]]:
    resp = await beacon.client.get("/api/channels", headers=AUTH)
    assert resp.status == 200
    return {c["name"]: c for c in await resp.json()}


# ---- creating channels --------------------------------------------------------------------------


async def test_channel_cli_creates_qr_code_and_lists_counts(tmp_path: Path, aiohttp_server: Any) -> None:
    from bot.wecom.simulator import SimState, create_simulator_app

    state = SimState(CORP_ID, CORP_SECRET, AGENT_ID)
    sim = await aiohttp_server(create_simulator_app(state))
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'beacon.db'}"
    extra = '[[team.members]]\nuserid = "rep2"\nname = "李四"\n'
    config = write_config(tmp_path / "b.toml", db_url=db_url, api_base=str(sim.make_url("")).rstrip("/"), port=1, extra=extra)

    async def cli(*args: str) -> Any:
        # The simulator runs on this event loop: the subprocess must not block it.
        return await asyncio.get_running_loop().run_in_executor(None, lambda: run_cli("--config", str(config), *args))

    assert (await cli("migrate")).returncode == 0
    assert (await cli("content", "import", str(LIBRARY))).returncode == 0
    made = await cli("channel", "create", "展会", "--reps", "rep1,rep2", "--welcome", STARTER, "--text", "欢迎来到展位")
    assert made.returncode == 0, made.stderr
    assert "channel 展会 created" in made.stdout
    (way,) = state.contact_ways.values()
    assert way.type == 2 and way.scene == 2 and way.users == ["rep1", "rep2"]
    assert way.payload["skip_verify"] is True
    assert way.state is not None and len(way.state) <= 30
    assert f"state: {way.state}" in made.stdout and f"qr_code: {way.qr_code}" in made.stdout

    single = await cli("channel", "create", "官网", "--reps", "rep1")
    assert single.returncode == 0, single.stderr
    assert [w.type for w in state.contact_ways.values()] == [2, 1]

    for args, message in [
        (("--reps", "nobody"), "unknown rep: nobody"),
        (("--welcome", "no-such-item"), "unknown content: no-such-item"),
        (("--welcome", "talk-track-first-call"), "internal"),
    ]:
        bad = await cli("channel", "create", "坏渠道", *args)
        assert bad.returncode == 2
        assert message in bad.stderr and bad.stderr.count("\n") == 1
    taken = await cli("channel", "create", "展会")
    assert taken.returncode == 2 and "already exists" in taken.stderr
    assert len(state.contact_ways) == 2  # refused requests never reached WeCom

    listed = await cli("channel", "list")
    assert listed.returncode == 0
    assert listed.stdout.splitlines()[0].startswith("name\tstate")
    as_json = json.loads((await cli("channel", "list", "--json")).stdout)
    assert [(c["name"], c["welcome"], c["contacts"], c["adds"], c["opens"]) for c in as_json] == [
        ("展会", STARTER, 0, 0, 0),
        ("官网", None, 0, 0, 0),
    ]


async def test_channel_api_creates_and_refuses(beacon: Any, lib: Path) -> None:
    made = await make_channel(beacon, reps=["rep1", "rep2"])
    assert made["state"].startswith("ch_") and made["qr_code"] and made["config_id"]
    (way,) = beacon.sim.state.contact_ways.values()
    assert (way.type, way.scene, way.state, way.users) == (2, 2, made["state"], ["rep1", "rep2"])
    default = await make_channel(beacon, "默认", reps=None, welcome=None, text=None)
    assert default["reps"] == ["rep1", "rep2"]  # every active rep when none are named

    async def post(body: dict[str, Any], headers: dict[str, str] = AUTH) -> tuple[int, dict[str, Any]]:
        resp = await beacon.client.post("/api/channels", json=body, headers=headers)
        return resp.status, await resp.json()

    assert (await post({"name": "x", "reps": ["ghost"]}))[0] == 404
    status, body = await post({"name": "x", "welcome": "nope"})
    assert status == 404 and "unknown content: nope" in body["error"]
    status, body = await post({"name": "x", "welcome": "faq-internal-objection-handling"})
    assert status == 400 and "internal" in body["error"]
    assert (await post({"name": made["name"]}))[0] == 409
    assert (await post({"reps": ["rep1"]}))[0] == 400
    assert (await post({"name": "x"}, headers={}))[0] == 401
    listed = (await channel_counts(beacon))[made["name"]]
    assert (listed["welcome"], listed["contacts"], listed["adds"], listed["opens"]) == (STARTER, 0, 0, 0)


# ---- a customer scans the code ------------------------------------------------------------------


async def test_add_via_channel_attributes_profiles_and_welcomes(beacon: Any, lib: Path) -> None:
    channel = await make_channel(beacon)
    beacon.sim.state.add_external_contact_profile(
        "wmWang01", "王总", unionid="oUnion01", position="采购总监", corp_name="华东汽车零部件集团"
    )
    assert (await beacon.driver.add_external_contact("rep1", "wmWang01", state=channel["state"])).status == 200
    await beacon.process()

    contact = await contact_of(beacon, "wmWang01")
    assert (contact.name, contact.company, contact.title, contact.owner_userid) == ("王总", "华东汽车零部件集团", "采购总监", "rep1")
    (db_channel,) = await rows(beacon, Channel, Channel.name == channel["name"])
    assert contact.channel_id == db_channel.id
    kinds = {(i.kind, i.value) for i in await rows(beacon, Identity, Identity.contact_id == contact.id)}
    assert kinds == {("external_userid", "wmWang01"), ("unionid", "oUnion01")}
    (added,) = await rows(beacon, Event, Event.type == "contact_added")
    assert added.contact_id == contact.id and added.channel_id == db_channel.id and added.rep_userid == "rep1"
    assert added.props["channel"] == channel["name"] and added.props["state"] == channel["state"]

    (call,) = beacon.sim.state.received_for(WELCOME)
    assert call.errcode == 0
    assert call.payload["welcome_code"] == beacon.driver.last_welcome_code
    assert call.payload["text"] == {"content": "感谢关注云桥科技！"}
    (attachment,) = call.payload["attachments"]
    assert attachment["msgtype"] == "link"
    link = attachment["link"]
    assert link["title"] == "制造业数字化转型白皮书" and link["desc"]
    token = link["url"].rsplit("/l/", 1)[1]
    (share,) = await rows(beacon, Share, Share.token == token)
    assert (share.source, share.contact_id, share.channel_id, share.rep_userid) == ("welcome", contact.id, db_channel.id, "rep1")

    resp = await beacon.client.get(f"/l/{token}", headers={"User-Agent": PHONE_UA})
    assert resp.status == 200
    await beacon.rt.tracker.drain()
    (opened,) = await rows(beacon, Event, Event.type == "open")
    assert opened.contact_id == contact.id and opened.channel_id == db_channel.id
    counts = (await channel_counts(beacon))[channel["name"]]
    assert (counts["contacts"], counts["adds"], counts["opens"]) == (1, 1, 1)


async def test_later_touch_keeps_first_channel(beacon: Any, lib: Path) -> None:
    first = await make_channel(beacon, "展会")
    second = await make_channel(beacon, "官网", reps=["rep2"], welcome=None, text="")
    await beacon.driver.add_external_contact("rep1", "wmLi02", state=first["state"])
    await beacon.process()
    beacon.clock.advance(days=3)
    await beacon.driver.add_external_contact("rep2", "wmLi02", state=second["state"])
    await beacon.process()

    contact = await contact_of(beacon, "wmLi02")
    (expo,) = await rows(beacon, Channel, Channel.name == "展会")
    assert contact.channel_id == expo.id and contact.owner_userid == "rep1"  # first touch and first owner kept
    adds = await rows(beacon, Event, Event.type == "contact_added")
    assert [(e.props["channel"], e.rep_userid) for e in adds] == [("展会", "rep1"), ("官网", "rep2")]
    assert len(beacon.sim.state.received_for(WELCOME)) == 1  # 官网 has no welcome configured
    counts = await channel_counts(beacon)
    assert (counts["展会"]["contacts"], counts["展会"]["adds"]) == (1, 1)
    assert (counts["官网"]["contacts"], counts["官网"]["adds"]) == (0, 1)


async def test_half_add_is_handled_like_an_add(beacon: Any, lib: Path) -> None:
    channel = await make_channel(beacon)
    await beacon.driver.add_external_contact("rep1", "wmHalf03", state=channel["state"], half=True)
    await beacon.process()
    (added,) = await rows(beacon, Event, Event.type == "contact_added")
    assert added.props["half"] is True and added.props["channel"] == channel["name"]
    assert len(beacon.sim.state.received_for(WELCOME)) == 1


async def test_no_welcome_code_means_no_send(beacon: Any, lib: Path) -> None:
    channel = await make_channel(beacon)
    await beacon.driver.add_external_contact("rep1", "wmNative04", state=channel["state"], with_welcome_code=False)
    await beacon.process()
    assert beacon.sim.state.received_for(WELCOME) == []
    contact = await contact_of(beacon, "wmNative04")
    assert contact.channel_id is not None and contact.owner_userid == "rep1"
    assert await rows(beacon, Share, Share.source == "welcome") == []


async def test_without_state_no_channel_and_no_welcome(beacon: Any, lib: Path) -> None:
    await beacon.driver.add_external_contact("rep2", "wmPlain05")
    await beacon.process()
    contact = await contact_of(beacon, "wmPlain05")
    assert contact.channel_id is None and contact.owner_userid == "rep2"
    assert beacon.sim.state.received_for(WELCOME) == []
    (added,) = await rows(beacon, Event, Event.type == "contact_added")
    assert "channel" not in added.props


async def test_profile_failure_does_not_hold_up_the_welcome(beacon: Any, lib: Path) -> None:
    channel = await make_channel(beacon)
    beacon.sim.state.fail_next("/cgi-bin/externalcontact/get", 84061)
    await beacon.driver.add_external_contact("rep1", "wmNoProfile06", state=channel["state"])
    await beacon.process()
    assert [c.errcode for c in beacon.sim.state.received_for(WELCOME)] == [0]


async def test_used_welcome_code_is_not_retried(beacon: Any, lib: Path) -> None:
    channel = await make_channel(beacon)
    beacon.sim.state.fail_next(WELCOME, 41051)
    await beacon.driver.add_external_contact("rep1", "wmUsed07", state=channel["state"])
    await beacon.process()
    (row,) = await rows(beacon, OutboxItem, OutboxItem.path == WELCOME)
    assert row.status == "failed" and row.attempts == 1 and "41051" in (row.last_error or "")
    beacon.clock.advance(hours=2)
    await beacon.rt.outbox.drain()
    assert len(beacon.sim.state.received_for(WELCOME)) == 1


async def test_welcome_item_retired_later_sends_text_only(beacon: Any, lib: Path) -> None:
    channel = await make_channel(beacon)
    async with beacon.rt.sessions() as session, session.begin():
        db_channel = await session.scalar(select(Channel).where(Channel.name == channel["name"]))
        starter = await session.get(ContentItem, db_channel.welcome_item_id)
        starter.retired_at = beacon.clock.now()
    await beacon.driver.add_external_contact("rep1", "wmRetired08", state=channel["state"])
    await beacon.process()
    (call,) = beacon.sim.state.received_for(WELCOME)
    assert call.payload == {"welcome_code": beacon.driver.last_welcome_code, "text": {"content": "感谢关注云桥科技！"}}


async def test_same_unionid_merges_into_the_wecom_contact(beacon: Any, lib: Path) -> None:
    now = beacon.clock.now()
    async with beacon.rt.sessions() as session, session.begin():
        earlier = Contact(name="", phone="13800138000", created_at=now, updated_at=now)
        session.add(earlier)
        await session.flush()
        session.add(Identity(contact_id=earlier.id, kind="unionid", value="oUnionShared"))
        earlier_id = earlier.id
    beacon.sim.state.add_external_contact_profile("wmZhao09", "赵经理", unionid="oUnionShared")
    await beacon.driver.add_external_contact("rep1", "wmZhao09")
    await beacon.process()
    contact = await contact_of(beacon, "wmZhao09")
    assert contact.phone == "13800138000" and contact.name == "赵经理"
    (merge,) = await rows(beacon, ContactMerge)
    assert (merge.from_contact_id, merge.into_contact_id, merge.reason) == (earlier_id, contact.id, "same unionid")


# ---- deletions ----------------------------------------------------------------------------------


async def test_deletions_are_events_and_the_owner_is_told(beacon: Any, lib: Path) -> None:
    beacon.sim.state.add_external_contact_profile("wmSun10", "孙总")
    await beacon.driver.add_external_contact("rep1", "wmSun10")
    await beacon.process()

    beacon.clock.advance(minutes=5)
    await beacon.driver.del_follow_user("rep1", "wmSun10")
    await beacon.process()
    beacon.clock.advance(minutes=5)
    await beacon.driver.add_external_contact("rep2", "wmSun10")
    await beacon.driver.del_external_contact("rep2", "wmSun10")
    await beacon.driver.del_external_contact("rep2", "wmSun10", source="DELETE_BY_TRANSFER")
    await beacon.process()

    deleted = await rows(beacon, Event, Event.type == "contact_deleted")
    assert [(e.props["by"], e.rep_userid) for e in deleted] == [("customer", "rep1"), ("rep", "rep2")]
    texts = [m.payload["text"]["content"] for m in beacon.sim.state.messages_to("rep1")]
    assert texts == ["客户「孙总」已将你从微信联系人中删除。", "李四已删除客户「孙总」。"]
    assert beacon.sim.state.messages_to("rep2") == []  # the owner (rep1) is told, not the deleting rep


async def test_deleted_contact_event_time_comes_from_the_callback(beacon: Any, lib: Path) -> None:
    await beacon.driver.add_external_contact("rep1", "wmTime11")
    beacon.clock.advance(seconds=30)  # processing happens later than the callback was made
    await beacon.process()
    (added,) = await rows(beacon, Event, Event.type == "contact_added")
    assert added.occurred_at == beacon.clock.now() - dt.timedelta(seconds=30)


# ---- transfers (在职继承 / 离职继承) --------------------------------------------------------------


async def open_task(beacon: Any, external_userid: str, rep: str = "rep1") -> int:
    resp = await beacon.client.post("/api/tasks", json={"rep": rep, "contact": external_userid, "title": "回访报价"}, headers=AUTH)
    assert resp.status == 201, await resp.text()
    return int((await resp.json())["id"])


async def test_a_transferred_customer_moves_to_the_rep_who_took_over_with_its_open_tasks(beacon: Any, lib: Path) -> None:
    beacon.sim.state.add_external_contact_profile("wmHan12", "韩总", corp_name="无锡某装备")
    await beacon.driver.add_external_contact("rep1", "wmHan12")
    await beacon.process()
    task_id = await open_task(beacon, "wmHan12")

    # WeCom completes the takeover: rep2 has the customer, rep1's relation is removed by the transfer.
    # (Stored with another callback, it shares the inbox worker's batch: it asks WeCom with no
    # transaction open, so it runs alone after the one before it.)
    beacon.sim.state.link_contact("rep2", "wmHan12")
    await beacon.driver.send_text("rep1", "帮助")
    await beacon.driver.del_external_contact("rep1", "wmHan12", source="DELETE_BY_TRANSFER")
    await beacon.process()

    contact = await contact_of(beacon, "wmHan12")
    assert contact.owner_userid == "rep2"
    (task,) = await rows(beacon, Task, Task.id == task_id)
    assert task.owner_userid == "rep2"
    assert await rows(beacon, Event, Event.type == "contact_deleted") == []  # a transfer is no loss
    (notice,) = [m.payload["text"]["content"] for m in beacon.sim.state.messages_to("rep2")]
    assert notice == "你已接替张三跟进客户「韩总」：新线索，0 分，1 项待办已转给你。"
    assert [m.payload["msgtype"] for m in beacon.sim.state.messages_to("rep1")] == ["text"]  # the help reply only

    # The takeover's own add_external_contact, arriving afterwards, changes nothing more.
    await beacon.driver.add_external_contact("rep2", "wmHan12", with_welcome_code=False)
    await beacon.process()
    assert (await contact_of(beacon, "wmHan12")).owner_userid == "rep2"
    assert len(beacon.sim.state.messages_to("rep2")) == 1


async def test_the_takeovers_add_moves_the_customer_when_wecom_listed_no_successor_at_the_transfer(beacon: Any, lib: Path) -> None:
    beacon.sim.state.add_external_contact_profile("wmYang13", "杨总")
    await beacon.driver.add_external_contact("rep1", "wmYang13")
    await beacon.process()
    await beacon.driver.del_external_contact("rep1", "wmYang13", source="DELETE_BY_TRANSFER")  # rep2 not listed yet
    await beacon.process()
    assert (await contact_of(beacon, "wmYang13")).owner_userid == "rep1"

    await beacon.driver.add_external_contact("rep2", "wmYang13", with_welcome_code=False)
    await beacon.process()
    assert (await contact_of(beacon, "wmYang13")).owner_userid == "rep2"
    (notice,) = [m.payload["text"]["content"] for m in beacon.sim.state.messages_to("rep2")]
    assert notice.startswith("你已接替张三跟进客户「杨总」")


async def test_a_transfer_follows_a_customer_merged_into_another_contact(beacon: Any, lib: Path) -> None:
    from bot.identity import merge_contacts

    beacon.sim.state.add_external_contact_profile("wmLu17", "陆总")
    beacon.sim.state.add_external_contact_profile("wmLu17b", "陆总（小号）")
    await beacon.driver.add_external_contact("rep1", "wmLu17")
    await beacon.driver.add_external_contact("rep1", "wmLu17b")
    await beacon.process()
    survivor, merged = await contact_of(beacon, "wmLu17"), await contact_of(beacon, "wmLu17b")
    async with beacon.rt.sessions() as session, session.begin():  # e.g. both left one phone on a gate form
        await merge_contacts(session, merged.id, survivor.id, reason="same phone", now=beacon.clock.now())

    # The merged-away id is known only as the survivor's identity: its transfer moves the survivor.
    beacon.sim.state.link_contact("rep2", "wmLu17b")
    await beacon.driver.del_external_contact("rep1", "wmLu17b", source="DELETE_BY_TRANSFER")
    await beacon.process()
    assert (await contact_of(beacon, "wmLu17")).owner_userid == "rep2"
    (notice,) = [m.payload["text"]["content"] for m in beacon.sim.state.messages_to("rep2")]
    assert notice.startswith("你已接替张三跟进客户「陆总」")


async def test_a_colleague_adding_the_customer_does_not_take_it_from_its_owner(beacon: Any, lib: Path) -> None:
    beacon.sim.state.add_external_contact_profile("wmXu14", "徐总")
    await beacon.driver.add_external_contact("rep1", "wmXu14")
    await beacon.process()
    await beacon.driver.add_external_contact("rep2", "wmXu14")  # rep1 still has the customer
    await beacon.process()
    assert (await contact_of(beacon, "wmXu14")).owner_userid == "rep1"
    assert beacon.sim.state.messages_to("rep2") == []


async def test_an_owner_who_never_had_the_customer_in_wecom_keeps_them_when_a_colleague_adds_them(beacon: Any, lib: Path) -> None:
    beacon.sim.state.add_external_contact_profile("wmWei15", "魏总")
    resp = await beacon.client.post("/api/shares", json={"content": STARTER, "rep": "rep1", "contact": "wmWei15", "channel": None},
                                    headers=AUTH)
    assert resp.status == 201
    async with beacon.rt.sessions() as session, session.begin():  # the MQL hand-off made rep1 the owner
        contact = (await session.scalars(select(Contact).where(Contact.external_userid == "wmWei15"))).one()
        contact.owner_userid = "rep1"
    await beacon.driver.add_external_contact("rep2", "wmWei15")
    await beacon.process()
    assert (await contact_of(beacon, "wmWei15")).owner_userid == "rep1"


async def test_a_rep_who_deleted_the_customer_loses_them_to_the_next_rep_they_add(beacon: Any, lib: Path) -> None:
    beacon.sim.state.add_external_contact_profile("wmJiang16", "蒋总")
    await beacon.driver.add_external_contact("rep1", "wmJiang16")
    await beacon.process()
    await beacon.driver.del_external_contact("rep1", "wmJiang16")
    await beacon.process()
    await beacon.driver.add_external_contact("rep2", "wmJiang16")
    await beacon.process()
    assert (await contact_of(beacon, "wmJiang16")).owner_userid == "rep2"
