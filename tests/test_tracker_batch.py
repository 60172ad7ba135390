"""The set-based tracker (bot/tracker_batch.py) against the one-event-at-a-time tracker it replaced.

The same seeded scenario (opens, forwards along child links, beacons, gate forms that identify and
merge, offline events, time passing, drains at random points) runs on two fresh databases: one drained
batch by batch, one event by event in savepoints. Every row the tracker and its hooks write must come
out the same.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from bot.clock import FrozenClock
from bot.identity import add_identity
from bot.models import Contact, ContentItem
from bot.runtime import Runtime
from bot.shares import create_share
from bot.sop.store import import_playbooks
from content.importer import import_library
from tests.conftest import T0, make_settings

LIBRARY = Path(__file__).resolve().parent.parent / "content" / "library"
SLUGS = ["case-auto-parts-oee", "solution-smart-factory-automotive", "blog-oee-common-mistakes", "case-electronics-smt-yield"]
GATED = "manufacturing-digital-whitepaper"
CARD_ID = re.compile(r"(alert-\d+-)[0-9a-f]{8}")
PHONES = ["13800000001", "13800000002", "13900000003", "13700000004", "13600000005"]


class World:
    """One runtime on its own database, driven by the scenario."""

    def __init__(self, rt: Runtime, clock: FrozenClock, playbooks: Path) -> None:
        self.rt, self.clock, self.playbooks = rt, clock, playbooks
        self.links: list[Any] = []  # LinkInfo of base shares, then of child shares as they appear
        self.contacts: list[int] = []

    async def setup(self) -> None:
        async with self.rt.sessions() as session, session.begin():
            await import_library(session, LIBRARY, now=self.clock.now())
            items = {i.slug: i for i in (await session.scalars(select(ContentItem))).all()}
            owners = ["rep1", "rep2", None, "rep1", None, "rep2"]
            for n, owner in enumerate(owners):
                contact = Contact(external_userid=f"wmT{n}", owner_userid=owner, phone=PHONES[n] if n < 2 else None,
                                  created_at=self.clock.now(), updated_at=self.clock.now())
                session.add(contact)
                await session.flush()
                if n < 2:
                    await add_identity(session, contact, "phone", PHONES[n])
                self.contacts.append(contact.id)
            shares = []
            for n, cid in enumerate(self.contacts):
                shares.append(await create_share(session, items[SLUGS[n % len(SLUGS)]], rep_userid="rep1", contact_id=cid, now=self.clock.now()))
            shares.append(await create_share(session, items[GATED], rep_userid="rep2", contact_id=self.contacts[0], now=self.clock.now()))
            shares.append(await create_share(session, items[GATED], rep_userid="rep1", now=self.clock.now()))
            shares.append(await create_share(session, items[SLUGS[0]], rep_userid=None, now=self.clock.now()))
            tokens = [s.token for s in shares]
            # A playbook on the real-time path: reads enroll, replies and later stages stop (the SOP hook).
            report = await import_playbooks(session, self.playbooks, now=self.clock.now())
            assert report.ok, report.errors
        for token in tokens:
            self.links.append(await self.rt.links.resolve(token))

    async def act(self, rng: random.Random, step: int) -> None:
        now = self.clock.now()
        roll = rng.random()
        cookie = f"visitor-{rng.randrange(9):02d}-cookie-xxxxxx"
        link = self.links[rng.randrange(len(self.links))]
        if roll < 0.35:
            child = f"child-{cookie[:10]}-{link.share_id:04d}-xx"
            await self.rt.events.link_event("open", link, cookie, now=now, key=f"open:{step}", child_token=child,
                                            props={"gated": link.gated, "unlocked": True, "outdated": False})
            resolved = await self.rt.links.resolve(child)
            if resolved is not None and all(x.share_id != resolved.share_id for x in self.links):
                self.links.append(resolved)
        elif roll < 0.6:
            kind = rng.choice(["read", "cta", "dwell", "download"])
            props = {"read": {"depth": rng.choice([25, 50, 100])}, "cta": {"cta": rng.choice(["demo", "contact"])},
                     "dwell": {"seconds": 30, "pageview": "pv123456"}, "download": {"file": "x.pdf"}}[kind]
            await self.rt.events.link_event(kind, link, cookie, now=now, props=props, key=f"{kind}:{step}")
        elif roll < 0.72:
            props = {"name": f"访客{step}", "company": "某公司", "title": rng.choice(["", "CEO"]), "phone": rng.choice(PHONES)}
            await self.rt.events.link_event("form_submit", link, cookie, now=now, props=props)
        elif roll < 0.9:
            kind = rng.choice(["call", "demo_request", "webinar_attended", "message", "payment", "open", "unsubscribe"])
            late = dt.timedelta(hours=rng.choice([0, 0, 0, 3, 50]))  # offline imports arrive late
            await self.rt.events.contact_event(kind, rng.choice(self.contacts), occurred_at=now - late, received_at=now,
                                               key=f"api:{step}", props={"amount": 100} if kind == "payment" else {})
        else:
            self.clock.advance(hours=rng.choice([1, 6, 30, 24 * 10]))

    async def snapshot(self) -> dict[str, Any]:
        queries = {
            "events": "SELECT id, type, contact_id, visitor_id, share_id, processed, props, idempotency_key FROM events ORDER BY id",
            "visitors": "SELECT id, cookie_id, contact_id FROM visitors ORDER BY id",
            "contacts": "SELECT id, name, company, title, phone, owner_userid, referrer_contact_id, stage, temperature, "
                        "score, last_activity_at, last_payment_at, merged_into_id, profile FROM contacts ORDER BY id",
            "identities": "SELECT contact_id, kind, value FROM identities ORDER BY id",
            "merges": "SELECT from_contact_id, into_contact_id, moved FROM contact_merges ORDER BY id",
            "ledger": "SELECT contact_id, model, rule, points, event_id, reason, at FROM score_ledger",
            "stages": "SELECT contact_id, from_stage, to_stage, by, reason, at FROM stage_history",
            "outbox": "SELECT idempotency_key, path, payload, status FROM outbox",
            "tasks": "SELECT kind, title, owner_userid, contact_id, priority, source_event_id FROM tasks",
            "alerts": "SELECT rep_userid, contact_id, kind, urgent, status, score_delta, detail FROM alerts",
            "enrollments": "SELECT playbook_key, contact_id, owner_userid, status, stopped_reason, start_stage FROM sop_enrollments ORDER BY id",
        }
        out: dict[str, Any] = {}
        async with self.rt.sessions() as session:
            for name, sql in queries.items():
                rows = [tuple(_stable(v) for v in r) for r in (await session.execute(text(sql))).all()]
                out[name] = rows if "ORDER BY" in sql else sorted(rows, key=repr)
        return out


PLAYBOOK = """
key: batch-reader
name: 读到一半
trigger:
  type: item_read
  min_depth: 50
steps:
  - day: 1
    at: "10:00"
    title: 跟进
    message: "{name}您好"
"""


def _stable(value: Any) -> Any:
    # Card task ids carry a random part (bot/alert_cards.py); everything else is deterministic.
    return CARD_ID.sub(r"\1*", value) if isinstance(value, str) else value


async def _world(path: Path, template: Path, *, batched: bool, batch: int, extra_hooks: list[Any] = ()) -> World:
    shutil.copy(template, path)
    clock = FrozenClock(T0)
    rt = Runtime.build(make_settings(f"sqlite+aiosqlite:///{path}"), routers=[], clock=clock)
    await rt.start(background=False)
    rt.tracker.batched = batched
    rt.tracker.batch = batch
    rt.tracker.max_batch_s = 1e9  # batch boundaries by count only, so both sides cut alike
    rt.tracker.hooks.extend(extra_hooks)
    playbooks = path.with_suffix(".playbooks")
    playbooks.mkdir()
    (playbooks / "batch-reader.yaml").write_text(PLAYBOOK, encoding="utf-8")
    world = World(rt, clock, playbooks)
    await world.setup()
    return world


async def _run(world: World, seed: int, steps: int) -> dict[str, Any]:
    rng = random.Random(seed)
    for step in range(steps):
        await world.act(rng, step)
        if rng.random() < 0.15:
            await world.rt.tracker.drain()
    while await world.rt.tracker.drain():
        pass
    return await world.snapshot()


async def _both(tmp_path: Path, template: Path, seed: int, steps: int, *, batch: int,
                extra_hooks: list[Any] = ()) -> tuple[dict[str, Any], dict[str, Any], World]:
    """The same scenario through the one-by-one tracker and the batched one: (expected, got, batched world)."""
    one = await _world(tmp_path / "one.db", template, batched=False, batch=batch, extra_hooks=extra_hooks)
    many = await _world(tmp_path / "many.db", template, batched=True, batch=batch, extra_hooks=extra_hooks)
    try:
        expected = await _run(one, seed, steps)
        got = await _run(many, seed, steps)
    finally:
        await one.rt.stop()
        await many.rt.stop()
    return expected, got, many


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    for name in a:
        if a[name] != b[name]:
            only_a = [r for r in a[name] if r not in b[name]]
            only_b = [r for r in b[name] if r not in a[name]]
            raise AssertionError(f"{name} differ:\n one by one only: {only_a[:3]}\n batched only: {only_b[:3]}")


@pytest.mark.parametrize("seed,batch", [(1, 50), (2, 7), (3, 3), (4, 50)])
async def test_batched_equals_one_by_one(tmp_path: Path, sqlite_template: Path, seed: int, batch: int) -> None:
    expected, got, many = await _both(tmp_path, sqlite_template, seed, 160, batch=batch)
    assert any(e[1] == "forward" for e in expected["events"])
    assert expected["merges"] and expected["ledger"] and expected["stages"]
    assert any(row[3] == "stopped" for row in expected["enrollments"])  # the SOP hook enrolled, and stopped some
    # alerts joined several events and recorded the stage moves they caused (the batch preload's reads)
    details = [json.loads(row[6]) if isinstance(row[6], str) else row[6] for row in expected["alerts"]]
    assert any(len(d.get("events") or []) > 1 and d.get("stages") for d in details), details
    assert many.rt.tracker.fallbacks == 0
    _assert_same(expected, got)


async def test_a_failing_event_is_isolated_like_before(tmp_path: Path, sqlite_template: Path) -> None:
    """A hook that fails on some events: the batch falls back to one event per savepoint; the
    outcome is what the one-by-one tracker produces (the event is processed, left unattributed)."""

    async def flaky(session: Any, event: Any) -> None:
        if event.type == "cta":
            raise RuntimeError("boom")

    expected, got, many = await _both(tmp_path, sqlite_template, 5, 120, batch=10, extra_hooks=[flaky])
    assert any(e[1] == "cta" for e in expected["events"])
    assert many.rt.tracker.fallbacks > 0
    assert all(e[5] for e in got["events"])  # every event processed, the failing ones too
    _assert_same(expected, got)


async def test_a_failing_alert_leaves_the_event_scored_batched_or_not(tmp_path: Path, sqlite_template: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Alerting fails on downloads. One by one, its savepoint catches that; in a batch, where it runs
    without one, the batch falls back to one by one: either way those events are scored, only their
    alert is missing, and the two trackers end alike."""
    from bot.alerts import AlertService

    real = AlertService._track

    async def track(self: Any, session: Any, contact: Any, event: Any, *rest: Any) -> None:
        if event.type == "download":
            raise RuntimeError("alerting broke")
        await real(self, session, contact, event, *rest)

    monkeypatch.setattr(AlertService, "_track", track)
    expected, got, many = await _both(tmp_path, sqlite_template, 6, 140, batch=10)
    downloads = {e[0] for e in expected["events"] if e[1] == "download" and e[2] is not None}
    assert downloads and many.rt.tracker.fallbacks > 0
    assert downloads & {row[4] for row in got["ledger"]}  # scored (those the caps let through)
    assert all(e[5] for e in got["events"])
    _assert_same(expected, got)


async def test_queued_rows_survive_a_hook_savepoint_rollback(tmp_path: Path, sqlite_template: Path) -> None:
    """A hook that reads the ledger inside its own savepoint and then rolls that savepoint back must
    not take the scoring hook's (queued) ledger rows with it."""
    from bot.models import ScoreEntry

    seen: list[int] = []

    async def nosy(session: Any, event: Any) -> None:
        try:
            async with session.begin_nested():
                rows = (await session.execute(select(ScoreEntry.points).where(ScoreEntry.event_id == event.id))).all()
                seen.append(len(rows))
                raise RuntimeError("roll my savepoint back")
        except RuntimeError:
            pass

    world = await _world(tmp_path / "w.db", sqlite_template, batched=True, batch=50, extra_hooks=[nosy])
    try:
        contact = world.contacts[0]
        for n in range(5):
            await world.rt.events.contact_event("webinar_attended", contact, occurred_at=world.clock.now(),
                                                received_at=world.clock.now(), key=f"w{n}")
            world.clock.advance(days=2)
        assert await world.rt.tracker.drain() == 5
        snap = await world.snapshot()
    finally:
        await world.rt.stop()
    assert seen == [1, 1, 1, 1, 1]  # the hook saw each event's ledger row
    assert len([r for r in snap["ledger"] if r[4] is not None]) == 5
    assert all(e[5] for e in snap["events"])
    (score,) = [c[9] for c in snap["contacts"] if c[0] == contact]
    assert score == round(sum(r[3] for r in snap["ledger"] if r[0] == contact), 2)


async def test_batch_budget_follows_the_database(db_url: str) -> None:
    """SQLite keeps the tracker's write transactions short (they hold the one write lock); PostgreSQL,
    with row locks only, takes longer batches."""
    from bot.tracker import BATCH_BUDGET

    rt = Runtime.build(make_settings(db_url), routers=[])
    try:
        got = (rt.tracker.batch, rt.tracker.max_batch_s)
        assert got == BATCH_BUDGET[rt.engine.dialect.name]
        assert got == ((50, 0.02) if rt.engine.dialect.name == "sqlite" else (200, 0.2))
    finally:
        await rt.engine.dispose()


async def test_one_drain_does_the_whole_backlog_even_when_batches_run_out_of_time(tmp_path: Path, sqlite_template: Path) -> None:
    """A batch that runs out of its time budget leaves the rest for the next pass of the same drain: a
    drain returns only with nothing left (then the worker waits `settle_s` for more to batch up)."""
    world = await _world(tmp_path / "db", sqlite_template, batched=True, batch=50)
    world.rt.tracker.max_batch_s = 0.0  # every batch stops after its first event
    try:
        for n, contact in enumerate(world.contacts[:6]):
            await world.rt.events.contact_event("download", contact, occurred_at=world.clock.now(),
                                                received_at=world.clock.now(), key=f"d{n}")
        assert await world.rt.tracker.drain() == 6
        assert await world.rt.tracker.drain() == 0
        snap = await world.snapshot()
    finally:
        await world.rt.stop()
    assert len(snap["events"]) == 6 and all(e[5] for e in snap["events"])


async def test_a_batch_takes_over_only_a_batch_session(beacon: Any) -> None:
    """The hand-over of ORM statements and savepoints is wired to BatchSession's class: a batch in a
    plain session would see none of them, so installing it there is refused; in a batch session it
    sees them until it is uninstalled."""
    from bot.tracker_batch import BATCH_KEY, TrackerBatch, batch_sessions

    tracker = beacon.rt.tracker
    async with beacon.rt.sessions() as session, session.begin():
        with pytest.raises(TypeError):
            await TrackerBatch(tracker, session, []).install()
    async with batch_sessions(beacon.rt.engine)() as session, session.begin():
        batch = TrackerBatch(tracker, session, [])
        await batch.install()
        seen: list[str] = []
        batch._before_foreign_statement = lambda state: seen.append(type(state.statement).__name__)  # type: ignore[method-assign]
        await session.scalars(select(Contact).limit(1))
        batch.uninstall()
        await session.scalars(select(Contact).limit(1))
        assert seen == ["Select"] and BATCH_KEY not in session.info


async def test_a_batch_reads_the_stage_changes_it_made_from_itself(tmp_path: Path, sqlite_template: Path) -> None:
    """An owned contact crosses stages in the middle of a batch and keeps engaging: the alerts hook
    takes the stage change each event caused from the batch (TrackerBatch.record_stage_change, id
    and all), with no query per event for the contact's latest stage change (each was also a flush of
    everything queued). The alert records every move once, as the one-by-one tracker records them."""
    from sqlalchemy import event as sa_event

    world = await _world(tmp_path / "w.db", sqlite_template, batched=True, batch=50)
    stage_reads: list[str] = []

    def watch(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        sql = " ".join(statement.split()).lower()
        if sql.startswith("select") and "from stage_history" in sql and "max(stage_history.id)" not in sql:
            stage_reads.append(sql)  # anything but the batch preload's one query

    try:
        contact = world.contacts[0]  # owned by rep1
        kinds = ["download", "webinar_attended", "demo_request", "webinar_attended", "download", "webinar_attended", "download"]
        for n, kind in enumerate(kinds):
            await world.rt.events.contact_event(kind, contact, occurred_at=world.clock.now(), received_at=world.clock.now(),
                                                key=f"s{n}")
        sa_event.listen(world.rt.engine.sync_engine, "before_cursor_execute", watch)
        assert await world.rt.tracker.drain() == len(kinds)
        sa_event.remove(world.rt.engine.sync_engine, "before_cursor_execute", watch)
        snap = await world.snapshot()
    finally:
        await world.rt.stop()
    moves = [(r[1], r[2]) for r in snap["stages"] if r[0] == contact and r[3].startswith("rule:")]
    assert len(moves) >= 2, snap["stages"]  # crossed more than one stage within the batch
    details = [json.loads(r[6]) if isinstance(r[6], str) else r[6] for r in snap["alerts"] if r[1] == contact]
    recorded = [(s["from"], s["to"]) for d in details for s in d.get("stages") or []]
    assert sorted(recorded) == sorted(moves)
    assert all(isinstance(s["id"], int) for d in details for s in d.get("stages") or [])
    assert stage_reads == []


async def test_a_batch_of_forwards_inserts_them_and_binds_browsers_in_one_statement_each(beacon: Any, tmp_path: Path) -> None:
    """Four personal links, each opened first by its contact's browser (bound, its anonymous events
    re-flagged) and then by someone else's (a forward for the contact): the batch alternates re-flags
    and forward INSERTs, and writes them with one executemany each, not one per alternation."""
    from sqlalchemy import event as sa_event

    from tests.conftest import LIBRARY
    from tests.test_links import share

    async with beacon.rt.sessions() as session, session.begin():
        await import_library(session, LIBRARY, now=beacon.clock.now())
    links = [await beacon.rt.links.resolve((await share(beacon, SLUGS[0], contact=f"wmFwd{n}"))["token"]) for n in range(4)]
    for n, link in enumerate(links):
        for who in ("owner", "friend"):
            await beacon.rt.events.link_event("open", link, f"{who}-{n}-cookie-xxxxxxxxxxx", now=beacon.clock.now(),
                                              props={"gated": False, "unlocked": True, "outdated": False})
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    # One batch, whatever the machine's load: past its time budget a batch stops, and the next pass
    # would take the forwards this one made along with the opens it left.
    beacon.rt.tracker.max_batch_s = 1e9
    sa_event.listen(beacon.rt.engine.sync_engine, "before_cursor_execute", seen)
    try:
        assert await beacon.rt.tracker.drain() == 8  # the opens
    finally:
        sa_event.remove(beacon.rt.engine.sync_engine, "before_cursor_execute", seen)
    assert await beacon.rt.tracker.drain() == 4  # the forwards they made
    assert sum(s.startswith("INSERT INTO events") for s in statements) == 1
    assert sum(s.startswith("UPDATE events SET contact_id") and "visitor_id" in s for s in statements) == 1
    async with beacon.rt.sessions() as session:
        forwards = (await session.execute(text("SELECT contact_id FROM events WHERE type = 'forward' ORDER BY id"))).scalars().all()
        owners = (await session.execute(text("SELECT id FROM contacts WHERE external_userid LIKE 'wmFwd%' ORDER BY id"))).scalars().all()
    assert forwards == owners  # each contact credited with the friend its link reached


async def test_a_batch_the_database_fails_is_taken_again_not_done_one_by_one(beacon: Any,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The one-by-one fallback isolates an event that breaks a batch. When the database itself fails
    (here SQLite's lock, past the busy timeout, in the middle of the batch), it has nothing to isolate:
    the pass fails, nothing of it is kept, and the next pass does the whole batch once."""
    import logging
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from bot.models import ScoreEntry

    rt = beacon.rt
    async with rt.sessions() as session, session.begin():
        contact = Contact(external_userid="wmLocked", created_at=beacon.clock.now(), updated_at=beacon.clock.now())
        session.add(contact)
    for n in range(3):
        await rt.events.contact_event("webinar_attended", contact.id, occurred_at=beacon.clock.now(),
                                      received_at=beacon.clock.now(), key=f"locked-{n}")
    failing = [True]

    async def locked(session: Any, event: Any) -> None:
        if failing[0] and event.type == "webinar_attended":
            raise OperationalError("UPDATE contacts", {}, sqlite3.OperationalError("database is locked"))

    rt.tracker.hooks.append(locked)
    with caplog.at_level(logging.WARNING, logger="beacon.tracker"), pytest.raises(OperationalError):
        await rt.tracker.drain()
    assert rt.tracker.fallbacks == 0 and "one by one" not in caplog.text
    async with rt.read_sessions() as session:
        assert await session.scalar(select(func.count()).select_from(ScoreEntry)) == 0  # nothing of it kept
    failing[0] = False
    assert await rt.tracker.drain() == 3
    async with rt.read_sessions() as session:
        events = (await session.execute(text("SELECT processed FROM events"))).scalars().all()
        ledger = (await session.execute(select(ScoreEntry.event_id).where(ScoreEntry.event_id.is_not(None)))).scalars().all()
    assert events == [True, True, True] and len(ledger) == len(set(ledger)) > 0
