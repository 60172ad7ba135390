"""SOP playbooks: files and versions, the business calendar, a simulated week and a half of steps for
several contacts (tasks, app messages, mass-send templates), stop conditions and every trigger kind."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from bot.models import Contact, Enrollment, Event, OutboxItem, Playbook, Share, Task
from bot.scheduler import minute_key, run_job
from bot.scoring.jobs import mark_dormant_customers
from bot.sop.calendar import BusinessCalendar
from bot.sop.definition import PlaybookError, parse_file, playbook_files
from bot.sop.jobs import sop_quiet_check, sop_tick
from bot.sop.store import import_playbooks
from tests.conftest import make_settings
from tests.helpers import run_cli, write_config
from tests.test_channels import AUTH, make_channel
from tests.test_scoring_live import new_contact, post_event

ROOT = Path(__file__).resolve().parent.parent
PLAYBOOKS = ROOT / "content" / "playbooks"
SHANGHAI = ZoneInfo("Asia/Shanghai")
EXPO = "2026工博会"


def local(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=SHANGHAI).astimezone(dt.timezone.utc)


# ---- files and the calendar (no database) -----------------------------------------------------


def test_sample_playbooks_parse_and_cover_every_trigger() -> None:
    kinds = {parse_file(p).trigger.type for p in playbook_files(PLAYBOOKS)}
    assert kinds == {"contact_added", "stage", "item_read", "tag", "quiet", "dormant"}


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('key = "x"\nname = "n"\nfoo = 1\n[trigger]\ntype = "quiet"\ndays = 3\n[[steps]]\nday = 0\ntitle = "t"\n', "foo: unknown key"),
        ('key = "x"\nname = "n"\n[trigger]\ntype = "stage"\nstage = "won"\n[[steps]]\nday = 0\ntitle = "t"\n', "trigger: stage must be one of"),
        ('key = "x"\nname = "n"\n[trigger]\ntype = "tag"\n[[steps]]\nday = 0\ntitle = "t"\nmessage = "{nme}"\n', "trigger: tag is required"),
        ('key = "x"\nname = "n"\n[trigger]\ntype = "contact_added"\n[[steps]]\nday = 0\ntitle = "t"\nmessage = "{nme}"\n', "steps.0.message: unknown placeholder {nme}"),
        ('key = "x"\nname = "n"\n[trigger]\ntype = "contact_added"\n[[steps]]\nday = 2\ntitle = "a"\n[[steps]]\nday = 1\ntitle = "b"\n', "steps must be in order"),
        ('key = "x"\nname = "n"\n[trigger]\ntype = "contact_added"\n[[steps]]\nday = 0\nat = "25:00"\ntitle = "a"\n', "steps.0.at: must be a time HH:MM"),
    ],
)
def test_bad_playbook_names_the_field(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PlaybookError) as err:
        parse_file(path)
    assert str(err.value).startswith(f"{path}: ") and where in str(err.value)


def test_business_calendar_moves_steps_to_the_next_business_morning() -> None:
    settings = make_settings("sqlite+aiosqlite:///x.db", sop={"holidays": ["2026-12-01"], "extra_workdays": ["2026-12-05"]})
    cal = BusinessCalendar.from_settings(settings)
    monday = local(2026, 11, 23, 10, 0)
    assert cal.step_due(monday, 0, None) == monday  # business time: now
    assert cal.step_due(monday, 3, "10:00") == local(2026, 11, 26, 10, 0)  # Thursday
    assert cal.step_due(monday, 5, None) == local(2026, 11, 30, 9, 0)  # Saturday → Monday morning
    assert cal.step_due(monday, 2, "21:30") == local(2026, 11, 26, 9, 0)  # quiet hours → next morning
    assert cal.step_due(monday, 2, "07:00") == local(2026, 11, 25, 9, 0)  # before the day starts → 09:00
    assert cal.step_due(monday, 8, "10:00") == local(2026, 12, 2, 9, 0)  # a holiday (Tuesday) → Wednesday
    assert cal.step_due(local(2026, 12, 4, 20, 30), 0, None) == local(2026, 12, 5, 9, 0)  # a working Saturday (调休)
    assert cal.is_business_time(local(2026, 11, 27, 19, 59)) and not cal.is_business_time(local(2026, 11, 27, 20, 0))


def test_business_calendar_keeps_wall_clock_across_dst() -> None:
    settings = make_settings("sqlite+aiosqlite:///x.db", scheduler={"timezone": "America/New_York"})
    cal = BusinessCalendar.from_settings(settings)
    ny = ZoneInfo("America/New_York")
    friday = dt.datetime(2026, 3, 6, 10, 0, tzinfo=ny)
    due = cal.step_due(friday, 3, "10:00")  # Monday after the spring-forward Sunday
    assert due.astimezone(ny) == dt.datetime(2026, 3, 9, 10, 0, tzinfo=ny)
    assert due - friday == dt.timedelta(days=3, hours=-1)  # one hour less in UTC terms


# ---- importing and versions -------------------------------------------------------------------


@pytest.mark.slow
def test_sop_import_cli(tmp_path: Path) -> None:
    config = write_config(tmp_path / "b.toml", db_url=f"sqlite+aiosqlite:///{tmp_path / 'b.db'}", api_base="http://127.0.0.1:9", port=1)
    assert run_cli("--config", str(config), "migrate").returncode == 0
    first = run_cli("--config", str(config), "sop", "import", str(PLAYBOOKS))
    assert first.returncode == 0, first.stderr
    assert "new      expo-new-contact v1" in first.stdout and "6 new, 0 new version(s), 0 unchanged, 0 error(s)" in first.stdout
    again = run_cli("--config", str(config), "sop", "import", str(PLAYBOOKS))
    assert "0 new, 0 new version(s), 6 unchanged" in again.stdout
    folder = tmp_path / "pb"
    shutil.copytree(PLAYBOOKS, folder)
    path = folder / "mql-handoff.toml"
    path.write_text(path.read_text(encoding="utf-8").replace("4 小时内电话跟进", "2 小时内电话跟进"), encoding="utf-8")
    (folder / "broken.yaml").write_text("key: Bad Key\nname: x\n", encoding="utf-8")
    changed = run_cli("--config", str(config), "sop", "import", str(folder))
    assert changed.returncode == 1
    assert "changed  mql-handoff v2" in changed.stdout
    assert f"{folder / 'broken.yaml'}: key:" in changed.stderr
    listing = run_cli("--config", str(config), "sop", "list").stdout
    assert any(line.startswith("mql-handoff") and " 2 yes" in line for line in listing.splitlines())
    (tmp_path / "none").mkdir()
    empty = run_cli("--config", str(config), "sop", "import", str(tmp_path / "none"))
    assert empty.returncode == 2 and "no playbook files" in empty.stderr


PLAYBOOK_V1 = """key = "plain-welcome"
name = "新客户问候"
[trigger]
type = "contact_added"
[[steps]]
day = 0
title = "问候 v1"
[[steps]]
day = 1
at = "10:00"
title = "回访 v1"
"""


async def test_editing_a_playbook_affects_only_new_enrollments(beacon: Any, tmp_path: Path) -> None:
    folder = tmp_path / "pb"
    folder.mkdir()
    (folder / "welcome.toml").write_text(PLAYBOOK_V1, encoding="utf-8")
    await import_folder(beacon, folder)
    await add_contact(beacon, "rep1", "wmOld")
    edited = PLAYBOOK_V1.replace("v1", "v2") + '[[steps]]\nday = 2\nat = "10:00"\ntitle = "第三步 v2"\n'
    (folder / "welcome.toml").write_text(edited, encoding="utf-8")
    await import_folder(beacon, folder)
    await add_contact(beacon, "rep1", "wmNew")
    await run_ticks(beacon, until=beacon.clock.now() + dt.timedelta(days=3), every_hours=4)
    async with beacon.rt.sessions() as session:
        versions = (await session.execute(select(Playbook.version, Playbook.active).order_by(Playbook.version))).all()
        by_contact = await task_titles(session)
        statuses = {e.contact_id: (e.status, e.playbook_id) for e in (await session.scalars(select(Enrollment))).all()}
    assert [tuple(v) for v in versions] == [(1, False), (2, True)]
    assert by_contact["wmOld"] == ["问候 v1", "回访 v1"]
    assert by_contact["wmNew"] == ["问候 v2", "回访 v2", "第三步 v2"]
    assert sorted(s for s, _ in statuses.values()) == ["done", "done"]


# ---- helpers ------------------------------------------------------------------------------------


async def import_folder(beacon: Any, folder: Path) -> None:
    async with beacon.rt.sessions() as session, session.begin():
        report = await import_playbooks(session, folder, now=beacon.clock.now())
    assert report.ok, report.errors
    beacon.rt.services["sop"].invalidate()


async def add_contact(beacon: Any, rep: str, external: str, *, state: str | None = None, name: str = "") -> None:
    beacon.sim.state.add_external_contact_profile(external, name or f"客户{external[-3:]}", corp_name="某某制造")
    assert (await beacon.driver.add_external_contact(rep, external, state=state)).status == 200
    await settle(beacon)


async def settle(beacon: Any) -> None:
    await beacon.process()
    await beacon.rt.tracker.drain()
    await beacon.rt.outbox.drain()


async def tick(beacon: Any) -> None:
    assert await run_job(beacon.rt, "sop-tick", sop_tick, minute_key("sop-tick", beacon.rt))
    await settle(beacon)


async def run_ticks(beacon: Any, *, until: dt.datetime, every_hours: float) -> None:
    """The scheduler's per-minute tick, sampled: advance the clock and tick until `until`."""
    await tick(beacon)
    while beacon.clock.now() < until:
        beacon.clock.advance(hours=every_hours)
        await tick(beacon)


async def task_titles(session: Any) -> dict[str, list[str]]:
    rows = (await session.execute(
        select(Contact.external_userid, Task.title).join(Contact, Contact.id == Task.contact_id)
        .where(Task.kind == "sop").order_by(Task.due_at, Task.id)
    )).all()
    out: dict[str, list[str]] = {}
    for external, title in rows:
        out.setdefault(external, []).append(title.split("：", 1)[1].split("（", 1)[0])
    return out


async def enrollments(beacon: Any) -> dict[tuple[str, str], Enrollment]:
    async with beacon.rt.sessions() as session:
        rows = (await session.execute(
            select(Contact.external_userid, Enrollment).join(Contact, Contact.id == Enrollment.contact_id)
        )).all()
    return {(external, e.playbook_key): e for external, e in rows}


def app_texts(beacon: Any, rep: str) -> list[tuple[dt.datetime, str]]:
    out = []
    for message in beacon.sim.state.messages_to(rep):
        if message.msgtype == "text":
            at = dt.datetime.fromtimestamp(message.at, dt.timezone.utc)
            out.append((at, message.payload["text"]["content"]))
    return out


async def run_until(beacon: Any, when: dt.datetime, every_hours: float = 2) -> None:
    """Tick every `every_hours` up to exactly `when` (the last step is shortened)."""
    while beacon.clock.now() < when:
        step = min(dt.timedelta(hours=every_hours), when - beacon.clock.now())
        beacon.clock.advance(seconds=step.total_seconds())
        await tick(beacon)


# ---- a week and a half of one playbook for several contacts --------------------------------------


async def test_a_week_of_sop_for_several_contacts(beacon: Any, lib: Any) -> None:  # noqa: F811
    channel = await make_channel(beacon, EXPO)
    await import_folder(beacon, PLAYBOOKS)
    for external in ("wmA", "wmB", "wmC", "wmD"):
        await add_contact(beacon, "rep1", external, state=channel["state"])
    await add_contact(beacon, "rep2", "wmE")  # no channel: not this playbook
    await tick(beacon)  # Monday 10:00: the welcome step of A-D

    first = app_texts(beacon, "rep1")
    assert len(first) == 4 and all("可直接转发" in text and "/l/" in text for _, text in first)
    async with beacon.rt.sessions() as session:
        shares = (await session.execute(
            select(Contact.external_userid, Share.token).join(Contact, Contact.id == Share.contact_id).where(Share.source == "sop")
        )).all()
    assert sorted(e for e, _ in shares) == ["wmA", "wmB", "wmC", "wmD"]
    for external, token in shares:  # each rep message carries the link made for that contact
        assert sum(token in text for _, text in first) == 1

    beacon.clock.advance(hours=1)  # 11:00: B replies, C is moved to MQL by the rep, D deletes the rep
    await post_event(beacon, "wmB", "message", at=beacon.clock.now())
    resp = await beacon.client.post("/api/contacts/wmC/stage", json={"stage": "mql", "by": "rep1", "reason": "电话确认需求"}, headers=AUTH)
    assert resp.status == 200
    await beacon.driver.del_follow_user("rep1", "wmD")
    await settle(beacon)
    state = await enrollments(beacon)
    assert (state["wmB", "expo-new-contact"].status, state["wmB", "expo-new-contact"].stopped_reason) == ("stopped", "replied")
    assert (state["wmD", "expo-new-contact"].status, state["wmD", "expo-new-contact"].stopped_reason) == ("stopped", "left")
    assert state["wmC", "expo-new-contact"].status == "active"  # a manual move is seen by the next tick

    await run_until(beacon, local(2026, 11, 25, 21, 30))
    await add_contact(beacon, "rep1", "wmG", state=channel["state"])  # Wednesday in quiet hours
    await run_until(beacon, local(2026, 11, 28, 11, 0))
    await add_contact(beacon, "rep1", "wmF", state=channel["state"])  # Saturday
    await run_until(beacon, local(2026, 12, 3, 12, 0))

    state = await enrollments(beacon)
    assert {k: (e.status, e.stopped_reason) for k, e in state.items()} == {
        ("wmA", "expo-new-contact"): ("done", None),
        ("wmB", "expo-new-contact"): ("stopped", "replied"),
        ("wmC", "expo-new-contact"): ("stopped", "stage:mql"),
        ("wmC", "mql-handoff"): ("done", None),
        ("wmD", "expo-new-contact"): ("stopped", "left"),
        ("wmF", "expo-new-contact"): ("active", None),
        ("wmG", "expo-new-contact"): ("active", None),
    }
    assert state["wmG", "expo-new-contact"].next_due_at == local(2026, 12, 7, 9, 0)  # day 10 is a Saturday
    async with beacon.rt.sessions() as session:
        rows = (await session.execute(
            select(Contact.external_userid, Task.title, Task.due_at, Task.status, Task.priority)
            .join(Contact, Contact.id == Task.contact_id).where(Task.kind == "sop").order_by(Contact.external_userid, Task.due_at)
        )).all()
    due: dict[str, list[tuple[dt.datetime, str]]] = {}
    for external, title, due_at, status, _ in rows:
        due.setdefault(external, []).append((due_at.astimezone(SHANGHAI).replace(tzinfo=None), status))
    mon, thu = dt.datetime(2026, 11, 23, 10, 0), dt.datetime(2026, 11, 26, 10, 0)
    assert due["wmA"] == [(mon, "open"), (thu, "open"), (dt.datetime(2026, 11, 30, 14, 0), "open"), (dt.datetime(2026, 12, 3, 10, 0), "open")]
    assert due["wmB"] == [(mon, "dismissed")] and due["wmD"] == [(mon, "dismissed")]
    assert due["wmC"] == [(mon, "dismissed"), (dt.datetime(2026, 11, 23, 13, 0), "open"), (dt.datetime(2026, 11, 25, 10, 0), "open"),
                          (dt.datetime(2026, 11, 30, 9, 0), "open")]  # the MQL playbook; its day 5 is a Saturday
    assert due["wmG"] == [(dt.datetime(2026, 11, 26, 9, 0), "open"), (dt.datetime(2026, 11, 30, 9, 0), "open"),
                          (dt.datetime(2026, 12, 2, 14, 0), "open")]
    assert due["wmF"] == [(dt.datetime(2026, 11, 30, 9, 0), "open"), (dt.datetime(2026, 12, 1, 10, 0), "open")]
    assert "wmE" not in due
    titles = {title for _, title, *_ in rows}
    assert "MQL 跟进·第1/3步：4 小时内电话跟进（客户wmC（某某制造））" in titles
    # Automatic sends only in business time (Mon-Fri 09:00-20:00 Shanghai), never twice for one step.
    sends = app_texts(beacon, "rep1")
    cal = BusinessCalendar.from_settings(beacon.rt.settings)
    sop_sends = [(at, text) for at, text in sends if text.startswith("【SOP")]
    assert all(cal.is_business_time(at) for at, _ in sop_sends)
    assert len(sop_sends) == len({text for _, text in sop_sends}) == 4 + 1 + 2 + 2 + 1  # A-D, C's MQL call, A and G step 2, G and F step 1
    async with beacon.rt.sessions() as session:
        failed = (await session.scalars(select(OutboxItem).where(OutboxItem.status != "sent"))).all()
    assert failed == []


# ---- the other triggers ------------------------------------------------------------------------


async def test_quiet_tag_read_and_dormant_triggers(beacon: Any, lib: Any) -> None:  # noqa: F811
    await import_folder(beacon, PLAYBOOKS)
    now = beacon.clock.now()
    await new_contact(beacon, "wmQuiet", name="周总", owner_userid="rep2", stage="nurturing", last_activity_at=now - dt.timedelta(days=15))
    await new_contact(beacon, "wmLongGone", owner_userid="rep2", stage="nurturing", last_activity_at=now - dt.timedelta(days=40))
    await new_contact(beacon, "wmQuietNew", owner_userid="rep2", stage="new", last_activity_at=now - dt.timedelta(days=15))
    await new_contact(beacon, "wmTagged", owner_userid="rep1", stage="sql", profile={"tags": ["重点客户", "预算已确认"]})
    await new_contact(beacon, "wmOtherTag", owner_userid="rep1", stage="sql", profile={"tags": ["预算待定"]})
    reader = await new_contact(beacon, "wmReader", owner_userid="rep1")
    skimmer = await new_contact(beacon, "wmSkimmer", owner_userid="rep1")
    await new_contact(beacon, "wmOldCustomer", owner_userid="rep2", stage="customer", last_payment_at=now - dt.timedelta(days=549))

    assert await run_job(beacon.rt, "sop-quiet-check", sop_quiet_check, "sop-quiet-check:1")
    assert await run_job(beacon.rt, "sop-quiet-check", sop_quiet_check, "sop-quiet-check:2")  # nothing twice
    async with beacon.rt.sessions() as session:
        item_id = await session.scalar(select(Share.item_id).limit(1)) or await item_of(session, "manufacturing-digital-whitepaper")
    for contact_id, depth in ((reader, 100), (skimmer, 50)):
        await beacon.rt.events.contact_event("read", contact_id, occurred_at=now, received_at=now, props={"depth": depth},
                                             item_id=item_id, rep_userid="rep1")
    assert await run_job(beacon.rt, "mark-dormant", mark_dormant_customers, "mark-dormant:1")
    await settle(beacon)
    await tick(beacon)
    state = await enrollments(beacon)
    assert sorted(state) == [("wmOldCustomer", "dormant-reactivation"), ("wmQuiet", "quiet-14-days"),
                             ("wmReader", "whitepaper-reader"), ("wmTagged", "budget-confirmed")]
    assert state["wmQuiet", "quiet-14-days"].trigger == "quiet:14d"

    # The tag playbook's first step suggests internal material: a task without a customer link.
    async with beacon.rt.sessions() as session:
        tagged = await session.scalar(select(Task).join(Contact, Contact.id == Task.contact_id).where(Contact.external_userid == "wmTagged"))
        internal_shares = await session.scalar(select(Share).where(Share.source == "sop", Share.contact_id == tagged.contact_id))
    assert tagged.priority == 1 and tagged.item_id is not None and "/l/" not in tagged.body and internal_shares is None

    # The dormant customer interacts: woken to MQL, which ends the reactivation playbook and starts MQL follow-up.
    await post_event(beacon, "wmOldCustomer", "open", at=beacon.clock.now())
    await settle(beacon)
    assert (await enrollments(beacon))["wmOldCustomer", "dormant-reactivation"].stopped_reason == "stage:mql"
    beacon.clock.advance(minutes=1)
    await tick(beacon)
    assert ("wmOldCustomer", "mql-handoff") in await enrollments(beacon)

    # Day 5 of the quiet playbook is a Saturday: Monday 09:00 it goes to the customer as a mass-send template.
    await run_until(beacon, local(2026, 11, 30, 9, 0), every_hours=6)
    templates = [r.payload for r in beacon.sim.state.received_for("/cgi-bin/externalcontact/add_msg_template") if not r.errcode]
    assert len(templates) == 1
    assert templates[0]["sender"] == "rep2" and templates[0]["external_userid"] == ["wmQuiet"]
    assert templates[0]["text"]["content"].startswith("周总您好，上周的预测性维护直播有回放了") and "/l/" in templates[0]["text"]["content"]
    async with beacon.rt.sessions() as session:
        body = await session.scalar(select(Task.body).where(Task.title.like("%邀请观看直播回放%")))
    assert "群发助手" in body


async def item_of(session: Any, slug: str) -> int:
    from bot.models import ContentItem

    return await session.scalar(select(ContentItem.id).where(ContentItem.slug == slug))


async def test_hook_ignores_events_before_enrollment(beacon: Any, tmp_path: Path) -> None:
    """A reply that happened before the contact was enrolled (e.g. reprocessed later) stops nothing."""
    folder = tmp_path / "pb"
    folder.mkdir()
    (folder / "welcome.toml").write_text(PLAYBOOK_V1, encoding="utf-8")
    await import_folder(beacon, folder)
    await add_contact(beacon, "rep1", "wmEarly")
    await post_event(beacon, "wmEarly", "message", at=beacon.clock.now() - dt.timedelta(hours=1))
    await settle(beacon)
    assert (await enrollments(beacon))["wmEarly", "plain-welcome"].status == "active"
    async with beacon.rt.sessions() as session:
        events = (await session.scalars(select(Event.type).order_by(Event.id))).all()
    assert events == ["contact_added", "message"]
