"""Digests: the reps' to-do list and the managers' digest, checked against a known day of data;
exactly once across two processes and repeated runs; the CLI dry run; time zones with DST."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from bot.clock import FrozenClock
from bot.config import Settings
from bot.context import Context
from bot.digest.jobs import digest_managers, digest_reps, send_digests
from bot.digest.team import build_team_digests
from bot.digest.window import split_markdown, window_for
from bot.models import Channel, Contact, ContentItem, Digest, Event, OutboxItem, StageChange, Task
from bot.runtime import Runtime
from bot.scheduler import catch_up, daily_at, daily_key, default_jobs, run_job
from tests.conftest import make_settings
from tests.helpers import run_cli, write_config

ROOT = Path(__file__).resolve().parent.parent

SH = ZoneInfo("Asia/Shanghai")
NY = ZoneInfo("America/New_York")
TEAM = [
    {"userid": "rep1", "name": "张三", "role": "rep", "manager": "mgr1"},
    {"userid": "rep2", "name": "李四", "role": "rep", "manager": "mgr1"},
    {"userid": "mgr1", "name": "王经理", "role": "manager"},
    {"userid": "rep3", "name": "赵六", "role": "rep", "manager": "mgr2"},
    {"userid": "mgr2", "name": "钱经理", "role": "manager"},
]
TUESDAY = dt.date(2026, 11, 24)


def mon(hour: int, minute: int = 0, day: int = 23) -> dt.datetime:
    """A time on Monday 2026-11-23 (or another November day), Shanghai, as UTC."""
    return dt.datetime(2026, 11, day, hour, minute, tzinfo=SH).astimezone(dt.timezone.utc)


@pytest.fixture
def settings(db_url: str, sim: Any) -> Settings:
    return make_settings(db_url, api_base=sim.url, team={"members": TEAM})


async def seed(rt: Runtime) -> dict[str, int]:
    """Monday's activity of two teams (numbers worked out in the tests below)."""
    await rt.sync_team()
    ids: dict[str, int] = {}
    async with rt.sessions() as s, s.begin():
        expo, web = Channel(name="2026工博会", state="expo"), Channel(name="官网", state="web")
        items = {slug: ContentItem(slug=slug, title=title, kind=kind, stage="awareness") for slug, title, kind in (
            ("wp", "制造业数字化转型白皮书", "whitepaper"), ("case", "汽车零部件 OEE 案例", "case_study"),
            ("sol", "智能工厂解决方案", "solution"))}
        s.add_all([expo, web, *items.values()])
        await s.flush()
        people = {  # name: owner, channel, created, stage, temperature, score
            "c1": ("rep1", expo, mon(9), "mql", "hot", 60.0), "c2": ("rep1", expo, mon(11), "nurturing", "warm", 20.0),
            "c3": ("rep1", web, mon(15), "new", "cold", 3.0), "c4": ("rep1", None, mon(11, day=22), "sql", "hot", 79.6),
            "c5": ("rep2", web, mon(10), "mql", "hot", 55.0), "c6": ("rep2", None, mon(23, 30), "nurturing", "warm", 12.0),
            "c7": ("rep3", expo, mon(12), "nurturing", "warm", 11.0), "c8": ("rep1", None, mon(0, 30, day=24), "new", "cold", 0.0),
        }  # fmt: skip
        for name, (owner, channel, created, stage, temp, score) in people.items():
            contact = Contact(external_userid=f"wm_{name}", name=f"客户{name}", owner_userid=owner, channel_id=channel.id if channel else None,
                              stage=stage, temperature=temp, score=score, created_at=created, updated_at=created)
            s.add(contact)
            await s.flush()
            ids[name] = contact.id
        for name, item, type_, at in (
            ("c1", "wp", "open", mon(9, 30)), ("c1", "wp", "read", mon(9, 40)), ("c1", "case", "open", mon(13)),
            ("c1", "case", "read", mon(13, 30)), ("c2", "wp", "open", mon(11, 30)), ("c5", "sol", "open", mon(15)),
            ("c5", "sol", "download", mon(15, 30)), ("c5", "sol", "read", mon(15, 40)), ("c4", "case", "open", mon(10, day=22)),
            ("c3", "wp", "open", mon(16)), ("c6", "wp", "open", mon(23, 40)), ("c7", "sol", "open", mon(12, 30)),
        ):
            s.add(Event(type=type_, contact_id=ids[name], item_id=items[item].id, occurred_at=at, received_at=at, processed=True))
        s.add(Event(type="message", contact_id=ids["c3"], occurred_at=mon(17), received_at=mon(17), processed=True))
        for name, a, b, at in (
            ("c1", "new", "nurturing", mon(10)), ("c1", "nurturing", "mql", mon(14)), ("c2", "new", "nurturing", mon(12)),
            ("c5", "new", "mql", mon(16)), ("c4", "mql", "sql", mon(11)), ("c6", "new", "nurturing", mon(23, 45)),
            ("c7", "new", "nurturing", mon(13)),
        ):
            s.add(StageChange(contact_id=ids[name], from_stage=a, to_stage=b, by="rule:score", at=at))
        tasks = {  # name: kind, owner, contact, due, status, completed, created, priority, snoozed
            "t1": ("sop", "rep1", "c2", mon(10), "done", mon(11), mon(10), 2, None),
            "t2": ("sop", "rep1", "c1", mon(15), "open", None, mon(15), 2, None),
            "t3": ("sop", "rep1", "c3", mon(10, day=22), "done", mon(9, 30), mon(10, day=22), 2, None),
            "t4": ("sop", "rep1", "c2", mon(10, day=24), "open", None, mon(10), 2, None),
            "t5": ("sop", "rep1", "c3", mon(11, day=20), "open", None, mon(11, day=20), 2, None),
            "t6": ("sop", "rep2", "c6", mon(11), "dismissed", mon(12), mon(11), 2, None),
            "t7": ("sop", "rep3", "c7", mon(10), "open", None, mon(10), 2, None),
            "t9": ("manual", "rep1", "c3", mon(9), "open", None, mon(9), 2, mon(9, day=25)),
            "f1": ("follow_up", "rep1", "c1", mon(14), "done", mon(12), mon(10), 1, None),
            "f2": ("hot_lead", "rep1", "c1", mon(12), "done", mon(16), mon(11), 1, None),
            "f3": ("follow_up", "rep1", "c2", mon(2, day=24), "open", None, mon(22), 1, None),
            "f4": ("dormant", "rep2", "c6", mon(9), "open", None, mon(9), 1, None),
            "f5": ("follow_up", "rep2", "c6", mon(3, day=24), "dismissed", mon(23, 50), mon(23), 1, None),
        }  # fmt: skip
        for name, (kind, owner, contact, due, status, done, created, prio, snoozed) in tasks.items():
            task = Task(kind=kind, title=f"任务{name}", owner_userid=owner, contact_id=ids[contact], due_at=due, status=status,
                        completed_at=done, created_at=created, priority=prio, snoozed_until=snoozed)
            s.add(task)
            await s.flush()
            ids[name] = task.id
    return ids


async def test_managers_digest_numbers_match_the_day(beacon: Any) -> None:
    await seed(beacon.rt)
    async with beacon.rt.read_sessions() as session:
        teams = {t.manager: t for t in await build_team_digests(session, beacon.rt.settings, window_for("managers", TUESDAY, beacon.rt.settings))}
    one, two = teams["mgr1"], teams["mgr2"]
    assert [(r.name, r.due, r.done, r.overdue) for r in one.reps] == [("张三", 2, 2, 2), ("李四", 1, 0, 0)]
    assert [(r.name, r.due, r.done, r.overdue) for r in two.reps] == [("赵六", 1, 0, 1)]
    assert (one.new_contacts, one.by_channel) == (5, [("2026工博会", 2), ("官网", 2), ("直接添加", 1)])
    assert (two.new_contacts, two.by_channel) == (1, [("2026工博会", 1)])
    assert (one.new_mqls, two.new_mqls) == (2, 0)
    assert one.sla_missed == {"张三": 2, "李四": 1} and two.sla_missed == {}
    assert one.moves == [("new", "nurturing", 3), ("mql", "sql", 1), ("new", "mql", 1), ("nurturing", "mql", 1)]
    assert one.top_engaged == [("制造业数字化转型白皮书", 5, 4), ("智能工厂解决方案", 3, 1), ("汽车零部件 OEE 案例", 2, 1)]
    assert one.top_advancing == [("制造业数字化转型白皮书", 3), ("汽车零部件 OEE 案例", 2), ("智能工厂解决方案", 1)]
    assert two.top_engaged == [("智能工厂解决方案", 1, 1)] and two.top_advancing == [("智能工厂解决方案", 1)]
    assert one.funnel == {"new": 2, "nurturing": 2, "mql": 2, "sql": 1}
    assert [(d.day, n, m) for d, n, m in one.trend[-2:]] == [(22, 1, 0), (23, 5, 2)] and len(one.trend) == 7


async def test_managers_digest_sent_once_with_chart(beacon: Any) -> None:
    await seed(beacon.rt)
    beacon.clock.set(mon(9, day=24))
    assert await run_job(beacon.rt, "digest-managers", digest_managers, daily_key("digest-managers", beacon.rt))
    await beacon.rt.outbox.drain()
    state = beacon.sim.state
    got = [(m.msgtype, m.payload) for m in state.messages_to("mgr1")]
    assert [t for t, _ in got] == ["markdown", "image"]
    text = got[0][1]["markdown"]["content"]
    lines = text.splitlines()
    assert lines[0] == "**团队日报 · 11月23日 周一**"
    assert "> 张三：2 / 2 / <font color=\"warning\">2</font>" in lines and "> 李四：1 / 0 / 0" in lines
    assert "**新增客户 5**：2026工博会 2 · 官网 2 · 直接添加 1" in lines
    assert "**新增 MQL 2**" in lines
    assert "**热线索超时未跟进 <font color=\"warning\">3</font>**（超过 4 小时）：张三 2 · 李四 1" in lines
    assert "**阶段变化**：新线索→可培养 3 · MQL→有意向 1 · 新线索→MQL 1 · 可培养→MQL 1" in lines
    assert "1. 制造业数字化转型白皮书（5 次互动，4 人）" in lines and "1. 制造业数字化转型白皮书（3 人进阶）" in lines
    assert lines[-1] == "[打开数据看板](http://127.0.0.1:8080/dashboard)"
    media = state.media[got[1][1]["image"]["media_id"]]
    assert media.type == "image" and media.data.startswith(b"\x89PNG") and media.filename == "beacon-managers-mgr1-2026-11-24.png"
    assert [m.msgtype for m in state.messages_to("mgr2")] == ["markdown", "image"]
    # Run again (another run key, as `digest managers` by hand would): nothing more is sent.
    async with beacon.rt.sessions() as session:
        sent, skipped = await send_digests(Context(beacon.rt, session, origin="again"), "managers", TUESDAY)
        await session.commit()
    await beacon.rt.outbox.drain()
    assert (sent, skipped) == (0, 2)
    assert len(state.messages_to("mgr1")) == 2
    async with beacon.rt.sessions() as session:
        rows = (await session.scalars(select(Digest).order_by(Digest.recipient))).all()
    assert [(d.kind, d.recipient, d.day) for d in rows] == [("managers", "mgr1", TUESDAY), ("managers", "mgr2", TUESDAY)]
    assert rows[0].content["numbers"]["new_contacts"] == 5 and rows[0].content["chart"] is True


async def test_reps_todo_lists_overdue_first_with_task_links(beacon: Any) -> None:
    ids = await seed(beacon.rt)
    beacon.clock.set(mon(8, 30, day=24))
    assert await run_job(beacon.rt, "digest-reps", digest_reps, daily_key("digest-reps", beacon.rt))
    await beacon.rt.outbox.drain()
    (message,) = beacon.sim.state.messages_to("rep1")
    lines = message.payload["markdown"]["content"].splitlines()
    assert lines[0] == "**今日待办 · 11月24日 周二**"
    assert lines[1] == "张三，你今天有 **4** 项待办，其中 <font color=\"warning\">3 项已逾期</font>："
    links = [int(n) for n in re.findall(r"http://127\.0\.0\.1:8080/tasks/(\d+)\)", "\n".join(lines))]
    assert links == [ids["f3"], ids["t5"], ids["t2"], ids["t4"]]  # overdue first (urgent first), snoozed t9 left out
    assert lines[2].startswith("1. <font color=\"warning\">逾期</font> 【跟进】[任务f3]") and lines[2].endswith("今天 02:00")
    assert lines[3].endswith("11-20 11:00 到期")
    assert lines[5].startswith("4. 【SOP】[任务t4]") and lines[5].endswith("今天 10:00")
    assert lines[-2:] == ["**热线索（尚无跟进任务）**", "> 客户c4 · 80 分 · 有意向"]  # 79.6: whole points
    (rep2,) = beacon.sim.state.messages_to("rep2")
    assert "> 客户c5 · 55 分 · MQL" in rep2.payload["markdown"]["content"]
    assert beacon.sim.state.messages_to("mgr1") == []  # nothing to do: no message
    async with beacon.rt.sessions() as session:
        rows = {d.recipient: d.content for d in (await session.scalars(select(Digest).where(Digest.kind == "reps"))).all()}
    assert sorted(rows) == ["mgr1", "mgr2", "rep1", "rep2", "rep3"] and rows["mgr1"]["empty"] is True
    assert rows["rep1"]["numbers"] == {"tasks": 4, "overdue": 3, "task_ids": links, "hot": 1}
    beacon.clock.advance(hours=2)  # a later run the same day sends nothing, even to someone who now has a task
    assert await run_job(beacon.rt, "digest-reps", digest_reps, "digest-reps:again")
    await beacon.rt.outbox.drain()
    assert len(beacon.sim.state.messages_to("rep1")) == 1 and beacon.sim.state.messages_to("mgr1") == []


def before_each_claim(monkeypatch: pytest.MonkeyPatch, before: Any, after_commit: Any = None) -> None:
    """Calls before(recipient) before each digest claim, and after_commit() after each COMMIT, on either
    write path: the job's unit of work (PostgreSQL), or one call on SQLite's thread per transaction
    (bot.batch.write_in_one_call; there these run on that thread)."""
    from sqlalchemy.ext.asyncio import AsyncSession

    import bot.batch as batch
    import bot.digest.jobs as jobs

    real_claim, real_one, real_commit, real_session_commit = jobs.claim_and_queue, jobs._claim_one, batch._commit, AsyncSession.commit

    async def claim(session: Any, out: Any, *, now: dt.datetime) -> bool:
        before(out.recipient)
        return await real_claim(session, out, now=now)

    def claim_one(conn: Any, claim: Any, *args: Any) -> bool:
        before(claim.out.recipient)
        return real_one(conn, claim, *args)

    monkeypatch.setattr(jobs, "claim_and_queue", claim)
    monkeypatch.setattr(jobs, "_claim_one", claim_one)
    if after_commit is not None:
        def commit(conn: Any) -> None:
            real_commit(conn)
            after_commit()

        async def session_commit(self: AsyncSession) -> None:
            await real_session_commit(self)
            after_commit()

        monkeypatch.setattr(batch, "_commit", commit)
        monkeypatch.setattr(AsyncSession, "commit", session_commit)


async def run_dying_on_the_fourth_claim(beacon: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str]]:
    """digest-reps run by a process killed at its fourth claim: (recipients it tried, in order;
    recipients whose digest was committed)."""
    import bot.digest.jobs as jobs

    calls: list[str] = []

    def dies_on_the_fourth(recipient: str) -> None:
        calls.append(recipient)
        if len(calls) == 4:
            raise RuntimeError("process killed")

    with monkeypatch.context() as patch:
        before_each_claim(patch, dies_on_the_fourth)
        assert await run_job(beacon.rt, "digest-reps", digest_reps, "digest-reps:first")
    async with beacon.rt.sessions() as session:
        committed = sorted((await session.scalars(select(Digest.recipient).where(Digest.kind == "reps"))).all())
    return calls, committed


async def test_digests_commit_in_chunks_and_a_failed_run_is_finished_by_the_next(beacon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Claims are written CLAIM_CHUNK recipients per transaction: a run that dies half-way keeps (and
    sends) what it committed, and the next run sends the rest: one to-do list per rep in the end."""
    import bot.digest.jobs as jobs

    await seed(beacon.rt)
    beacon.clock.set(mon(8, 30, day=24))
    monkeypatch.setattr(jobs, "CLAIM_CHUNK", 2)
    monkeypatch.setattr(jobs, "CLAIM_BUDGET_S", 60.0)  # chunks by count only, however slow the machine
    calls, first = await run_dying_on_the_fourth_claim(beacon, monkeypatch)
    assert first == sorted(calls[:2])  # the first chunk committed; the third claim went with the failed one
    assert await run_job(beacon.rt, "digest-reps", digest_reps, "digest-reps:second")
    await beacon.rt.outbox.drain()
    async with beacon.rt.sessions() as session:
        rows = (await session.scalars(select(Digest.recipient).where(Digest.kind == "reps"))).all()
    assert sorted(rows) == ["mgr1", "mgr2", "rep1", "rep2", "rep3"]
    for rep in ("rep1", "rep2", "rep3"):
        assert len(beacon.sim.state.messages_to(rep)) == 1, rep


async def test_a_digest_transaction_commits_once_it_has_run_its_time(beacon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A claim that takes long (a manager's chart) ends its transaction early: with no time to spare,
    every claim commits on its own, so a run that dies at the fourth keeps the three before it."""
    import bot.digest.jobs as jobs

    await seed(beacon.rt)
    beacon.clock.set(mon(8, 30, day=24))
    monkeypatch.setattr(jobs, "CLAIM_BUDGET_S", 0.0)
    calls, first = await run_dying_on_the_fourth_claim(beacon, monkeypatch)
    assert first == sorted(calls[:3])


async def test_a_digest_transaction_leaves_room_for_its_commit(beacon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget covers COMMIT: once a COMMIT has been timed, a transaction ends before one more claim
    and a COMMIT as long as the last would overrun it. Time here is counted, not measured: a claim
    costs 1 unit, a COMMIT 2, the budget is 3 (CLAIM_CHUNK out of the way)."""
    import types

    import bot.digest.jobs as jobs

    await seed(beacon.rt)
    beacon.clock.set(mon(8, 30, day=24))
    now = [0.0]
    chunks: list[int] = [0]

    def claim(_recipient: str) -> None:
        now[0] += 1
        chunks[-1] += 1

    def commit() -> None:
        now[0] += 2
        chunks.append(0)

    before_each_claim(monkeypatch, claim, commit)
    monkeypatch.setattr(jobs, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr(jobs, "CLAIM_CHUNK", 100)
    monkeypatch.setattr(jobs, "CLAIM_BUDGET_S", 3)
    assert await run_job(beacon.rt, "digest-reps", digest_reps, "digest-reps:counted")
    # 3 claims (a 4th would pass 3 units; no COMMIT timed yet), then 1 per transaction (1 + 1 + 2 > 3).
    # Not counting COMMIT would give [3, 2].
    assert [n for n in chunks if n] == [3, 1, 1], chunks
    async with beacon.rt.sessions() as session:
        assert len((await session.scalars(select(Digest.recipient).where(Digest.kind == "reps"))).all()) == 5


async def test_two_processes_send_one_digest_per_manager(db_url: str, sim: Any) -> None:
    settings = make_settings(db_url, api_base=sim.url, team={"members": TEAM})
    clock = FrozenClock(mon(9, day=24))
    a = Runtime.build(settings, routers=[], clock=clock)
    b = Runtime.build(settings, routers=[], clock=clock)
    await a.start(background=False)
    await b.start(background=False)
    try:
        await seed(a)
        key = daily_key("digest-managers", a)
        assert key == "digest-managers:2026-11-24"

        async def by_hand(rt: Runtime) -> None:  # what `digest managers` does, racing the scheduler
            async with rt.sessions() as session:
                await send_digests(Context(rt, session, origin="cli"), "managers", TUESDAY)
                await session.commit()

        results = await asyncio.gather(
            run_job(a, "digest-managers", digest_managers, key), run_job(b, "digest-managers", digest_managers, key),
            by_hand(b), run_job(a, "digest-managers", digest_managers, key),
        )
        assert sorted(r for r in results if r is not None) == [False, False, True]
        await a.outbox.drain()
        await b.outbox.drain()
        async with a.sessions() as session:
            digests = (await session.execute(select(Digest.recipient, func.count()).group_by(Digest.recipient).order_by(Digest.recipient))).all()
            queued = await session.scalar(select(func.count()).select_from(OutboxItem))
        assert [tuple(d) for d in digests] == [("mgr1", 1), ("mgr2", 1)]
        assert queued == 4  # per manager: one markdown and one chart
        for manager in ("mgr1", "mgr2"):
            assert [m.msgtype for m in sim.state.messages_to(manager)] == ["markdown", "image"]
    finally:
        await a.stop()
        await b.stop()


# ---- the command line --------------------------------------------------------------------------


@pytest.mark.slow
async def test_digest_cli_dry_run_and_send_once(tmp_path: Path, sqlite_url: str, sim: Any) -> None:
    settings = make_settings(sqlite_url, api_base=sim.url, team={"members": TEAM})
    rt = Runtime.build(settings, routers=[], clock=FrozenClock(mon(9, day=24)))
    try:
        await seed(rt)
    finally:
        await rt.engine.dispose()
    members = "".join(f'[[team.members]]\nuserid = "{m["userid"]}"\nname = "{m["name"]}"\nrole = "{m["role"]}"\nmanager = "{m.get("manager", "")}"\n'
                      for m in TEAM[1:])
    extra = 'role = "rep"\nmanager = "mgr1"\n' + members
    config = write_config(tmp_path / "b.toml", db_url=sqlite_url, api_base=sim.url, port=1, extra=extra)

    async def cli(*args: str) -> Any:  # the simulator runs on this loop: keep the subprocess off it
        return await asyncio.get_running_loop().run_in_executor(None, lambda: run_cli("--config", str(config), *args))

    dry = await cli("digest", "managers", "--date", "2026-11-24", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    out = dry.stdout.splitlines()
    assert out[0] == "digest managers 2026-11-24 (dry run): 2 message(s)"
    assert "=== to mgr1 · markdown 1/1" in out and "**团队日报 · 11月23日 周一**" in out
    assert "> 张三：2 / 2 / <font color=\"warning\">2</font>" in out and "**新增客户 5**：2026工博会 2 · 官网 2 · 直接添加 1" in out
    charts = [line.split(" · image ", 1)[1] for line in out if " · image " in line]
    assert len(charts) == 2 and all(Path(p).read_bytes().startswith(b"\x89PNG") for p in charts)
    reps = await cli("digest", "reps", "--date", "2026-11-24", "--dry-run")
    assert "张三，你今天有 **4** 项待办，其中 <font color=\"warning\">3 项已逾期</font>：" in reps.stdout.splitlines()
    assert "=== mgr1: nothing to send" in reps.stdout
    assert sim.state.messages_to("mgr1") == []
    first = await cli("digest", "managers", "--date", "2026-11-24")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "digest managers 2026-11-24: 2 sent, 0 already sent or empty"
    second = await cli("digest", "managers", "--date", "2026-11-24")
    assert second.stdout.strip() == "digest managers 2026-11-24: 0 sent, 2 already sent or empty"
    assert [m.msgtype for m in sim.state.messages_to("mgr1")] == ["markdown", "image"]


# ---- time zones --------------------------------------------------------------------------------


def test_digest_trigger_fires_at_local_time_across_dst() -> None:
    trigger = daily_at("08:30", "America/New_York")
    fires, previous = [], None
    now = dt.datetime(2026, 3, 6, 12, 0, tzinfo=dt.timezone.utc)
    for _ in range(4):
        fire = trigger.get_next_fire_time(previous, now)
        fires.append(fire.astimezone(dt.timezone.utc).strftime("%m-%d %H:%M"))
        previous = now = fire
    assert fires == ["03-06 13:30", "03-07 13:30", "03-08 12:30", "03-09 12:30"]  # EST, EST, EDT (spring forward), EDT
    fires, previous, now = [], None, dt.datetime(2026, 10, 30, 12, 0, tzinfo=dt.timezone.utc)
    for _ in range(4):
        fire = trigger.get_next_fire_time(previous, now)
        fires.append(fire.astimezone(dt.timezone.utc).strftime("%m-%d %H:%M"))
        previous = now = fire
    assert fires == ["10-30 12:30", "10-31 12:30", "11-01 13:30", "11-02 13:30"]  # fall back on Sunday 11-01
    shanghai = daily_at("08:30", "Asia/Shanghai").get_next_fire_time(None, dt.datetime(2026, 3, 7, 23, 0, tzinfo=dt.timezone.utc))
    assert shanghai == dt.datetime(2026, 3, 8, 0, 30, tzinfo=dt.timezone.utc)


def test_day_keys_and_windows_in_a_dst_zone(sqlite_url: str) -> None:
    settings = make_settings(sqlite_url, scheduler={"timezone": "America/New_York"})
    for instant, key in (("2026-03-08T12:30:00+00:00", "2026-03-08"), ("2026-11-01T13:30:00+00:00", "2026-11-01"),
                         ("2026-11-02T04:59:00+00:00", "2026-11-01"), ("2026-11-02T05:00:00+00:00", "2026-11-02")):
        rt = Runtime.build(settings, routers=[], clock=FrozenClock(dt.datetime.fromisoformat(instant)))
        assert daily_key("digest-managers", rt) == f"digest-managers:{key}"
    spring = window_for("managers", dt.date(2026, 3, 9), settings)  # reports on Sunday 03-08, a 23-hour day
    fall = window_for("managers", dt.date(2026, 11, 2), settings)  # reports on Sunday 11-01, a 25-hour day
    assert spring.end - spring.start == dt.timedelta(hours=23) and fall.end - fall.start == dt.timedelta(hours=25)
    assert spring.start == dt.datetime(2026, 3, 8, 5, 0, tzinfo=dt.timezone.utc)
    assert fall.as_of == dt.datetime(2026, 11, 2, 14, 0, tzinfo=dt.timezone.utc)  # 09:00 EST


async def test_missed_daily_jobs_are_caught_up_once_at_start(db_url: str) -> None:
    clock = FrozenClock(mon(10))  # 10:00: the 08:30 and 09:00 digests were missed, the 02:00 decay is too old
    rt = Runtime.build(make_settings(db_url), routers=[], clock=clock)
    runs: list[str] = []

    def job(name: str) -> Any:
        async def run(ctx: Context) -> None:
            runs.append(name)
        return run

    jobs = [(job_id, job(job_id), trigger, key) for job_id, _, trigger, key in default_jobs("Asia/Shanghai", rt.settings)]
    try:
        # 07:00, 08:30 and 09:00 are within CATCH_UP_S; the nightly 02:00-03:45 jobs are not; sop-tick is not daily.
        assert await catch_up(rt, jobs) == ["sop-quiet-check", "digest-reps", "digest-managers"]
        assert await catch_up(rt, jobs) == []  # claimed: a second process (or restart) does nothing
        assert runs == ["sop-quiet-check", "digest-reps", "digest-managers"]
    finally:
        await rt.engine.dispose()


def test_chart_falls_back_to_english_labels_without_a_cjk_font(monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.digest import chart
    from bot.digest.team import TeamDigest

    monkeypatch.setattr(chart, "cjk_font", lambda: None)
    team = TeamDigest("mgr1", "王经理", funnel={"new": 3, "mql": 1}, trend=[(dt.date(2026, 11, 23), 2, 1)])
    assert chart.render_chart(team, "王经理").startswith(b"\x89PNG")  # no missing-glyph warning (warnings are errors)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_charts_are_drawn_at_background_priority() -> None:
    """The chart process yields the CPU to the server: on a shared core it took half of it, and
    SQLite's write lock was held twice as long by whatever transaction was in progress."""
    from bot.digest import chart

    pool = chart.chart_pool()
    try:
        assert pool.submit(os.sched_getscheduler, 0).result(timeout=60) == os.SCHED_IDLE
    finally:
        pool.shutdown()
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the server itself is untouched


def test_the_chart_process_exits_when_the_process_that_started_it_dies(tmp_path: Path) -> None:
    """A process killed with a chart process running (a `serve` worker killed mid-digest) leaves no
    orphan behind: the chart process notices its parent is gone and exits."""
    script = (
        "import os, sys\n"
        "from bot.digest import chart\n"
        "pool = chart.chart_pool()\n"
        "print(pool.submit(os.getpid).result(timeout=60), flush=True)\n"
        "os._exit(0)  # no shutdown of the pool: as SIGKILL would leave it\n"
    )
    out = tmp_path / "out.txt"
    with out.open("w") as sink:  # a file, not a pipe: an orphan holding the pipe would keep run() waiting
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, timeout=90)
    assert done.returncode == 0, out.read_text()
    child = int(out.read_text().split()[-1])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.2)
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the chart process outlived its parent"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_split_markdown_respects_wecom_limit() -> None:
    text = "\n".join(f"{n}. " + "很长的一行内容" * 20 for n in range(20))
    parts = split_markdown(text)
    assert len(parts) > 1 and all(len(p.encode()) <= 2048 for p in parts)
    assert "\n".join(parts) == text
    assert json.loads(json.dumps(parts)) == parts
