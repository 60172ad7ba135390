"""Mass sends (群发) through the admin API and the simulator: a segment, one tracked link per customer,
each message through its owner's 群发助手, who is skipped and why, and what the send reached."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bot.models import Contact, Event, MassSendRecipient, OutboxItem, Share
from tests.conftest import AGENT_ID, CORP_ID, CORP_SECRET
from tests.helpers import run_cli, write_config

AUTH = {"Authorization": "Bearer test-admin-token"}
ITEM = "manufacturing-digital-whitepaper"
TEMPLATE = "/cgi-bin/externalcontact/add_msg_template"
PHONE_UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148"


async def customers(beacon: Any, *people: tuple[str, str, str]) -> None:
    """(external_userid, name, rep): customers added through the contact-added callback."""
    for external, name, rep in people:
        beacon.sim.state.add_external_contact_profile(external, name, corp_name="某制造")
        await beacon.driver.add_external_contact(rep, external, with_welcome_code=False)
    await beacon.process()


async def set_stage(beacon: Any, stage: str, *externals: str) -> None:
    async with beacon.rt.sessions() as session, session.begin():
        for contact in (await session.scalars(select(Contact).where(Contact.external_userid.in_(externals)))).all():
            contact.stage = stage


async def post(beacon: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    resp = await beacon.client.post("/api/mass-sends", json=body, headers=AUTH)
    return resp.status, await resp.json()


async def test_a_segment_gets_one_tracked_link_each_through_its_owner(beacon: Any, lib: Path) -> None:
    await customers(beacon, ("wmMs1", "钱总", "rep1"), ("wmMs2", "孙工", "rep1"), ("wmMs3", "李经理", "rep2"),
                    ("wmMs4", "周总", "rep2"))  # fmt: skip
    await set_stage(beacon, "mql", "wmMs1", "wmMs2", "wmMs3")  # wmMs4 stays new: outside the segment
    async with beacon.rt.sessions() as session, session.begin():  # wmMs2 unsubscribed (an offline import)
        wm2 = await session.scalar(select(Contact.id).where(Contact.external_userid == "wmMs2"))
        session.add(Event(type="unsubscribe", contact_id=wm2, occurred_at=beacon.clock.now(), received_at=beacon.clock.now(),
                          props={}, processed=True))  # fmt: skip

    dry, preview = await post(beacon, {"content": ITEM, "segment": {"stage": "mql"}, "dry_run": True})
    assert dry == 200 and preview["recipients"] == 2 and preview["by_rep"] == {"rep1": 1, "rep2": 1}
    assert preview["skipped"] == {"unsubscribed": {"count": 1, "reason": "已退订"}}
    async with beacon.rt.sessions() as session:
        assert (await session.scalars(select(OutboxItem).where(OutboxItem.path == TEMPLATE))).all() == []
        assert (await session.scalars(select(MassSendRecipient))).all() == []  # a dry run records nothing

    status, body = await post(beacon, {"content": ITEM, "segment": {"stage": "mql"}, "by": "王经理",
                                       "text": "{name}您好，{rep}给您整理了《{title}》：{link}"})  # fmt: skip
    assert status == 201, body
    assert body["recipients"] == 2 and body["by_rep"] == {"rep1": 1, "rep2": 1}
    await beacon.process()

    sent = {t["external_userid"][0]: t for t in beacon.sim.state.msg_templates}
    assert set(sent) == {"wmMs1", "wmMs3"}
    assert sent["wmMs1"]["sender"] == "rep1" and sent["wmMs3"]["sender"] == "rep2"
    text1 = sent["wmMs1"]["text"]["content"]
    assert text1.startswith("钱总您好，张三给您整理了《")
    links = {ext: re.search(r"/l/([\w-]+)", t["text"]["content"]).group(1) for ext, t in sent.items()}  # type: ignore[union-attr]
    assert len(set(links.values())) == 2  # a link of each customer's own
    async with beacon.rt.sessions() as session:
        shares = {s.token: s for s in (await session.scalars(select(Share).where(Share.token.in_(links.values())))).all()}
        contacts = {c.id: c.external_userid for c in (await session.scalars(select(Contact))).all()}
    assert {contacts[shares[tok].contact_id] for tok in links.values()} == {"wmMs1", "wmMs3"}
    assert all(shares[tok].source == "mass" for tok in links.values())
    notices = [m.payload["text"]["content"] for m in beacon.sim.state.messages_to("rep1") if m.payload.get("msgtype") == "text"]
    assert any(n.startswith("【群发待确认】《") and "1 位客户" in n and "群发助手" in n for n in notices), notices

    # 钱总 opens his link: the open is his, and the send's report counts it.
    async with beacon.client.session.get(beacon.client.make_url(f"/l/{links['wmMs1']}"), headers={"User-Agent": PHONE_UA}) as resp:
        assert resp.status == 200
    await beacon.rt.tracker.drain()
    async with beacon.rt.sessions() as session:
        (opened,) = (await session.scalars(select(Event).where(Event.type == "open"))).all()
        assert contacts[opened.contact_id] == "wmMs1"
    resp = await beacon.client.get(f"/api/mass-sends/{body['id']}", headers=AUTH)
    report = await resp.json()
    assert resp.status == 200 and report["recipients"] == 2 and report["opened"] == 1 and report["created_by"] == "王经理"
    assert report["by_rep"] == {"rep1": 1, "rep2": 1} and report["segment"] == {"stage": "mql"}

    # The same day, a second send leaves them out: WeCom lets a customer receive one mass send a day.
    status, again = await post(beacon, {"content": "case-auto-parts-oee", "segment": {"stage": "mql"}})
    assert status == 400 and again["field"] == "segment"
    assert again["skipped"]["sent_today"] == {"count": 2, "reason": "今日已收到群发"}
    beacon.clock.advance(days=1)
    status, tomorrow = await post(beacon, {"content": "case-auto-parts-oee", "segment": {"stage": "mql"}, "dry_run": True})
    assert status == 200 and tomorrow["recipients"] == 2


async def test_a_retried_send_queues_each_message_once(beacon: Any, lib: Path) -> None:
    await customers(beacon, ("wmMr1", "吴总", "rep1"))
    status, body = await post(beacon, {"content": ITEM, "segment": {"owner": "rep1"}})
    assert status == 201
    await beacon.process()
    await beacon.process()
    assert [t["external_userid"] for t in beacon.sim.state.msg_templates] == [["wmMr1"]]
    async with beacon.rt.sessions() as session:
        keys = [o.idempotency_key for o in (await session.scalars(select(OutboxItem).where(OutboxItem.path == TEMPLATE))).all()]
    assert keys == [f"mass:{body['id']}:{(await contact_id(beacon, 'wmMr1'))}"]


async def contact_id(beacon: Any, external: str) -> int:
    async with beacon.rt.sessions() as session:
        return int(await session.scalar(select(Contact.id).where(Contact.external_userid == external)) or 0)


async def test_bad_requests_name_the_field(beacon: Any, lib: Path) -> None:
    await customers(beacon, ("wmMb1", "郑总", "rep1"))
    cases = [
        ({"segment": {"stage": "mql"}}, 400, "content"),
        ({"content": ITEM, "segment": {"stage": "hot"}}, 400, "segment.stage"),
        ({"content": ITEM, "segment": {"region": "华东"}}, 400, "segment"),
        ({"content": ITEM, "segment": {"channel": "没有的渠道"}}, 400, "segment.channel"),
        ({"content": ITEM, "text": "您好 {phone}"}, 400, "text"),
        ({"content": ITEM, "text": "您好 {name"}, 400, "text"),
        ({"content": ITEM, "text": "您好 {name:d}"}, 400, "text"),  # a format spec would fail at render time
        ({"content": ITEM, "text": "您好 {name!r}"}, 400, "text"),
        ({"content": ITEM, "dry_run": "yes"}, 400, "dry_run"),
        ({"content": "talk-track-first-call"}, 400, "content"),
        ({"content": ITEM, "segment": {"owner": "rep2"}}, 400, "segment"),  # nobody there
    ]
    for body, status, field in cases:
        got, answer = await post(beacon, body)
        assert (got, answer.get("field")) == (status, field), (body, answer)
    assert (await post(beacon, {"content": "no-such-item"}))[0] == 404
    assert (await beacon.client.get("/api/mass-sends/999", headers=AUTH)).status == 404
    assert (await beacon.client.post("/api/mass-sends", json={"content": ITEM})).status == 401
    assert beacon.sim.state.msg_templates == []


async def test_the_link_is_appended_when_the_template_has_none(beacon: Any, lib: Path) -> None:
    await customers(beacon, ("wmMl1", "冯总", "rep1"))
    status, body = await post(beacon, {"content": ITEM, "segment": {"q": "冯总"}, "text": "{name}您好，资料请查收", "dry_run": True})
    assert status == 200 and re.fullmatch(r"冯总您好，资料请查收 http://\S+/l/…", body["preview"]), body["preview"]


async def test_the_cli_previews_and_sends_a_segment(tmp_path: Path, aiohttp_server: Any) -> None:
    from bot.wecom.simulator import SimState, create_simulator_app

    state = SimState(CORP_ID, CORP_SECRET, AGENT_ID)
    sim = await aiohttp_server(create_simulator_app(state))
    db = tmp_path / "beacon.db"
    config = write_config(tmp_path / "b.toml", db_url=f"sqlite+aiosqlite:///{db}", api_base=str(sim.make_url("")).rstrip("/"), port=1)

    async def cli(*args: str) -> Any:
        # The simulator runs on this event loop: the subprocess must not block it.
        return await asyncio.get_running_loop().run_in_executor(None, lambda: run_cli("--config", str(config), *args, timeout=120))

    assert (await cli("migrate")).returncode == 0
    assert (await cli("synth", "--contacts", "60", "--events", "400", "--reps", "3")).returncode == 0
    with sqlite3.connect(db) as con:
        owned = con.execute("SELECT COUNT(*) FROM contacts WHERE owner_userid = 'syn_rep00001' AND external_userid IS NOT NULL").fetchone()[0]
    assert owned > 0

    preview = await cli("mass-send", ITEM, "--owner", "syn_rep00001", "--dry-run")
    assert preview.returncode == 0, preview.stderr
    assert f"to {owned} contact(s): syn_rep00001 {owned}" in preview.stdout and "dry run: nothing recorded or sent" in preview.stdout
    assert "message: " in preview.stdout and state.msg_templates == []

    sent = await cli("mass-send", ITEM, "--owner", "syn_rep00001", "--text", "{name}您好，{title} 请查收", "--by", "王经理")
    assert sent.returncode == 0, sent.stderr
    assert re.search(r"mass send #\d+: submitted to WeCom", sent.stdout), sent.stdout
    assert len(state.msg_templates) == owned and {t["sender"] for t in state.msg_templates} == {"syn_rep00001"}
    assert all(re.search(r"/l/[\w-]+$", t["text"]["content"]) for t in state.msg_templates)  # the link appended

    bad = await cli("mass-send", ITEM, "--stage", "warmish")
    assert bad.returncode == 2 and "segment.stage" in bad.stderr
    again = await cli("mass-send", ITEM, "--owner", "syn_rep00001")  # the same day: every one of them skipped
    assert again.returncode == 2 and f"skipped {owned}: 今日已收到群发" in again.stdout
    assert len(state.msg_templates) == owned


async def test_the_admin_page_previews_sends_and_lists_mass_sends(beacon: Any, lib: Path) -> None:
    from tests.pages_seed import PageUser, csrf_of

    await customers(beacon, ("wmMp1", "陈总", "rep1"), ("wmMp2", "林工", "rep2"))
    admin = PageUser(str(beacon.client.make_url("/")), "Mozilla/5.0 (Macintosh) Chrome/126.0")
    try:
        assert (await admin.login_admin())[0] == 303
        status, html, _ = await admin.get("/admin/mass-sends")
        assert status == 200 and "新建群发" in html and 'href="/admin/mass-sends" aria-current="page"' in html
        csrf = csrf_of(html)
        form = {"csrf": csrf, "content": ITEM, "stage": "", "temperature": "", "owner": "rep1", "channel": "", "q": "",
                "text": "{name}您好，{title}请查收 {link}"}  # fmt: skip

        status, html, _ = await admin.post("/admin/mass-sends", data={**form, "text": "您好 {phone}", "action": "preview"})
        assert status == 400 and 'id="error-text"' in html and "未知占位符 {phone}" in html
        assert "您好 {phone}</textarea>" in html  # the form keeps what was typed

        status, html, _ = await admin.post("/admin/mass-sends", data={**form, "action": "preview"})
        assert status == 200 and 'id="preview-count">1<' in html and "张三 1 位" in html
        assert "陈总您好，" in html and 'value="send"' in html
        assert beacon.sim.state.msg_templates == []  # a preview sends nothing

        status, _, resp = await admin.post("/admin/mass-sends", data={**form, "action": "send"})
        assert status == 303 and resp.headers["Location"].startswith("/admin/mass-sends?sent=")
        await beacon.process()
        assert [t["external_userid"] for t in beacon.sim.state.msg_templates] == [["wmMp1"]]
        status, html, _ = await admin.get(resp.headers["Location"])
        assert status == 200 and 'id="mass-sent"' in html and "负责人 张三" in html
        rows = await admin.csv("/admin/mass-sends?format=csv")
        assert [(r["title"], r["recipients"], r["opened"], r["segment"], r["created_by"]) for r in rows] == [
            ("制造业数字化转型白皮书", "1", "0", "负责人 张三", "令牌登录")]  # the admin-token login sent it

        status, html, _ = await admin.post("/admin/mass-sends", data={**form, "csrf": "forged", "action": "send"})
        assert status == 403 and len(beacon.sim.state.msg_templates) == 1
    finally:
        await admin.close()
