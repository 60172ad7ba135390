"""Customers' WeCom profiles for contacts Beacon first met by their external_userid alone (bot/profiles.py):
a share made through the API names its customer shortly after, through the simulator's
`externalcontact/get`, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import bot.profiles
from bot.contact_changes import GET_CONTACT
from bot.models import Contact, ContactMerge, Identity, Lease, Task

AUTH = {"Authorization": "Bearer test-admin-token"}
ITEM = "case-auto-parts-oee"
BATCH = "/cgi-bin/externalcontact/batch/get_by_user"


async def share_to(beacon: Any, external_userid: str) -> None:
    resp = await beacon.client.post("/api/shares", json={"content": ITEM, "rep": "rep1", "contact": external_userid, "channel": None},
                                    headers=AUTH)
    assert resp.status == 201, await resp.text()


async def contact_of(beacon: Any, external_userid: str) -> Contact:
    async with beacon.rt.sessions() as session:
        return (await session.scalars(select(Contact).where(Contact.external_userid == external_userid))).one()


def calls(beacon: Any) -> int:
    return len(beacon.sim.state.received_for(GET_CONTACT))


async def test_a_customer_first_met_through_a_share_is_named_from_wecom(beacon: Any, lib: Path) -> None:
    beacon.sim.state.add_external_contact_profile("wmChen01", "陈总", corp_name="华东精密制造有限公司", position="副总经理",
                                                  follow_user=["rep1"])
    await share_to(beacon, "wmChen01")
    contact = await contact_of(beacon, "wmChen01")
    assert contact.name == "" and contact.profile_due_at == beacon.clock.now()
    assert (await (await beacon.client.get("/healthz")).json())["profiles_due"] == 1
    assert "beacon_profiles_due 1.0" in await (await beacon.client.get("/metrics")).text()

    assert await beacon.rt.profiles.drain() == 1
    contact = await contact_of(beacon, "wmChen01")
    assert (contact.name, contact.company, contact.title, contact.profile_due_at) == ("陈总", "华东精密制造有限公司", "副总经理", None)
    resp = await beacon.client.get("/api/contacts/wmChen01", headers=AUTH)
    assert (await resp.json())["name"] == "陈总"

    # Named once: no further calls, and another share to him does not make him due again.
    health = await (await beacon.client.get("/healthz")).json()
    assert health["profiles_due"] == 0
    assert "beacon_profiles_due 0.0" in await (await beacon.client.get("/metrics")).text()
    await share_to(beacon, "wmChen01")
    assert await beacon.rt.profiles.drain() == 0
    assert calls(beacon) == 1


async def test_what_a_rep_or_a_form_set_is_kept(beacon: Any, lib: Path) -> None:
    beacon.sim.state.add_external_contact_profile("wmLi02", "李工", corp_name="苏州某机械", position="设备主管")
    await share_to(beacon, "wmLi02")
    async with beacon.rt.sessions() as session, session.begin():
        contact = (await session.scalars(select(Contact).where(Contact.external_userid == "wmLi02"))).one()
        contact.name = "李建国"  # a gate form gave his full name first
    await beacon.rt.profiles.drain()
    contact = await contact_of(beacon, "wmLi02")
    assert (contact.name, contact.company, contact.title) == ("李建国", "苏州某机械", "设备主管")


async def test_an_id_wecom_does_not_know_is_asked_once(beacon: Any, lib: Path) -> None:
    await share_to(beacon, "wmNobody")  # no such customer in the simulator: errcode 84061
    assert await beacon.rt.profiles.drain() == 1
    contact = await contact_of(beacon, "wmNobody")
    assert (contact.name, contact.profile_due_at) == ("", None)
    assert await beacon.rt.profiles.drain() == 0
    assert calls(beacon) == 1


async def test_a_busy_wecom_pauses_the_worker_and_loses_nothing(beacon: Any, lib: Path, no_client_sleep: list[float],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bot.profiles, "PAUSE_MIN_S", 0.2)
    beacon.sim.state.add_external_contact_profile("wmZhou03", "周总", corp_name="宁波某电子")
    beacon.sim.state.fail_next(GET_CONTACT, 45009, times=4)  # rate-limited through the client's own three retries
    await share_to(beacon, "wmZhou03")

    assert await beacon.rt.profiles.drain() == 0
    assert (await contact_of(beacon, "wmZhou03")).profile_due_at is not None
    assert calls(beacon) == 4 and len(no_client_sleep) == 3
    assert await beacon.rt.profiles.drain() == 0  # paused: not asked again at once
    assert calls(beacon) == 4

    await asyncio.sleep(0.25)
    assert await beacon.rt.profiles.drain() == 1
    contact = await contact_of(beacon, "wmZhou03")
    assert (contact.name, contact.profile_due_at) == ("周总", None)
    assert beacon.rt.profiles.pause_s == 0.0


async def test_an_app_without_the_permission_waits_long_and_keeps_contacts_due(beacon: Any, lib: Path) -> None:
    beacon.sim.state.add_external_contact_profile("wmWu04", "吴总")
    beacon.sim.state.fail_next(GET_CONTACT, 48002)  # API forbidden: the app may not read customer contacts
    await share_to(beacon, "wmWu04")
    assert await beacon.rt.profiles.drain() == 0
    assert beacon.rt.profiles.pause_s == bot.profiles.PAUSE_MAX_S
    assert (await contact_of(beacon, "wmWu04")).profile_due_at is not None
    assert await beacon.rt.profiles.drain() == 0
    assert calls(beacon) == 1


async def test_the_profiles_unionid_merges_a_contact_known_from_elsewhere(beacon: Any, lib: Path) -> None:
    now = beacon.clock.now()
    async with beacon.rt.sessions() as session, session.begin():
        earlier = Contact(name="", phone="13800138000", created_at=now, updated_at=now)  # left details on a gate form
        session.add(earlier)
        await session.flush()
        session.add(Identity(contact_id=earlier.id, kind="unionid", value="oUnionSun"))
        earlier_id = earlier.id
    beacon.sim.state.add_external_contact_profile("wmSun05", "孙经理", unionid="oUnionSun")
    await share_to(beacon, "wmSun05")
    await beacon.rt.profiles.drain()
    contact = await contact_of(beacon, "wmSun05")
    assert (contact.name, contact.phone) == ("孙经理", "13800138000")
    async with beacon.rt.sessions() as session:
        (merge,) = (await session.scalars(select(ContactMerge))).all()
    assert (merge.from_contact_id, merge.into_contact_id) == (earlier_id, contact.id)


async def test_an_erased_contact_is_not_asked_about(beacon: Any, lib: Path) -> None:
    from bot.privacy import erase_contact

    beacon.sim.state.add_external_contact_profile("wmFeng08", "冯总")
    await share_to(beacon, "wmFeng08")
    async with beacon.rt.sessions() as session, session.begin():
        contact = (await session.scalars(select(Contact).where(Contact.external_userid == "wmFeng08"))).one()
        await erase_contact(session, contact, now=beacon.clock.now())
        erased_id = contact.id
    assert await beacon.rt.profiles.drain() == 0
    assert calls(beacon) == 0
    async with beacon.rt.sessions() as session:
        contact = await session.get(Contact, erased_id)
    assert (contact.name, contact.profile_due_at) == ("", None)


async def test_a_kf_customer_who_added_no_rep_is_named_by_their_wechat_nickname(beacon: Any, lib: Path) -> None:
    kf = "wkBeaconKf0001"
    beacon.sim.state.add_kf_customer("wmKfLin09", "小林\n（采购）", unionid="oUnionLin")  # one line as a name
    beacon.sim.state.add_kf_message(kf, "wmKfLin09", content="你好")
    beacon.sim.state.add_kf_message(kf, "wmKfGone10", content="在吗")  # kf no longer knows this one
    await beacon.driver.kf_event(kf)
    await beacon.process()
    assert (await contact_of(beacon, "wmKfLin09")).profile_due_at is not None

    assert await beacon.rt.profiles.drain() == 2
    lin = await contact_of(beacon, "wmKfLin09")
    assert (lin.name, lin.profile_due_at) == ("小林 （采购）", None)
    async with beacon.rt.sessions() as session:
        kinds = set((await session.execute(select(Identity.kind, Identity.value).where(Identity.contact_id == lin.id))).all())
    assert ("unionid", "oUnionLin") in kinds
    gone = await contact_of(beacon, "wmKfGone10")
    assert (gone.name, gone.profile_due_at) == ("", None)
    assert len(beacon.sim.state.received_for(bot.profiles.KF_CUSTOMERS)) == 2


async def test_a_share_to_an_unknown_id_does_not_ask_kf(beacon: Any, lib: Path) -> None:
    await share_to(beacon, "wmNoKf11")
    assert await beacon.rt.profiles.drain() == 1
    assert beacon.sim.state.received_for(bot.profiles.KF_CUSTOMERS) == []


async def visitor_with_phone(beacon: Any, phone: str, external_userid: str | None = None) -> int:
    """A contact who left `phone` on a gate form (a web visitor, or another WeCom customer)."""
    now = beacon.clock.now()
    async with beacon.rt.sessions() as session, session.begin():
        visitor = Contact(external_userid=external_userid, name="", phone=phone, created_at=now, updated_at=now)
        session.add(visitor)
        await session.flush()
        session.add(Identity(contact_id=visitor.id, kind="phone", value=phone))
        return visitor.id


async def test_a_mobile_a_rep_noted_merges_the_gate_form_lead_into_the_customer(beacon: Any, lib: Path) -> None:
    from bot.wecom.simulator import FollowUser

    lead = await visitor_with_phone(beacon, "13800138000")
    beacon.sim.state.add_external_contact_profile("wmMob12", "Alex🌊", follow_user=[
        FollowUser("rep1", 1000, remark_corp_name="常州某精密", remark_mobiles=["+86 138-0013-8000", "not a number"])])
    await share_to(beacon, "wmMob12")
    await beacon.rt.profiles.drain()
    contact = await contact_of(beacon, "wmMob12")
    assert (contact.name, contact.company, contact.phone) == ("Alex🌊", "常州某精密", "13800138000")
    async with beacon.rt.sessions() as session:
        (merge,) = (await session.scalars(select(ContactMerge))).all()
        phones = (await session.scalars(select(Identity.contact_id).where(Identity.kind == "phone"))).all()
    assert (merge.from_contact_id, merge.into_contact_id, merge.reason) == (lead, contact.id, "same mobile (noted in WeCom)")
    assert phones == [contact.id]


async def test_a_mobile_known_for_another_wecom_customer_merges_nothing(beacon: Any, lib: Path) -> None:
    from bot.wecom.simulator import FollowUser

    other = await visitor_with_phone(beacon, "13900139000", external_userid="wmAssistant")
    beacon.sim.state.add_external_contact_profile("wmBoss13", "郑董", follow_user=[FollowUser("rep1", 1000, remark_mobiles=["13900139000"])])
    await share_to(beacon, "wmBoss13")
    await beacon.rt.profiles.drain()
    async with beacon.rt.sessions() as session:
        assert (await session.scalars(select(ContactMerge))).all() == []
        (owner_of_phone,) = (await session.scalars(select(Identity.contact_id).where(Identity.value == "13900139000"))).all()
    assert owner_of_phone == other


async def test_a_mobile_noted_later_merges_the_lead_after_the_edit_callback(beacon: Any, lib: Path) -> None:
    beacon.sim.state.add_external_contact_profile("wmEdit14", "钱总")
    await beacon.driver.add_external_contact("rep1", "wmEdit14")
    await beacon.process()
    lead = await visitor_with_phone(beacon, "13500135000")
    assert await beacon.rt.profiles.drain() == 0  # named by the callback: nothing due

    # After a call the rep notes the customer's mobile in WeCom; WeCom tells Beacon of the edit.
    beacon.sim.state.follow_of("rep1", "wmEdit14").remark_mobiles.append("13500135000")
    await beacon.driver.edit_external_contact("rep1", "wmEdit14")
    await beacon.process()
    assert await beacon.rt.profiles.drain() == 1
    contact = await contact_of(beacon, "wmEdit14")
    assert (contact.phone, contact.profile_due_at) == ("13500135000", None)
    async with beacon.rt.sessions() as session:
        (merge,) = (await session.scalars(select(ContactMerge))).all()
    assert (merge.from_contact_id, merge.into_contact_id) == (lead, contact.id)


async def test_the_merged_leads_history_is_scored_into_the_customer(beacon: Any, lib: Path) -> None:
    from bot.models import ScoreEntry, StageChange
    from bot.tracking import add_event

    beacon.sim.state.add_external_contact_profile("wmRich15", "冯总")
    await beacon.driver.add_external_contact("rep1", "wmRich15")
    await beacon.process()
    lead = await visitor_with_phone(beacon, "13300133000")
    async with beacon.rt.sessions() as session, session.begin():  # the lead booked a demo on the website
        await add_event(session, "demo_request", contact_id=lead, at=beacon.clock.now(), key="lead-demo")
    await beacon.rt.tracker.drain()
    before = await contact_of(beacon, "wmRich15")
    async with beacon.rt.sessions() as session:
        lead_score = (await session.get(Contact, lead)).score
    assert lead_score > 0 and before.stage == "new"

    beacon.sim.state.follow_of("rep1", "wmRich15").remark_mobiles.append("13300133000")
    await beacon.driver.edit_external_contact("rep1", "wmRich15")
    await beacon.process()
    await beacon.rt.profiles.drain()

    after = await contact_of(beacon, "wmRich15")
    async with beacon.rt.sessions() as session:
        ledger = (await session.execute(select(ScoreEntry.rule, ScoreEntry.points).where(ScoreEntry.contact_id == after.id))).all()
        moves = (await session.execute(select(StageChange.to_stage, StageChange.by).where(StageChange.contact_id == after.id))).all()
    assert after.score == round(sum(points for _, points in ledger), 2) == round(before.score + lead_score, 2)
    assert "demo_request" in {rule for rule, _ in ledger}
    assert moves == [("mql", "rule:score")] and after.stage == "mql"  # the demo the lead booked makes the customer an MQL
    async with beacon.rt.sessions() as session:
        tasks = (await session.execute(select(Task.kind, Task.owner_userid, Task.title).where(Task.contact_id == after.id))).all()
    assert ("follow_up", "rep1", "跟进 MQL：冯总") in tasks, tasks  # the MQL hand-off, as after a scored event


async def test_the_customer_is_named_as_the_rep_calls_them_and_follows_a_later_remark(beacon: Any, lib: Path) -> None:
    beacon.sim.state.add_external_contact_profile("wmNick16", "Alex🌊", corp_name="华东精密")
    await beacon.driver.add_external_contact("rep1", "wmNick16")
    await beacon.process()
    assert (await contact_of(beacon, "wmNick16")).name == "Alex🌊"  # no remark yet: the WeChat name

    # The rep notes who he is; WeCom tells Beacon of the edit; the alert cards will say so from now on.
    beacon.sim.state.follow_of("rep1", "wmNick16").remark = "陈建国-华东精密\n  "
    await beacon.driver.edit_external_contact("rep1", "wmNick16")
    await beacon.process()
    await beacon.rt.profiles.drain()
    assert (await contact_of(beacon, "wmNick16")).name == "陈建国-华东精密"

    # A name a rep or a form set is the contact's own: a remark does not replace it.
    beacon.sim.state.add_external_contact_profile("wmForm17", "Lily")
    await share_to(beacon, "wmForm17")
    async with beacon.rt.sessions() as session, session.begin():
        contact = (await session.scalars(select(Contact).where(Contact.external_userid == "wmForm17"))).one()
        contact.name = "林莉"
    beacon.sim.state.link_contact("rep1", "wmForm17").remark = "林总"
    await beacon.rt.profiles.drain()
    assert (await contact_of(beacon, "wmForm17")).name == "林莉"


async def test_an_edit_while_wecom_is_asked_leaves_the_contact_due(beacon: Any, lib: Path) -> None:
    beacon.sim.state.add_external_contact_profile("wmRace18", "褚总", follow_user=["rep1"])
    await share_to(beacon, "wmRace18")
    beacon.sim.state.delay_next(GET_CONTACT, 0.5)  # WeCom is slow to answer
    fetching = asyncio.ensure_future(beacon.rt.profiles.drain())
    await asyncio.sleep(0.1)
    beacon.clock.advance(seconds=5)
    await beacon.driver.edit_external_contact("rep1", "wmRace18")  # the rep edits meanwhile
    await beacon.process()
    assert await fetching == 1
    contact = await contact_of(beacon, "wmRace18")
    assert contact.name == "褚总" and contact.profile_due_at == beacon.clock.now()  # asked again at the next pass
    assert await beacon.rt.profiles.drain() == 1
    assert (await contact_of(beacon, "wmRace18")).profile_due_at is None


async def test_the_contact_added_callback_names_the_contact_itself(beacon: Any, lib: Path) -> None:
    beacon.sim.state.add_external_contact_profile("wmZheng06", "郑总", corp_name="杭州某仪表")
    await beacon.driver.add_external_contact("rep1", "wmZheng06")
    await beacon.process()
    contact = await contact_of(beacon, "wmZheng06")
    assert (contact.name, contact.profile_due_at) == ("郑总", None)
    assert await beacon.rt.profiles.drain() == 0
    assert calls(beacon) == 1  # the callback's own


async def test_one_process_fetches_at_a_time(beacon: Any, lib: Path) -> None:
    async with beacon.rt.sessions() as session, session.begin():  # another process holds the lease
        session.add(Lease(name=bot.profiles.LEASE, owner="other-host:1:abc", locked_until=beacon.clock.now() + dt.timedelta(seconds=60)))
    beacon.sim.state.add_external_contact_profile("wmQian07", "钱总")
    await share_to(beacon, "wmQian07")
    assert await beacon.rt.profiles.drain() == 0
    assert calls(beacon) == 0 and (await contact_of(beacon, "wmQian07")).profile_due_at is not None


# ---- importing the reps' existing customers (`python -m bot contact sync`) ------------------------


async def test_contact_sync_imports_each_reps_customers_owned_and_named(tmp_path: Path, aiohttp_server: Any) -> None:
    import sqlite3

    from bot.contact_sync import BATCH_GET
    from bot.wecom.simulator import FollowUser, SimState, create_simulator_app
    from tests.conftest import AGENT_ID, CORP_ID, CORP_SECRET
    from tests.helpers import run_cli, write_config

    state = SimState(CORP_ID, CORP_SECRET, AGENT_ID)
    for n in range(1, 8):  # rep1's customers; the first two are rep2's too
        state.add_external_contact_profile(f"wmOld{n}", f"客户{n}", corp_name=f"公司{n}", position="经理",
                                           follow_user=["rep1", "rep2"] if n <= 2 else ["rep1"])
    # rep2 has had this one longer than rep1: rep2 owns it
    state.add_external_contact_profile("wmLonger", "周总", follow_user=[FollowUser("rep1", 2000), FollowUser("rep2", 1000)])
    state.add_external_contact_profile("wmRep2Only", "李总", follow_user=["rep2"])
    state.add_external_contact_profile("wmVisitor", "赵总", unionid="oUnionVisitor", follow_user=["rep2"])
    for n in range(150):  # enough relations for two pages
        state.add_external_contact_profile(f"wmBulk{n:03d}", f"批量客户{n}", follow_user=["rep3"])
    state.add_member("rep4", "钱七")  # no customers
    sim = await aiohttp_server(create_simulator_app(state))
    db = tmp_path / "beacon.db"
    extra = "".join(f'[[team.members]]\nuserid = "{u}"\nname = "{n}"\n' for u, n in (("rep2", "李四"), ("rep3", "王五"), ("rep4", "钱七")))
    config = write_config(tmp_path / "b.toml", db_url=f"sqlite+aiosqlite:///{db}", api_base=str(sim.make_url("")).rstrip("/"), port=1,
                          extra=extra)

    async def cli(*args: str) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: run_cli("--config", str(config), *args))

    assert (await cli("migrate")).returncode == 0
    with sqlite3.connect(db) as con:
        insert = ("INSERT INTO contacts (id, external_userid, name, company, title, region, industry, company_size, persona, stage, "
                  "temperature, score, profile, created_at, updated_at, reach) VALUES (?, ?, ?, '', '', '', '', '', '', 'new', 'cold', "
                  "0, '{}', '2026-01-01 00:00:00', '2026-01-01 00:00:00', 0)")
        con.execute(insert, (1, "wmOld3", ""))  # met through a share: no owner, no name yet
        con.execute(insert, (2, "wmOld4", "吴建国"))  # a gate form gave his full name
        con.execute(insert, (3, None, ""))  # a web visitor who left a form with his WeChat unionid
        con.execute("INSERT INTO identities (contact_id, kind, value, created_at) VALUES (3, 'unionid', 'oUnionVisitor', "
                    "'2026-01-01 00:00:00')")
    done = await cli("contact", "sync")
    assert done.returncode == 0, done.stderr
    assert "4 reps, 160 customers in WeCom: 158 new contacts, 2 known contacts given an owner, 159 named from WeCom" in done.stdout
    assert "customers of the reps" in done.stderr and "customer profiles" in done.stderr  # the progress bars
    assert len(state.received_for(BATCH_GET)) == 2  # 164 relations: two pages of 100, not a call a customer
    (asked,) = state.received_for(GET_CONTACT)  # only the profile that merges the visitor in
    assert "external_userid=wmVisitor" in asked.path_qs
    with sqlite3.connect(db) as con:
        rows = {ext: (name, company, owner, due) for ext, name, company, owner, due in con.execute(
            "SELECT external_userid, name, company, owner_userid, profile_due_at FROM contacts WHERE merged_into_id IS NULL")}
        merged = con.execute("SELECT merged_into_id FROM contacts WHERE id = 3").fetchone()[0]
        identities = con.execute("SELECT count(*) FROM identities WHERE kind = 'external_userid'").fetchone()[0]
    assert rows["wmOld1"] == ("客户1", "公司1", "rep1", None)  # the team's order breaks a tie
    assert rows["wmLonger"][2] == "rep2"
    assert rows["wmOld3"] == ("客户3", "公司3", "rep1", None)  # given an owner, and named
    assert rows["wmOld4"] == ("吴建国", "公司4", "rep1", None)  # what the form set is kept
    assert rows["wmVisitor"] == ("赵总", "", "rep2", None) and merged is not None  # the visitor merged into the customer
    assert rows["wmBulk149"] == ("批量客户149", "", "rep3", None)
    assert len(rows) == 160 and identities == 158  # one for each new contact

    again = await cli("contact", "sync", "--reps", "rep2")
    assert again.returncode == 0, again.stderr
    assert "1 reps, 5 customers in WeCom: 0 new contacts, 0 known contacts given an owner, 0 named from WeCom" in again.stdout

    unknown = await cli("contact", "sync", "--reps", "nobody")
    assert unknown.returncode == 2 and "not in [team] members: nobody" in unknown.stderr


async def test_sync_on_both_databases(beacon: Any, lib: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bot.contact_sync
    from bot.contact_sync import sync
    from bot.wecom.simulator import FollowUser

    monkeypatch.setattr(bot.contact_sync, "PAGE", 1)  # a relation a page: a customer's reps come on different pages

    state = beacon.sim.state
    state.add_external_contact_profile("wmBoth1", "甲总", corp_name="甲公司", follow_user=["rep2", "rep1"])
    state.add_external_contact_profile("wmBoth2", "乙总", unionid="oUnionB", follow_user=["rep2"])
    # rep2's relation comes first, but rep1 has had the customer longer: rep1 owns it in the end
    state.add_external_contact_profile("wmBoth5", "戊总", follow_user=[FollowUser("rep2", 2000), FollowUser("rep1", 1000)])
    state.add_external_contact_profile("wmBoth3", "丙总", follow_user=[FollowUser("rep1", 1000, remark_mobiles=["13700137000"])])
    state.add_external_contact_profile("wmBoth4", "Ding", follow_user=[FollowUser("rep1", 1000, remark="丁总", remark_mobiles=["13600136000"])])
    lead = await visitor_with_phone(beacon, "13700137000")  # left the number on a gate form
    await share_to(beacon, "wmBoth1")  # known by id alone, owned by nobody yet
    report = await sync(beacon.rt, ["rep1", "rep2"])
    assert (report.listed, report.new, report.owned, report.named, report.still_due, report.refused) == (5, 4, 1, 5, 0, {})
    assert (await contact_of(beacon, "wmBoth5")).owner_userid == "rep1"
    three, four = await contact_of(beacon, "wmBoth3"), await contact_of(beacon, "wmBoth4")
    assert (three.phone, four.phone, four.name) == ("13700137000", "13600136000", "丁总")  # named as the rep calls him
    async with beacon.rt.sessions() as session:
        (merge,) = (await session.scalars(select(ContactMerge))).all()
        (owner_of_new_phone,) = (await session.scalars(select(Identity.contact_id).where(Identity.value == "13600136000"))).all()
    assert (merge.from_contact_id, merge.into_contact_id) == (lead, three.id)
    assert owner_of_new_phone == four.id
    one, two = await contact_of(beacon, "wmBoth1"), await contact_of(beacon, "wmBoth2")
    assert (one.name, one.company, one.owner_userid, one.profile_due_at) == ("甲总", "甲公司", "rep1", None)
    assert (two.name, two.owner_userid) == ("乙总", "rep2")
    async with beacon.rt.sessions() as session:
        (owner_of_union,) = (await session.scalars(select(Identity.contact_id).where(Identity.value == "oUnionB"))).all()
    assert owner_of_union == two.id
    (asked,) = beacon.sim.state.received_for(GET_CONTACT)  # only to merge the lead in
    assert "external_userid=wmBoth3" in asked.path_qs


async def test_the_weekly_sync_job_stores_customers_the_callbacks_missed(beacon: Any, lib: Path) -> None:
    from bot.contact_sync import sync_customers
    from bot.models import JobRun
    from bot.scheduler import default_jobs, run_job

    assert "sync-customers" in [job_id for job_id, *_ in default_jobs("Asia/Shanghai")]
    # 王总 added rep2 while the callback URL was wrong: no add_external_contact ever reached Beacon.
    beacon.sim.state.add_external_contact_profile("wmMissed19", "王总", corp_name="合肥某电气", follow_user=["rep2"])
    assert await run_job(beacon.rt, "sync-customers", sync_customers, "sync-customers:w1")
    contact = await contact_of(beacon, "wmMissed19")
    assert (contact.name, contact.company, contact.owner_userid) == ("王总", "合肥某电气", "rep2")

    beacon.sim.state.fail_next(BATCH, 48002, times=3)  # every call refused (the app lost its permission)
    assert await run_job(beacon.rt, "sync-customers", sync_customers, "sync-customers:w2")
    async with beacon.rt.sessions() as session:
        run = await session.get(JobRun, "sync-customers:w2")
    assert run is not None and "refused every rep" in (run.error or "")
