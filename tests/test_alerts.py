"""Follow-up alerts end to end: tracked-link activity → throttled template cards in the simulator,
card clicks through the callback endpoint, reminders and SLA escalation, all on simulated time."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from typing import Any

import pytest
from sqlalchemy import select

from bot.alert_jobs import escalate_overdue, send_due_alerts
from bot.models import Alert, Contact, Rep, Task
from bot.scheduler import run_job
from tests.conftest import make_settings
from tests.test_links import Browser, share
from tests.test_scoring_live import new_contact, post_event, settle

ALERTS = {"delay_s": 60.0, "merge_window_s": 1800.0, "daily_cap": 20, "quiet_start": "21:00", "quiet_end": "08:00",
          "per_minute_limit": 10, "sla_hours": 4.0}
_runs = itertools.count()


@pytest.fixture
def alert_config() -> dict[str, Any]:
    return {}


@pytest.fixture
def rep2_quiet() -> dict[str, str]:
    return {}


@pytest.fixture
def settings(db_url: str, sim: Any, alert_config: dict[str, Any], rep2_quiet: dict[str, str]) -> Any:
    team = [
        {"userid": "rep1", "name": "张三", "role": "rep", "manager": "mgr1"},
        {"userid": "rep2", "name": "李四", "role": "rep", "manager": "mgr1", **rep2_quiet},
        {"userid": "mgr1", "name": "王经理", "role": "manager"},
    ]
    return make_settings(db_url, api_base=sim.url, alerts={**ALERTS, **alert_config}, team={"members": team})


async def send_due(beacon: Any) -> None:
    """One pass of the send-due-alerts job at the frozen time, then the outbox."""
    assert await run_job(beacon.rt, "send-due-alerts", send_due_alerts, f"send-due-alerts:test:{next(_runs)}")
    await beacon.rt.outbox.drain()


def cards(beacon: Any, rep: str = "rep1") -> list[dict[str, Any]]:
    return [m.payload["template_card"] for m in beacon.sim.state.messages_to(rep) if m.msgtype == "template_card"]


def texts(beacon: Any, rep: str) -> list[str]:
    return [m.payload["text"]["content"] for m in beacon.sim.state.messages_to(rep) if m.msgtype == "text"]


def field(card: dict[str, Any], key: str) -> str:
    return next(row["value"] for row in card["horizontal_content_list"] if row["keyname"] == key)


async def owned(beacon: Any, external: str, rep: str = "rep1", **fields: Any) -> int:
    """A contact of `rep`, known to the simulated WeCom too (so tag mirroring succeeds quietly)."""
    beacon.sim.state.link_contact(rep, external)
    return await new_contact(beacon, external, owner_userid=rep, **fields)


async def alerts(beacon: Any) -> list[Alert]:
    async with beacon.rt.sessions() as session:
        return list((await session.scalars(select(Alert).order_by(Alert.id))).all())


async def task_of(beacon: Any, task_id: int) -> Task:
    async with beacon.rt.sessions() as session:
        return await session.get(Task, task_id)


async def test_a_burst_is_one_card_and_later_activity_updates_it(beacon: Any, lib: Any) -> None:  # noqa: F811
    await owned(beacon, "wmBurst", name="张总", company="华东汽配", industry="automotive", persona="operations")
    s = await share(beacon, "blog-oee-common-mistakes", contact="wmBurst")
    b = Browser(str(beacon.client.make_url("/")))
    try:
        _, html, _ = await b.get(f"/l/{s['token']}")
        statuses = [await b.beacon(s["token"], html, t="read", d=d) for d in (25, 50, 75, 100)]
        statuses += [await b.beacon(s["token"], html, t="dwell", s=30, n=n) for n in range(1, 6)]
        statuses.append(await b.beacon(s["token"], html, t="cta", c="contact"))
        assert statuses == [204] * 10
        await settle(beacon)
        assert cards(beacon) == []  # waiting `delay_s` for the burst to finish
        await send_due(beacon)
        assert cards(beacon) == []
        beacon.clock.advance(seconds=61)
        await send_due(beacon)
        (card,) = cards(beacon)
        assert card["card_type"] == "button_interaction"
        assert card["main_title"]["title"].startswith("张总：")
        assert "华东汽配" in card["main_title"]["desc"]
        assert "《提升 OEE 的五个常见误区》打开、读到 100%" in card["sub_title_text"]
        assert "停留 2 分钟" in card["sub_title_text"] and "点击「联系销售」" in card["sub_title_text"]
        (alert,) = await alerts(beacon)
        assert alert.status == "sent" and alert.score_delta > 0
        assert field(card, "评分") == f"{alert.score_delta:g} 分（+{alert.score_delta:g}） · 温"
        assert field(card, "阶段") == "新线索 → 可培养"
        assert "联系销售" in field(card, "原因") or "阅读" in field(card, "原因")
        assert field(card, "建议").startswith("发送《") and "OEE 的五个常见误区" not in field(card, "建议")
        assert "分享 " in card["quote_area"]["quote_text"] and "给 张总" in card["quote_area"]["quote_text"]
        assert [b["key"] for b in card["button_list"]] == ["done", "snooze_1h", "snooze_tomorrow", "dismiss"]
        assert [b["text"] for b in card["button_list"]] == ["已跟进", "1小时后提醒", "明天提醒", "不相关"]
        task = await task_of(beacon, alert.task_id)
        assert (task.kind, task.status, task.owner_userid, task.priority) == ("follow_up", "open", "rep1", 2)
        assert field(card, "任务").startswith(f"#{task.id} 跟进 张总")

        # More reading after the card went out: the same card is updated, no second message.
        beacon.clock.advance(minutes=2)
        assert await b.beacon(s["token"], html, t="dwell", s=120, n=6) == 204
        await settle(beacon)
        await send_due(beacon)
        beacon.clock.advance(seconds=61)
        await send_due(beacon)
    finally:
        await b.close()
    assert len(cards(beacon)) == 1
    (update,) = beacon.sim.state.received_for("/cgi-bin/message/update_template_card")
    assert update.errcode in (None, 0)
    sim_card = beacon.sim.state.cards[card["task_id"]]
    (change,) = sim_card.updates
    assert "停留 4 分钟" in change["template_card"]["sub_title_text"]
    assert change["template_card"]["task_id"] == card["task_id"]
    assert beacon.sim.state.dropped == []


async def test_card_buttons_update_the_task_and_the_card(beacon: Any) -> None:
    await owned(beacon, "wmClick", name="李总")
    await post_event(beacon, "wmClick", "webinar_attended")
    await settle(beacon)
    beacon.clock.advance(seconds=61)
    await send_due(beacon)
    (card,) = cards(beacon)
    (alert,) = await alerts(beacon)
    (task_row,) = [row for row in card["horizontal_content_list"] if row["keyname"] == "任务"]
    assert task_row["type"] == 1 and task_row["url"] == f"{beacon.rt.settings.server.public_url}/tasks/{alert.task_id}"

    # Someone else's click changes nothing and sends nothing.
    await beacon.driver.card_click("rep2", card["task_id"], "done")
    await beacon.process()
    assert (await task_of(beacon, alert.task_id)).status == "open"
    assert beacon.sim.state.received_for("/cgi-bin/message/update_template_card") == []

    await beacon.driver.card_click("rep1", card["task_id"], "snooze_1h")
    await beacon.process()
    task = await task_of(beacon, alert.task_id)
    assert task.status == "open" and task.snoozed_until == beacon.clock.now() + dt.timedelta(hours=1)
    (update,) = beacon.sim.state.received_for("/cgi-bin/message/update_template_card")
    assert update.payload["button"] == {"replace_name": "1小时后提醒 ✓"} and update.payload["userids"] == ["rep1"]
    (alert,) = await alerts(beacon)
    assert (alert.outcome, alert.clicked_at) == ("snoozed", beacon.clock.now())

    # The snooze runs out: a reminder card for the same task, which the rep then completes.
    beacon.clock.advance(minutes=61)
    await send_due(beacon)
    first, reminder = cards(beacon)
    assert reminder["source"]["desc"] == "Beacon 稍后提醒"
    assert f"提醒：{task.title}（任务 #{task.id}）" in reminder["sub_title_text"]
    await beacon.driver.card_click("rep1", reminder["task_id"], "done")
    await beacon.process()
    task = await task_of(beacon, task.id)
    assert task.status == "done" and task.completed_at == beacon.clock.now() and task.snoozed_until is None
    done = beacon.sim.state.received_for("/cgi-bin/message/update_template_card")[-1]
    assert done.payload["button"] == {"replace_name": "已跟进 ✓"}
    assert [a.outcome for a in await alerts(beacon)] == ["snoozed", "done"]


async def test_dismiss_and_clicks_on_unknown_cards(beacon: Any) -> None:
    await owned(beacon, "wmDismiss", name="王总")
    await post_event(beacon, "wmDismiss", "open")
    await settle(beacon)
    beacon.clock.advance(seconds=61)
    await send_due(beacon)
    (card,) = cards(beacon)
    await beacon.driver.card_click("rep1", "alert-999999-deadbeef", "done")
    await beacon.driver.card_click("rep1", card["task_id"], "dismiss")
    await beacon.process()
    (alert,) = await alerts(beacon)
    assert alert.outcome == "dismissed"
    assert (await task_of(beacon, alert.task_id)).status == "dismissed"
    (update,) = beacon.sim.state.received_for("/cgi-bin/message/update_template_card")
    assert update.payload["button"] == {"replace_name": "已标记不相关"}


async def test_mql_hand_off_joins_the_open_alert_and_is_told_at_once(beacon: Any) -> None:
    await owned(beacon, "wmMql", name="赵总")
    await post_event(beacon, "wmMql", "webinar_attended")  # 20: nurturing
    await post_event(beacon, "wmMql", "form_submit")  # 35
    await settle(beacon)
    assert cards(beacon) == []
    await post_event(beacon, "wmMql", "call")  # 45: MQL, before the delay is over
    await settle(beacon)
    (card,) = cards(beacon)
    assert "赵总 已达到 MQL" in card["sub_title_text"]
    assert field(card, "阶段") == "新线索 → MQL" or field(card, "阶段").endswith("MQL")
    rows = await alerts(beacon)
    assert [(a.kind, a.status) for a in rows] == [("mql", "sent"), ("mql", "merged")]
    task = await task_of(beacon, rows[0].task_id)
    assert (task.kind, task.priority, task.title) == ("follow_up", 1, "跟进 MQL：赵总")


@pytest.mark.parametrize("alert_config", [{"daily_cap": 2}])
async def test_daily_cap_ranks_by_score_delta(beacon: Any, alert_config: dict[str, Any]) -> None:
    for external, name, event in (("wmSmall", "小", "open"), ("wmBig", "大", "webinar_attended"), ("wmMid", "中", "form_submit")):
        await owned(beacon, external, name=name)
        await post_event(beacon, external, event)
    await settle(beacon)
    beacon.clock.advance(seconds=61)
    await send_due(beacon)
    titles = [c["main_title"]["title"] for c in cards(beacon)]
    assert len(titles) == 2 and titles[0].startswith("大") and titles[1].startswith("中")
    by_name = {}
    async with beacon.rt.sessions() as session:
        for alert in (await session.scalars(select(Alert))).all():
            contact = await session.get(Contact, alert.contact_id)
            by_name[contact.name] = alert
        small = by_name["小"]
        assert small.status == "suppressed" and small.detail["suppressed"] == "daily cap"
        task = await session.get(Task, small.task_id)
        assert (task.status, task.owner_userid) == ("open", "rep1")  # waits in the morning to-do list
    # Urgent alerts are not capped.
    await owned(beacon, "wmUrgent", name="急")
    await post_event(beacon, "wmUrgent", "demo_request")
    await settle(beacon)
    assert len(cards(beacon)) == 3 and cards(beacon)[-1]["source"]["desc"] == "Beacon 紧急跟进"


@pytest.mark.parametrize("rep2_quiet", [{"quiet_start": "09:00", "quiet_end": "12:00"}])  # rep2's own: covers 10:00
async def test_quiet_hours_hold_alerts_but_not_urgent_ones(beacon: Any, rep2_quiet: dict[str, str]) -> None:
    async with beacon.rt.sessions() as session:
        rep2 = await session.get(Rep, "rep2")
    assert (rep2.quiet_start, rep2.quiet_end) == ("09:00", "12:00")
    await owned(beacon, "wmRep1", name="甲")
    await owned(beacon, "wmRep2", "rep2", name="乙")
    await post_event(beacon, "wmRep1", "open")
    await post_event(beacon, "wmRep2", "open")
    await settle(beacon)
    beacon.clock.advance(seconds=61)
    await send_due(beacon)
    assert len(cards(beacon, "rep1")) == 1 and cards(beacon, "rep2") == []
    beacon.clock.set(dt.datetime(2026, 11, 23, 4, 0, 30, tzinfo=dt.timezone.utc))  # 12:00:30 local
    await send_due(beacon)
    assert len(cards(beacon, "rep2")) == 1

    beacon.clock.set(dt.datetime(2026, 11, 23, 15, 0, tzinfo=dt.timezone.utc))  # 23:00 local: default quiet hours
    await owned(beacon, "wmNight", name="夜")
    await post_event(beacon, "wmNight", "download")
    await owned(beacon, "wmDemo", name="演")
    await post_event(beacon, "wmDemo", "cta", cta="demo")
    await settle(beacon)
    assert [c["main_title"]["title"][0] for c in cards(beacon, "rep1")] == ["甲", "演"]  # urgent: at once, no delay
    beacon.clock.advance(minutes=5)
    await send_due(beacon)
    assert len(cards(beacon, "rep1")) == 2  # still quiet
    beacon.clock.set(dt.datetime(2026, 11, 24, 0, 0, 10, tzinfo=dt.timezone.utc))  # 08:00:10 local
    await send_due(beacon)
    assert [c["main_title"]["title"][0] for c in cards(beacon, "rep1")] == ["甲", "演", "夜"]


@pytest.mark.parametrize("alert_config", [{"per_minute_limit": 20}])
async def test_never_more_than_the_per_minute_limit_to_one_rep(beacon: Any, alert_config: dict[str, Any]) -> None:
    for n in range(26):
        await owned(beacon, f"wmRush{n}", name=f"客户{n}")
        await post_event(beacon, f"wmRush{n}", "demo_request")
    await settle(beacon)
    assert len(cards(beacon)) == 20
    beacon.clock.advance(seconds=30)
    await send_due(beacon)
    assert len(cards(beacon)) == 20
    beacon.clock.advance(seconds=30)
    await send_due(beacon)
    assert len(cards(beacon)) == 26
    state = beacon.sim.state
    assert state.dropped == []
    times = [m.at for m in state.messages_to("rep1")]
    assert all(sum(1 for t in times if start <= t < start + 60) <= 20 for start in times)


async def test_hot_lead_past_sla_escalates_to_the_manager_once(beacon: Any) -> None:
    await owned(beacon, "wmSla", name="钱总")
    await post_event(beacon, "wmSla", "cta", cta="demo")
    await settle(beacon)
    (card,) = cards(beacon)
    (alert,) = await alerts(beacon)
    task = await task_of(beacon, alert.task_id)
    assert (task.kind, task.priority) == ("hot_lead", 1)
    beacon.clock.advance(hours=3, minutes=59)
    assert await run_job(beacon.rt, "escalate-overdue", escalate_overdue, "escalate-overdue:t1")
    await beacon.rt.outbox.drain()
    assert texts(beacon, "mgr1") == []
    beacon.clock.advance(minutes=2)
    assert await run_job(beacon.rt, "escalate-overdue", escalate_overdue, "escalate-overdue:t2")
    assert await run_job(beacon.rt, "escalate-overdue", escalate_overdue, "escalate-overdue:t3")
    await beacon.rt.outbox.drain()
    (text,) = texts(beacon, "mgr1")
    assert text.startswith("以下高意向线索超过 4 小时未跟进：")
    assert f"· 张三：{task.title}（任务 #{task.id}，11-23 10:00 创建）" in text
    assert (await task_of(beacon, task.id)).escalated_at == beacon.clock.now()
    assert "钱总" in json.dumps(card, ensure_ascii=False)


async def test_done_tasks_are_not_escalated(beacon: Any) -> None:
    await owned(beacon, "wmDone", "rep2", name="孙总")
    await post_event(beacon, "wmDone", "demo_request")
    await settle(beacon)
    (card,) = cards(beacon, "rep2")
    await beacon.driver.card_click("rep2", card["task_id"], "done")
    await beacon.process()
    beacon.clock.advance(hours=5)
    assert await run_job(beacon.rt, "escalate-overdue", escalate_overdue, "escalate-overdue:t4")
    await beacon.rt.outbox.drain()
    assert texts(beacon, "mgr1") == []


@pytest.mark.parametrize("alert_config", [{"language": "en"}])
async def test_cards_in_english(beacon: Any, alert_config: dict[str, Any]) -> None:
    await owned(beacon, "wmEn", name="Alice", company="Acme")
    await post_event(beacon, "wmEn", "demo_request")
    await settle(beacon)
    (card,) = cards(beacon)
    assert card["main_title"]["title"] == "Alice: booked a demo"
    assert [b["text"] for b in card["button_list"]] == ["Done", "In 1 hour", "Tomorrow", "Not relevant"]
    assert field(card, "Score").endswith("hot") or "pts" in field(card, "Score")


async def test_a_contacts_many_old_cards_are_not_read_for_each_event(beacon: Any) -> None:
    """A sent card stays open (sent, never clicked): after a year of bursts a contact has hundreds,
    each with its activity in `detail`. Only the newest can take new activity, so the tracker reads
    the newest few (`NEWEST_OPEN`) and the outcome is as before: the newest card is past the merge
    window, so the download opens a new alert."""
    from sqlalchemy import event as sa_event

    from bot.alerts import NEWEST_OPEN

    contact = await owned(beacon, "wmYear", name="赵总")
    now = beacon.clock.now()
    activity = [{"event": n, "type": "open", "item": 1, "title": "旧资料", "at": now.isoformat()} for n in range(30)]
    async with beacon.rt.sessions() as session, session.begin():
        for n in range(40):
            at = now - dt.timedelta(days=40 - n)
            session.add(Alert(rep_userid="rep1", contact_id=contact, kind="engagement", status="sent",
                              detail={"events": list(range(200)), "activities": activity}, card_task_id=f"old-card-{n}",
                              first_event_at=at, send_after=at, sent_at=at))
    loaded: list[int] = []
    listener = lambda target, _context: loaded.append(target.id)  # noqa: E731
    sa_event.listen(Alert, "load", listener)
    try:
        await post_event(beacon, "wmYear", "download", file="报告.pdf")
        await settle(beacon)
    finally:
        sa_event.remove(Alert, "load", listener)
    rows = await alerts(beacon)
    old = [a for a in rows if (a.card_task_id or "").startswith("old-card-")]
    assert len(old) == 40 and all(a.status == "sent" and len(a.detail["events"]) == 200 for a in old)
    (new,) = [a for a in rows if a not in old]
    assert (new.contact_id, new.status) == (contact, "pending") and new.detail["activities"][0]["type"] == "download"
    assert 0 < len(set(loaded)) <= NEWEST_OPEN  # the newest ones, not all 40
    assert set(loaded) <= {a.id for a in old[-NEWEST_OPEN:]} | {new.id}
