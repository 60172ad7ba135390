"""Rep chat commands through the real callback endpoint: encrypted messages in, app messages out."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from bot.menu import sync_menu
from bot.models import Contact, Share
from tests.helpers import ROOT, write_config
from tests.test_links import AUTH, Browser
from tests.test_scoring_live import new_contact, post_event, settle


async def ask(beacon: Any, text: str, user: str = "rep1") -> Any:
    """Send `text` as member `user`; returns the one app message the bot answered with."""
    before = len(beacon.sim.state.messages_to(user))
    result = await beacon.driver.send_text(user, text)
    assert result.status == 200
    await beacon.process()
    (answer,) = beacon.sim.state.messages_to(user)[before:]
    return answer


async def click(beacon: Any, key: str, user: str = "rep1") -> Any:
    before = len(beacon.sim.state.messages_to(user))
    assert (await beacon.driver.click_menu(user, key)).status == 200
    await beacon.process()
    (answer,) = beacon.sim.state.messages_to(user)[before:]
    return answer


def body(message: Any) -> str:
    return message.payload[message.msgtype]["content"]


async def add_task(beacon: Any, rep: str, title: str, **more: Any) -> int:
    resp = await beacon.client.post("/api/tasks", json={"rep": rep, "title": title, **more}, headers=AUTH)
    assert resp.status == 201
    return int((await resp.json())["id"])


async def test_find_lists_items_with_share_hints(beacon: Any, lib: Any) -> None:  # noqa: F811
    answer = await ask(beacon, "找　白皮书")  # a full-width space
    assert answer.msgtype == "markdown"
    text = body(answer)
    assert text.startswith("**「白皮书」找到")
    assert "**制造业数字化转型白皮书**" in text and "`manufacturing-digital-whitepaper`" in text
    assert "分享：分享 manufacturing-digital-whitepaper 给 <客户>" in text
    assert len(text.encode()) <= 2048

    internal = body(await ask(beacon, "找 竞品"))
    assert "竞品对比——工业数据平台主要竞争对手分析" in internal and "内部" in internal
    assert "仅供内部参考，不能分享给客户" in internal and "分享 competitor-brief-industrial-platforms" not in internal

    assert body(await ask(beacon, "找")) == "用法：找 <关键词>，例如「找 白皮书」。"
    assert body(await ask(beacon, "找 量子计算区块链")) == "没有找到与「量子计算区块链」相关的内容，换个关键词试试。"
    english = body(await ask(beacon, "find OEE"))
    assert "result(s) for \"OEE\"" in english and "share case-auto-parts-oee to <contact>" in english
    assert body(await click(beacon, "find")) == "用法：找 <关键词>，例如「找 白皮书」。"


async def test_share_returns_a_tracked_news_message(beacon: Any, lib: Any) -> None:  # noqa: F811
    await new_contact(beacon, "wmZhangWei", owner_userid="rep1", name="张伟", company="华东汽配")
    await new_contact(beacon, "wmZhangMin", owner_userid="rep1", name="张敏")
    answer = await ask(beacon, "分享 manufacturing-digital-whitepaper 给 张伟")
    assert answer.msgtype == "news"
    (article,) = answer.payload["news"]["articles"]
    assert article["title"] == "制造业数字化转型白皮书"
    assert article["description"] and "picurl" not in article
    token = article["url"].rsplit("/l/", 1)[1]
    async with beacon.rt.sessions() as session:
        share = await session.scalar(select(Share).where(Share.token == token))
        contact = await session.get(Contact, share.contact_id)
    assert (share.source, share.rep_userid, contact.external_userid) == ("bot", "rep1", "wmZhangWei")
    b = Browser(str(beacon.client.make_url("/")))
    try:
        status, _, _ = await b.get(f"/l/{token}")
    finally:
        await b.close()
    assert status == 200

    again = await ask(beacon, "分享白皮书给wmZhangWei")  # title keyword, no spaces, contact by id
    assert again.payload["news"]["articles"][0]["url"] == article["url"]  # the same tracked link
    english = await ask(beacon, "share case-auto-parts-oee to wmZhangMin")
    assert english.payload["news"]["articles"][0]["title"] == "华东某汽车零部件集团：六个月 OEE 提升 12%"

    assert body(await ask(beacon, "分享 talk-track-first-call 给 张伟")) == (
        "《销售话术——首次拜访与异议处理（生产运营负责人）》是内部资料，仅供销售参考，不能分享给客户。"
    )
    many = body(await ask(beacon, "分享 白皮书 给 张"))
    assert many.startswith("「张」匹配到多位客户，请用 ID 指定：")
    assert "· 张伟（华东汽配） — wmZhangWei" in many and "· 张敏 — wmZhangMin" in many
    items = body(await ask(beacon, "分享 智能工厂 给 张伟"))
    assert items.startswith("「智能工厂」对应多条内容，请用编号指定：")
    assert "solution-smart-factory-automotive" in items and "solution-smart-factory-electronics" in items
    assert body(await ask(beacon, "分享 白皮书 给 王五")) == "你的客户里没有找到「王五」。可以用客户姓名或 ID（external_userid）。"
    assert body(await ask(beacon, "分享 白皮书 给 张伟", user="rep2")).startswith("你的客户里没有找到「张伟」")
    assert body(await ask(beacon, "分享 不存在的资料 给 张伟")).startswith("没有找到内容「不存在的资料」")
    assert body(await ask(beacon, "分享 白皮书")).startswith("用法：分享 <内容> 给 <客户>")
    assert body(await ask(beacon, "share nothing-here to Zhang")) == "No item \"nothing-here\". Send \"find nothing-here\" to search."


async def test_tasks_done_and_snooze(beacon: Any) -> None:
    first = await add_task(beacon, "rep1", "回访刘总", priority=1, due_at="2026-11-23T14:00:00+08:00")
    second = await add_task(beacon, "rep1", "发送案例", due_at="2026-11-24T10:00:00+08:00")
    theirs = await add_task(beacon, "rep2", "李四的任务")
    listing = body(await ask(beacon, "任务"))
    assert listing.splitlines()[:3] == [
        "你有 2 项待办：",
        f"#{first} 【急】回访刘总 · 今天 14:00 截止",
        f"#{second} 发送案例 · 明天 10:00 截止",
    ]
    assert body(await click(beacon, "tasks")) == listing  # the menu button answers the same

    assert body(await ask(beacon, f"推迟 {second} 1h")) == f"好的，任务 #{second} 将在 今天 11:00 提醒你。"
    assert body(await ask(beacon, f"推迟 #{second} 明天")) == f"好的，任务 #{second} 将在 明天 09:00 提醒你。"
    assert f"#{second} 发送案例 · 已推迟至 明天 09:00" in body(await ask(beacon, "任务 "))
    assert body(await ask(beacon, f"snooze {second} 30m")) == f"OK, I'll remind you of task #{second} at today 10:30."
    assert body(await ask(beacon, f"推迟 {second} 3年")).startswith("看不懂时长「3年」")
    assert body(await ask(beacon, f"推迟 {second}")).startswith("用法：推迟 <任务编号> <时长>")

    assert body(await ask(beacon, f"完成 {first}")) == f"已完成 #{first}：回访刘总 ✓"
    assert body(await ask(beacon, f"完成 {first}")) == f"任务 #{first} 已经完成了。"
    assert body(await ask(beacon, f"推迟 {first} 1h")) == f"任务 #{first} 已关闭（已完成），不能再推迟。"
    assert body(await ask(beacon, f"完成 {theirs}")) == f"任务 #{theirs} 不是你的，只有负责人可以操作。"
    assert body(await ask(beacon, f"推迟 {theirs} 1h")) == f"任务 #{theirs} 不是你的，只有负责人可以操作。"
    assert body(await ask(beacon, "完成 424242")) == "没有编号为 424242 的任务。发送「任务」查看你的待办。"
    assert body(await ask(beacon, "完成 最后一个")).startswith("用法：完成 <任务编号>")
    assert body(await ask(beacon, f"done {second}")) == f"Done #{second}: 发送案例 ✓"
    assert body(await ask(beacon, "tasks")) == "You have no open tasks."
    assert body(await ask(beacon, "任务", user="stranger")) == "你还不是 Beacon 团队成员，请联系管理员把你加入团队。"


async def test_contact_card_and_hot_leads(beacon: Any, lib: Any) -> None:  # noqa: F811
    await new_contact(beacon, "wmLiu", owner_userid="rep1", name="刘总", company="西南化工", title="生产副总")
    await new_contact(beacon, "wmChen", owner_userid="rep1", name="陈总")
    await post_event(beacon, "wmLiu", "webinar_attended")
    await post_event(beacon, "wmLiu", "demo_request")
    await post_event(beacon, "wmChen", "open")
    await settle(beacon)
    answer = await ask(beacon, "客户 刘总")
    lines = body(answer).splitlines()
    assert lines[0] == "刘总（西南化工） · 生产副总"
    assert lines[1] == "评分 60 分 · 阶段 MQL · 温度 热"  # 职位为决策层 +10
    assert lines[2] == "负责人：张三"
    assert lines[3] == "为什么：" and lines[4].startswith("· 预约演示 +30")
    assert "最近动态：" in lines
    recent = lines[lines.index("最近动态：") + 1:]
    assert recent[0] == "· 今天 10:00 预约演示" and recent[1] == "· 今天 10:00 参加直播"
    assert body(await ask(beacon, "contact wmChen")).splitlines()[1] == "Score 3 · stage new · cold"
    assert body(await ask(beacon, "客户 王五")) == "你的客户里没有找到「王五」。可以用客户姓名或 ID（external_userid）。"
    assert body(await ask(beacon, "客户 刘总", user="rep2")).startswith("你的客户里没有找到「刘总」")  # not rep2's contact
    assert body(await ask(beacon, "客户")) == "用法：客户 <姓名或ID>，例如「客户 张总」。"
    assert body(await ask(beacon, "客户 刘总", user="mgr1")).splitlines()[0].startswith("刘总")  # rep1 reports to mgr1
    await new_contact(beacon, "wmStray", name="赵总")  # nobody's: not in mgr1's team
    assert body(await ask(beacon, "客户 赵总", user="mgr1")).startswith("你的客户里没有找到「赵总」")

    async with beacon.rt.sessions() as session, session.begin():
        await session.execute(update(Contact).where(Contact.external_userid == "wmChen").values(temperature="hot", score=80.0))
    hot = body(await ask(beacon, "热线索")).splitlines()
    assert hot == ["你的热线索（按评分）：", "1. 陈总 80 分 · 新线索 · 最近互动 今天 10:00",
                   "2. 刘总（西南化工） 60 分 · MQL · 最近互动 今天 10:00"]
    assert body(await click(beacon, "hot")).splitlines() == hot
    assert body(await ask(beacon, "hot", user="rep2")) == (
        "No hot leads right now. I'll tell you when a customer reads, downloads or books a demo."
    )


async def test_unknown_input_always_gets_a_hint(beacon: Any) -> None:
    assert body(await ask(beacon, "今天天气怎么样")) == "没听懂「今天天气怎么样」。发送「帮助」查看我能做什么。"
    assert "Send \"help\"" in body(await ask(beacon, "what's up"))
    assert "找 <关键词>" in body(await ask(beacon, "帮助"))


async def test_a_message_is_normalized_once_whichever_command_route_takes_it(beacon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command route reads the message's normalized text; it is worked out once per message
    (`Inbound.command_text`), where each of the eight routes used to normalize it again. Matching is
    as before: full-width text and spaces, a Chinese command running into its argument, an English one
    needing a space."""
    import unicodedata
    from types import SimpleNamespace

    import bot.wecom.inbound as inbound

    calls: list[str] = []  # what normalize_text normalized (the reply's language detection has its own)
    counting = SimpleNamespace(normalize=lambda form, text: calls.append(text) or unicodedata.normalize(form, text))
    monkeypatch.setattr(inbound, "unicodedata", counting)
    assert "没听懂「今天天气怎么样」" in body(await ask(beacon, "今天天气怎么样"))
    assert calls.count("今天天气怎么样") == 1
    calls.clear()
    assert "find <keyword>" in body(await ask(beacon, "ＨＥＬＰ"))  # full-width: help, answered in English
    assert calls.count("ＨＥＬＰ") == 1
    routes = [route for router in beacon.rt.dispatcher.routers for route in router.routes]
    for text, handler, data in [("找白皮书", "on_find", {"command": "找", "args": "白皮书"}),
                                ("找　 白皮书 ", "on_find", {"command": "找", "args": "白皮书"}),
                                ("find oee", "on_find", {"command": "find", "args": "oee"}),
                                ("findoee", "on_unknown", None), ("help", "on_help", {"command": "help", "args": ""})]:
        msg = inbound.Inbound(msg_type="text", event="", fields={"Content": text, "FromUserName": "rep1"})
        found, got = beacon.rt.dispatcher.resolve(msg)
        assert found.__name__ == handler, text
        if data is not None:
            assert {k: got[k] for k in data} == data
    assert routes


async def test_menu_sync_creates_the_menu(beacon: Any, tmp_path: Path) -> None:
    payload = await sync_menu(beacon.rt.settings)
    assert beacon.sim.state.menus[beacon.rt.settings.wecom.agent_id] == payload
    assert payload == {"button": [
        {"type": "click", "name": "我的任务", "key": "tasks"},
        {"type": "click", "name": "热线索", "key": "hot"},
        {"name": "更多", "sub_button": [{"type": "click", "name": "找资料", "key": "find"},
                                        {"type": "click", "name": "帮助", "key": "help"}]},
    ]}
    (call,) = beacon.sim.state.received_for("/cgi-bin/menu/create")
    assert f"agentid={beacon.rt.settings.wecom.agent_id}" in call.path_qs

    # The CLI runs the same code (as a subprocess, so this loop keeps serving the simulator).
    config = write_config(tmp_path / "c.toml", db_url="sqlite+aiosqlite:///unused.db",
                          api_base=beacon.rt.settings.wecom.api_base, port=8080)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEACON_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "--config", str(config), "menu", "sync", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "menu created for agent 1000002: 我的任务, 热线索, 更多"
    assert len(beacon.sim.state.received_for("/cgi-bin/menu/create")) == 2


@pytest.mark.parametrize("text", ["[menu]\nbuttons = []\n", '[[menu.buttons]]\nname = "x"\nkey = "reports"\n'])
async def test_bad_menu_config_names_the_key(tmp_path: Path, text: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEACON_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "--config", str(config), "menu", "sync", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2 and "menu.buttons" in err.decode()
