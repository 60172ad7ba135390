"""Scoring wired into the product: ledger, stages, hand-off, dormancy, tags, webhooks, rescoring."""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import hmac
import json
import random
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import event, insert, select

from bot.context import Context
from bot.models import Contact, Event, ScoreEntry, StageChange, Task
from bot.rescore import rescore_all
from bot.scheduler import run_job
from bot.scoring.jobs import decay_scores, mark_dormant_customers
from bot.scoring.stages import reach_of
from tests.test_links import AUTH, Browser, share

async def new_contact(beacon: Any, external: str, **fields: Any) -> int:
    async with beacon.rt.sessions() as session, session.begin():
        contact = Contact(external_userid=external, created_at=beacon.clock.now(), updated_at=beacon.clock.now(), **fields)
        session.add(contact)
        await session.flush()
        return contact.id


async def post_event(beacon: Any, contact: str, type_: str, at: dt.datetime | None = None, **props: Any) -> None:
    body = {"contact": contact, "type": type_, "at": at.isoformat() if at else None, "props": props}
    resp = await beacon.client.post("/api/events", json=body, headers=AUTH)
    assert resp.status == 202, await resp.text()


async def settle(beacon: Any) -> None:
    # Events answered 2xx are already committed (the API waits for the group commit).
    await beacon.rt.tracker.drain()
    await beacon.rt.outbox.drain()


async def contact_json(beacon: Any, external: str) -> dict[str, Any]:
    resp = await beacon.client.get(f"/api/contacts/{external}", headers=AUTH)
    assert resp.status == 200
    return await resp.json()


async def assert_reach_kept(beacon: Any) -> dict[int, int]:
    """Every contact's `reach` is what its stage and stage_history say: the furthest JOURNEY rank of its
    current stage and of every stage it moved to (what the dashboards' funnels count). Returns it."""
    async with beacon.rt.sessions() as session:
        contacts = (await session.execute(select(Contact.id, Contact.stage, Contact.reach))).all()
        moves = (await session.execute(select(StageChange.contact_id, StageChange.to_stage))).all()
    furthest = {cid: reach_of(stage) for cid, stage, _ in contacts}
    for cid, to_stage in moves:
        furthest[cid] = max(furthest[cid], reach_of(to_stage))
    assert {cid: reach for cid, _, reach in contacts} == furthest
    return furthest


async def test_reading_a_shared_item_scores_explains_and_hands_off(beacon: Any, lib: Any) -> None:  # noqa: F811
    s = await share(beacon, "solution-smart-factory-automotive", contact="wmHot")
    b = Browser(str(beacon.client.make_url("/")))
    try:
        _, html, _ = await b.get(f"/l/{s['token']}")
        for depth in (25, 50, 75, 100):
            assert await b.beacon(s["token"], html, t="read", d=depth) == 204
        assert await b.beacon(s["token"], html, t="cta", c="demo") == 204
        for _ in range(10):
            await b.get(f"/l/{s['token']}")  # ten reloads are not ten opens
    finally:
        await b.close()
    await settle(beacon)
    data = await contact_json(beacon, "wmHot")
    assert data["score"] == round(sum(e["points"] for e in data["score_breakdown"]), 2)
    rules = [e["rule"] for e in data["score_breakdown"]]
    assert rules.count("open") == 1
    assert "read_75_solution" in rules and "cta_demo" in rules
    assert any("预约演示" in e["reason"] for e in data["score_breakdown"])
    assert data["stage"] == "mql" and data["temperature"] == "hot"
    assert [(h["from"], h["to"]) for h in data["stage_history"]] == [("new", "nurturing"), ("nurturing", "mql")]
    assert data["owner"] == "rep1"  # the rep who shared
    async with beacon.rt.sessions() as session:
        tasks = (await session.scalars(select(Task).where(Task.owner_userid == "rep1"))).all()
    assert [(t.kind, t.priority) for t in tasks] == [("follow_up", 1)]
    texts = [m.payload for m in beacon.sim.state.messages_to("rep1")]
    assert any("MQL" in json.dumps(p, ensure_ascii=False) for p in texts)
    assert set((await assert_reach_kept(beacon)).values()) == {2}


async def test_mql_without_sharer_goes_to_least_loaded_rep(beacon: Any) -> None:
    await new_contact(beacon, "wmBusy", owner_userid="rep1")
    await new_contact(beacon, "wmLead")
    await post_event(beacon, "wmLead", "demo_request")
    await post_event(beacon, "wmLead", "webinar_attended")
    await settle(beacon)
    data = await contact_json(beacon, "wmLead")
    assert data["stage"] == "mql"
    assert data["owner"] == "rep2"  # rep1 already owns a contact


async def test_hand_offs_count_the_owners_once_and_go_round(beacon: Any) -> None:
    """Counting every contact's owner ran in the tracker's write transaction at each hand-off (60–100
    ms at a million contacts): now the counts are taken once per recount window on a read session and
    kept by this process's own hand-offs, so unowned leads still go round the team."""
    counts: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "GROUP BY contacts.owner_userid" in statement:
            counts.append(statement)

    await new_contact(beacon, "wmBusy", owner_userid="rep1")
    event.listen(beacon.rt.engine.sync_engine, "before_cursor_execute", count)
    try:
        owners = []
        for n in range(4):
            await new_contact(beacon, f"wmLead{n}")
            await post_event(beacon, f"wmLead{n}", "demo_request")
            await post_event(beacon, f"wmLead{n}", "webinar_attended")
            await settle(beacon)
            owners.append((await contact_json(beacon, f"wmLead{n}"))["owner"])
        assert len(counts) == 1
        assert owners == ["rep2", "rep1", "rep2", "rep1"]  # rep1 owned one already; then turn about
        async with beacon.rt.sessions() as session, session.begin():  # another process's hand-offs, say
            for n in range(3):
                session.add(Contact(external_userid=f"wmElse{n}", owner_userid="rep1", created_at=beacon.clock.now(),
                                    updated_at=beacon.clock.now()))  # fmt: skip
        beacon.clock.advance(seconds=beacon.rt.services["owner_loads"].recount_s)
        for n in (4, 5):
            await new_contact(beacon, f"wmLead{n}")
            await post_event(beacon, f"wmLead{n}", "demo_request")
            await post_event(beacon, f"wmLead{n}", "webinar_attended")
            await settle(beacon)
            owners.append((await contact_json(beacon, f"wmLead{n}"))["owner"])
        assert len(counts) == 2  # counted again once the window passed: rep1 owns 3 + 3, rep2 owns 2
        assert owners[4:] == ["rep2", "rep2"]
    finally:
        event.remove(beacon.rt.engine.sync_engine, "before_cursor_execute", count)


async def test_dormancy_moves_customers_in_chunks_of_their_own(beacon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The nightly dormancy job looks for candidates without the write lock, then moves them a chunk
    per transaction, with one history row per contact moved; a customer who paid in time stays."""
    import bot.lifecycle as lifecycle

    for n in range(5):
        await new_contact(beacon, f"wmOld{n}", owner_userid="rep2")
        await post_event(beacon, f"wmOld{n}", "payment", at=beacon.clock.now(), amount=1000)
    await settle(beacon)
    beacon.clock.advance(days=500)
    await new_contact(beacon, "wmPaying", owner_userid="rep2")
    await post_event(beacon, "wmPaying", "payment", at=beacon.clock.now(), amount=1000)
    await settle(beacon)
    beacon.clock.advance(days=49)  # the five are past the window, wmPaying is not
    monkeypatch.setattr(lifecycle, "DORMANT_CHUNK", 2)
    commits = []
    listener = lambda _conn: commits.append(1)  # noqa: E731
    event.listen(beacon.rt.engine.sync_engine, "commit", listener)
    try:
        assert await run_job(beacon.rt, "mark-dormant", mark_dormant_customers, "mark-dormant:chunks")
    finally:
        event.remove(beacon.rt.engine.sync_engine, "commit", listener)
    assert len(commits) >= 3  # the three chunks (2 + 2 + 1) committed one by one
    stages = {who: (await contact_json(beacon, who))["stage"] for who in [f"wmOld{n}" for n in range(5)] + ["wmPaying"]}
    assert stages == {**{f"wmOld{n}": "dormant" for n in range(5)}, "wmPaying": "customer"}
    async with beacon.rt.sessions() as session:
        moves = (await session.scalars(select(StageChange.contact_id).where(StageChange.by == "rule:dormancy"))).all()
    assert len(moves) == len(set(moves)) == 5
    assert await run_job(beacon.rt, "mark-dormant", mark_dormant_customers, "mark-dormant:again")  # nothing left to move
    async with beacon.rt.sessions() as session:
        assert len((await session.scalars(select(StageChange.contact_id).where(StageChange.by == "rule:dormancy"))).all()) == 5


@pytest.mark.parametrize("each_s", [0.0002, 1.0])
async def test_dormancy_chunks_follow_their_write_time(beacon: Any, monkeypatch: pytest.MonkeyPatch, each_s: float) -> None:
    """The first chunk is small (DORMANT_FIRST); quick transactions let the next ones grow to
    DORMANT_CHUNK, slow ones shrink them to one contact. Time is counted, not measured: each chunk
    "takes" half of `each_s`."""
    import types

    import bot.db
    import bot.lifecycle as lifecycle

    for n in range(9):
        await new_contact(beacon, f"wmOld{n}", owner_userid="rep2")
        await post_event(beacon, f"wmOld{n}", "payment", at=beacon.clock.now(), amount=1000)
    await settle(beacon)
    beacon.clock.advance(days=549)
    ticks = [0.0]

    def perf_counter() -> float:
        ticks[0] += each_s / 2  # read at a chunk's start and after its COMMIT
        return ticks[0]

    sizes: list[int] = []
    took = bot.db.Chunks.took
    monkeypatch.setattr(bot.db.Chunks, "took", lambda self, s, n: (sizes.append(n), took(self, s, n))[1])
    monkeypatch.setattr(lifecycle, "DORMANT_FIRST", 2)
    monkeypatch.setattr(lifecycle, "DORMANT_CHUNK", 4)
    monkeypatch.setattr(lifecycle, "time", types.SimpleNamespace(perf_counter=perf_counter))
    assert await run_job(beacon.rt, "mark-dormant", mark_dormant_customers, f"mark-dormant:{each_s}")
    assert sizes == ([2, 1, 1, 1, 1, 1, 1] if each_s > 0.1 else [2, 4])  # the last chunk is the job's own commit
    async with beacon.rt.sessions() as session:
        moves = (await session.scalars(select(StageChange.contact_id).where(StageChange.by == "rule:dormancy"))).all()
    assert len(moves) == len(set(moves)) == 9


async def test_dormant_customer_wakes_up_hot_with_urgent_call(beacon: Any) -> None:
    await new_contact(beacon, "wmOld", owner_userid="rep2", name="老客户")
    await post_event(beacon, "wmOld", "payment", at=beacon.clock.now(), amount=50000)
    await settle(beacon)
    assert (await contact_json(beacon, "wmOld"))["stage"] == "customer"
    beacon.clock.advance(days=549)
    assert await run_job(beacon.rt, "mark-dormant", mark_dormant_customers, "mark-dormant:x")
    assert (await contact_json(beacon, "wmOld"))["stage"] == "dormant"
    await post_event(beacon, "wmOld", "open")
    await settle(beacon)
    data = await contact_json(beacon, "wmOld")
    assert (data["stage"], data["temperature"]) == ("mql", "hot")
    assert data["stage_history"][-1]["by"] == "rule:dormant_wakeup"
    async with beacon.rt.sessions() as session:
        task = await session.scalar(select(Task).where(Task.kind == "dormant"))
    assert task.priority == 1 and task.owner_userid == "rep2" and "立即致电" in task.title
    assert any("沉睡客户" in json.dumps(m.payload, ensure_ascii=False) for m in beacon.sim.state.messages_to("rep2"))
    assert list((await assert_reach_kept(beacon)).values()) == [4]  # back at mql, once a customer


async def test_stage_and_temperature_mirrored_to_wecom_tags(beacon: Any) -> None:
    await new_contact(beacon, "wmTagged", owner_userid="rep1")
    beacon.sim.state.link_contact("rep1", "wmTagged")  # in WeCom, the customer is rep1's contact
    await post_event(beacon, "wmTagged", "webinar_attended")  # 20 points: nurturing, warm
    await settle(beacon)
    await post_event(beacon, "wmTagged", "demo_request")  # 50: mql, hot
    await settle(beacon)
    state = beacon.sim.state
    assert len(state.received_for("/cgi-bin/externalcontact/add_corp_tag")) == 1
    group = next(g for g in state.tag_groups.values() if g.group_name == "Beacon线索")
    names = {t.id: t.name for t in group.tags}
    marks = [r.payload for r in state.received_for("/cgi-bin/externalcontact/mark_tag")]
    assert [sorted(names[i] for i in m["add_tag"]) for m in marks] == [["温度·温", "阶段·可培养"], ["温度·热", "阶段·MQL"]]
    assert sorted(names[i] for i in marks[1]["remove_tag"]) == ["温度·温", "阶段·可培养"]
    assert all(m["userid"] == "rep1" and m["external_userid"] == "wmTagged" for m in marks)


async def test_manual_stage_move_and_csv_export(beacon: Any) -> None:
    await new_contact(beacon, "wmManual", name="刘总", company="某某电子")
    url = "/api/contacts/wmManual/stage"
    assert (await beacon.client.post(url, json={"stage": "sql", "by": "rep1"}, headers=AUTH)).status == 400
    assert (await beacon.client.post(url, json={"stage": "won", "by": "rep1", "reason": "x"}, headers=AUTH)).status == 400
    assert (await beacon.client.post(url, json={"stage": "sql", "by": "ghost", "reason": "x"}, headers=AUTH)).status == 404
    resp = await beacon.client.post(url, json={"stage": "sql", "by": "rep1", "reason": "客户确认了预算"}, headers=AUTH)
    assert resp.status == 200
    history = (await resp.json())["stage_history"]
    assert history == [{"from": "new", "to": "sql", "by": "rep1", "reason": "客户确认了预算", "at": history[0]["at"]}]
    csv_resp = await beacon.client.get("/api/contacts.csv", headers=AUTH)
    text = (await csv_resp.read()).decode("utf-8-sig")
    lines = text.strip().splitlines()
    assert lines[0].startswith("external_userid,name,company")
    assert any(line.startswith("wmManual,刘总,某某电子") and ",sql," in line for line in lines[1:])
    resp = await beacon.client.post(url, json={"stage": "invalid", "by": "rep1", "reason": "项目取消"}, headers=AUTH)
    assert resp.status == 200 and (await resp.json())["stage"] == "invalid"
    assert list((await assert_reach_kept(beacon)).values()) == [3]  # invalid now, but it got as far as sql


async def test_region_picks_the_scoring_model(aiohttp_client: Any, db_url: str, sim: Any, clock: Any) -> None:
    from bot.app import RUNTIME, create_app
    from tests.conftest import make_settings

    models = [
        {"name": "default", "regions": []},
        {"name": "south", "regions": ["华南"], "behavior": [{"name": "call", "event": "call", "points": 25}]},
    ]
    settings = make_settings(db_url, api_base=sim.url, scoring={"default_model": "default", "models": models})
    client = await aiohttp_client(create_app(settings, clock=clock, background=False))
    rt = client.app[RUNTIME]

    class B:
        pass

    b = B()
    b.rt, b.client, b.clock = rt, client, clock
    await new_contact(b, "wmSouth", region="华南")
    await new_contact(b, "wmNorth", region="华北")
    for who in ("wmSouth", "wmNorth"):
        await post_event(b, who, "call")
    await settle(b)
    south, north = await contact_json(b, "wmSouth"), await contact_json(b, "wmNorth")
    assert [(e["model"], e["points"]) for e in south["score_breakdown"]] == [("south", 25.0)]
    assert [(e["model"], e["points"]) for e in north["score_breakdown"]] == [("default", 10.0)]


async def test_webhook_on_stage_change_is_signed_and_retried(aiohttp_server: Any, db_url: str, sim: Any, clock: Any, aiohttp_client: Any) -> None:
    from bot.app import RUNTIME, create_app
    from tests.conftest import make_settings

    received: list[tuple[dict[str, str], bytes]] = []
    answers = [500, 200, 200, 200]

    async def crm(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=answers[len(received) - 1])

    crm_app = web.Application()
    crm_app.router.add_post("/hook", crm)
    server = await aiohttp_server(crm_app)
    settings = make_settings(db_url, api_base=sim.url, lifecycle={"webhook_urls": [str(server.make_url("/hook"))], "webhook_secret": "s3cret"})
    client = await aiohttp_client(create_app(settings, clock=clock, background=False))

    class B:
        pass

    b = B()
    b.rt, b.client, b.clock = client.app[RUNTIME], client, clock
    await new_contact(b, "wmCrm")
    await post_event(b, "wmCrm", "webinar_attended")
    await settle(b)
    assert len(received) == 1  # answered 500: to be retried
    clock.advance(seconds=5)
    await b.rt.outbox.drain()
    assert len(received) == 2
    headers, body = received[1]
    expected = hmac.new(b"s3cret", headers["X-Beacon-Timestamp"].encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["X-Beacon-Signature"] == f"sha256={expected}"
    payload = json.loads(body)
    assert (payload["event"], payload["from"], payload["to"]) == ("stage_changed", "new", "nurturing")
    assert headers["X-Beacon-Delivery"] == received[0][0]["X-Beacon-Delivery"]  # same delivery, retried


async def contact_ids(beacon: Any, externals: list[str]) -> set[int]:
    async with beacon.rt.sessions() as session:
        return set((await session.scalars(select(Contact.id).where(Contact.external_userid.in_(externals)))).all())


async def book_holds(beacon: Any, ids: set[int] | None) -> None:
    """Before a decay run, after the clock moved on (the tracker lease with it): this process is the
    tracker again and its ScoreBook holds `ids` (their state replayed as the tracker's warm-up does),
    or, with None, holds nothing (as in a process that is not the tracker)."""
    await beacon.rt.tracker.drain()  # takes the lease again, which forgets the book
    service = beacon.rt.services["scoring"]
    if ids is None:
        service.forget()
        return
    async with beacon.rt.read_sessions() as session:
        await service.warm(session, ids)
    assert all(cid in service.book for cid in ids)


@pytest.mark.parametrize(
    "seed,chunk,cold",
    [(1, None, False), (2, 1, False), (3, None, True), (4, 1, True)],
    ids=["decay-in-one-chunk", "decay-a-contact-per-chunk", "decay-from-the-ledger", "decay-from-the-ledger-a-contact-per-chunk"],
)
async def test_rescore_equals_real_time(beacon: Any, seed: int, chunk: int | None, cold: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger the tracker and the nightly decay write is the one a replay of the event log makes.
    Decay takes two paths: through the ScoreBook for contacts this process scored, and from the ledger's
    aggregates for the others (`cold`: the book forgotten, as in a process that is not the tracker)."""
    import bot.scoring.jobs as jobs

    if chunk is not None:  # the nightly decay's chunks and the rescore's writes as small as they get: the same ledger
        import bot.rescore

        monkeypatch.setattr(jobs, "CHUNK", chunk)
        monkeypatch.setattr(jobs, "PG_CHUNK", chunk)
        monkeypatch.setattr(bot.rescore, "WRITE_ROWS", chunk)
    rng = random.Random(seed)
    people = [f"wmR{seed}{i}" for i in range(4)]
    for who in people:
        await new_contact(beacon, who, phone="13800000000" if rng.random() < 0.5 else None, title=rng.choice(["", "CEO", "工程师"]))
    types = ["open", "download", "cta", "form_submit", "forward", "message", "webinar_attended", "call", "unsubscribe"]
    for _ in range(40):
        beacon.clock.advance(hours=rng.choice([1, 5, 20, 24 * 9, 24 * 40]))
        who = rng.choice(people)
        kind = rng.choice(types)
        props = {"cta": rng.choice(["demo", "contact"])} if kind == "cta" else {}
        await post_event(beacon, who, kind, at=beacon.clock.now(), **props)
        await settle(beacon)
    beacon.clock.advance(days=75)
    await book_holds(beacon, None if cold else await contact_ids(beacon, people))
    assert await run_job(beacon.rt, "decay-scores", decay_scores, "decay:final")

    async def snapshot() -> tuple[list[tuple[Any, ...]], dict[str, float]]:
        async with beacon.rt.sessions() as session:
            rows = (await session.execute(
                select(Contact.external_userid, ScoreEntry.rule, ScoreEntry.points, ScoreEntry.event_id)
                .join(Contact, Contact.id == ScoreEntry.contact_id).order_by(Contact.external_userid, ScoreEntry.id)
            )).all()
            scores = {c.external_userid: c.score for c in (await session.scalars(select(Contact))).all()}
        return sorted(tuple(r) for r in rows), scores

    live_entries, live_scores = await snapshot()
    assert any(rule == "decay" for _, rule, _, _ in live_entries)
    report = await rescore_all(beacon.rt.settings, clock=beacon.clock)
    replay_entries, replay_scores = await snapshot()

    a, b = collections.Counter(live_entries), collections.Counter(replay_entries)
    assert (a - b, b - a) == ({}, {})
    assert replay_scores == live_scores
    assert report.contacts == len(people) and report.changed == []


async def test_rescore_moves_stages_and_touches_only_changed_contacts(beacon: Any) -> None:
    """Events stored as processed but never scored (an import, or rules that gave them nothing): the
    replay writes their ledger, moves each contact forward by its new score with a history row,
    sets its temperature, and leaves a contact whose numbers stay the same untouched."""
    old = beacon.clock.now()
    hot = await new_contact(beacon, "wmImported")
    quiet = await new_contact(beacon, "wmUnchanged")
    beacon.clock.advance(days=3)
    async with beacon.rt.sessions() as session, session.begin():
        for n, kind in enumerate(("webinar_attended", "demo_request", "call")):
            at = beacon.clock.now() - dt.timedelta(hours=3 - n)
            session.add(Event(type=kind, contact_id=hot, occurred_at=at, received_at=at, props={}, processed=True))
    beacon.clock.advance(hours=1)

    report = await rescore_all(beacon.rt.settings, clock=beacon.clock)

    assert (report.contacts, report.events, report.stage_moves, report.changed) == (2, 3, 1, [hot])
    data = await contact_json(beacon, "wmImported")
    assert data["score"] == round(sum(e["points"] for e in data["score_breakdown"]), 2) >= 50
    assert (data["stage"], data["temperature"]) == ("mql", "hot")
    assert [(h["from"], h["to"]) for h in data["stage_history"]] == [("new", "mql")]
    async with beacon.rt.sessions() as session:
        move = await session.scalar(select(StageChange).where(StageChange.contact_id == hot))
        touched = dict((await session.execute(select(Contact.id, Contact.updated_at))).all())
    assert (move.by, move.reason, move.at) == ("rule:rescore", f"重新评分 {data['score']:g}", beacon.clock.now())
    assert touched == {hot: beacon.clock.now(), quiet: old}
    # Again: the same ledger, nothing changed, no second move.
    assert await assert_reach_kept(beacon) == {hot: 2, quiet: 0}
    again = await rescore_all(beacon.rt.settings, clock=beacon.clock)
    assert (again.stage_moves, again.changed) == (0, [])
    assert (await contact_json(beacon, "wmImported"))["score"] == data["score"]


async def test_rescore_reads_events_as_the_orm_does(beacon: Any) -> None:
    """The rescore reads the event log past SQLAlchemy's result processing (bot.rescore._EVENTS): each
    event's time and props come out as the ORM gives them, on either database; props read the same
    from several events are one read-only object (a scorer cannot change another event's props)."""
    from types import MappingProxyType

    from bot.rescore import _EVENTS, _props_reader, _scored

    who = await new_contact(beacon, "wmReader")
    shanghai = dt.timezone(dt.timedelta(hours=8))
    shapes = [{}, None, {"depth": 75}, {"depth": 75}, {"cta": "demo", "标签": ["白皮书", 2], "n": {"x": 1.5}}, {"seconds": 12}]
    async with beacon.rt.sessions() as session, session.begin():
        for n, props in enumerate(shapes):
            at = (beacon.clock.now() + dt.timedelta(minutes=n, microseconds=n * 7)).astimezone(shanghai if n % 2 else dt.timezone.utc)
            session.add(Event(type="read", contact_id=who, occurred_at=at, received_at=at, props=props, processed=True))
    async with beacon.rt.sessions() as session:
        orm = (await session.scalars(select(Event).where(Event.contact_id == who).order_by(Event.occurred_at, Event.id))).all()
        rows = (await session.execute(_EVENTS.where(Event.contact_id == who))).all()
    props = _props_reader()
    read = [_scored(row, {}, props) for row in rows]
    assert [(e.id, e.at, dict(e.props)) for e in read] == [(e.id, e.occurred_at, e.props or {}) for e in orm]
    assert all(e.at.tzinfo is dt.timezone.utc and isinstance(e.props, MappingProxyType) for e in read)
    assert read[2].props is read[3].props
    with pytest.raises(TypeError):
        read[2].props["depth"] = 100  # type: ignore[index]


async def test_a_rescores_ledger_rows_go_in_as_the_row_by_row_insert_puts_them(db_url: str) -> None:
    """bot.ledger.insert_merged_rows (on PostgreSQL by COPY and one INSERT … SELECT): the stored rows
    equal those of the statement every other writer uses, ids in the rows' order, a decay row whose
    spell already has a row adds to it, and twice in one transaction writes each row once."""
    from bot.db import create_engine
    from bot.ledger import insert_merged_rows, ledger_insert
    from tests.conftest import make_settings

    engine = create_engine(make_settings(db_url).database)
    at = dt.datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=dt.timezone.utc)
    spell = dt.date(2026, 2, 20)

    def rows(contact: int) -> list[dict[str, Any]]:
        return [
            {"contact_id": contact, "model": "default", "rule": "profile_title", "points": 10.0, "event_id": None,
             "reason": "职位 CEO +10", "at": at.astimezone(dt.timezone(dt.timedelta(hours=8))), "quiet_since": None},
            {"contact_id": contact, "model": "default", "rule": "decay", "points": -1.25, "event_id": None,
             "reason": "连续10天无互动", "at": at + dt.timedelta(days=1), "quiet_since": spell},
            {"contact_id": contact, "model": "east", "rule": "open", "points": 5.5, "event_id": None, "reason": "打开 +5.5",
             "at": at + dt.timedelta(microseconds=1), "quiet_since": None},
        ]

    try:
        async with engine.begin() as conn:
            ids = [(await conn.execute(insert(Contact).values(external_userid=f"wmL{n}", created_at=at, updated_at=at))).inserted_primary_key[0]
                   for n in range(4)]
            spell_row = {**rows(0)[1], "points": -0.5, "reason": "earlier tick", "at": at}
            await conn.execute(ledger_insert(conn.dialect.name), [{**spell_row, "contact_id": ids[0]}, {**spell_row, "contact_id": ids[2]}])
            await conn.execute(ledger_insert(conn.dialect.name), rows(ids[0]) + rows(ids[1]))  # one by one
            await insert_merged_rows(conn, rows(ids[2]) + rows(ids[3]))
            await insert_merged_rows(conn, [])
            await insert_merged_rows(conn, [{**rows(ids[3])[0], "rule": "second_call"}])  # the same transaction again
        async with engine.connect() as conn:
            stored = (await conn.execute(select(ScoreEntry).order_by(ScoreEntry.id))).all()
    finally:
        await engine.dispose()
    by_contact: dict[int, list[tuple[Any, ...]]] = collections.defaultdict(list)
    for row in stored:
        by_contact[row.contact_id].append((row.model, row.rule, row.points, row.event_id, row.reason, row.at, row.quiet_since))
    assert by_contact[ids[2]] == by_contact[ids[0]]  # the merged spell: -0.5 + -1.25, the later tick's reason and time
    assert by_contact[ids[3]] == by_contact[ids[1]] + [by_contact[ids[1]][0][:1] + ("second_call",) + by_contact[ids[1]][0][2:]]
    assert [r[1:3] for r in by_contact[ids[2]]] == [("decay", -1.75), ("profile_title", 10.0), ("open", 5.5)]
    assert by_contact[ids[2]][0][4:] == ("连续10天无互动", at + dt.timedelta(days=1), spell)
    assert by_contact[ids[3]][2][5] == at + dt.timedelta(microseconds=1)


async def test_bulk_score_updates_set_each_row_and_only_those(db_url: str) -> None:
    """bot.batch.BulkUpdate (decay's and rescore's contact updates): each row's values land on its
    contact and no other; on PostgreSQL in one UPDATE over arrays, elsewhere (and when the rows' shared
    column differs) one executemany."""
    from bot.batch import BulkUpdate
    from bot.db import create_engine
    from tests.conftest import make_settings

    engine = create_engine(make_settings(db_url).database)
    at = dt.datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=dt.timezone.utc)
    later = at + dt.timedelta(hours=1)
    update = BulkUpdate(Contact.__table__, "id", ("score", "temperature", "stage"), same=("updated_at",))
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        async with engine.begin() as conn:
            ids = [(await conn.execute(insert(Contact).values(external_userid=f"wmU{n}", created_at=at, updated_at=at, score=1.0))).inserted_primary_key[0]
                   for n in range(5)]
            await update.run(conn, [])
            await update.run(conn, [{"b_id": ids[n], "b_score": 10.5 * n, "b_temperature": "warm", "b_stage": "mql", "b_updated_at": later}
                                    for n in (3, 0, 2)])
            one_statement = len(statements)
            await update.run(conn, [{"b_id": ids[4], "b_score": 7.25, "b_temperature": "hot", "b_stage": "sql", "b_updated_at": later},
                                    {"b_id": ids[1], "b_score": 3.0, "b_temperature": "cold", "b_stage": "new", "b_updated_at": at + dt.timedelta(days=1)}])
        async with engine.connect() as conn:
            rows = {r.id: (r.score, r.temperature, r.stage, r.updated_at) for r in (await conn.execute(select(Contact))).all()}
    finally:
        await engine.dispose()
    assert rows == {
        ids[0]: (0.0, "warm", "mql", later), ids[1]: (3.0, "cold", "new", at + dt.timedelta(days=1)), ids[2]: (21.0, "warm", "mql", later),
        ids[3]: (31.5, "warm", "mql", later), ids[4]: (7.25, "hot", "sql", later),
    }
    if db_url.startswith("postgresql"):
        assert one_statement == 1 and "unnest" in statements[0]
        assert len(statements) == 2 and "unnest" not in statements[1]  # two different times: one executemany
    else:
        assert all("unnest" not in sql for sql in statements)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_rescore_on_sqlite_replays_outside_the_write_lock_and_again_for_contacts_changed_meanwhile(
    beacon: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite has one write lock, which link opens and callbacks wait for: the rescore replays with no
    transaction open and writes afterwards, checking each contact is as it was read. Here, between
    the replay and the write, another connection takes the lock at once, and the tracker scores a new
    event of one contact: that contact is replayed again with its new event, the other is written,
    nothing twice, and a second rescore changes nothing."""
    import sqlite3

    import bot.rescore as rescore

    busy = await new_contact(beacon, "wmBusy")
    await new_contact(beacon, "wmQuiet")
    for who in ("wmBusy", "wmQuiet"):
        await post_event(beacon, who, "download", at=beacon.clock.now())
    await settle(beacon)
    beacon.clock.advance(hours=2)
    write = rescore._Run._write_sqlite
    writes: list[list[int]] = []

    async def others_first(self: Any, outcomes: dict[int, Any]) -> list[int]:
        if not writes:
            path = beacon.rt.settings.database.url.split("///", 1)[1]
            other = sqlite3.connect(path, timeout=0.05, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # "database is locked" if the replay held the lock
            other.execute("COMMIT")
            other.close()
            await post_event(beacon, "wmBusy", "cta", at=beacon.clock.now(), cta="demo")
            await settle(beacon)
        changed = await write(self, outcomes)
        writes.append(sorted(outcomes))
        return changed

    monkeypatch.setattr(rescore._Run, "_write_sqlite", others_first)
    report = await rescore_all(beacon.rt.settings, clock=beacon.clock)

    assert len(writes) == 2 and writes[1] == [busy]  # the second round: the changed contact alone
    assert report.contacts == 2 and report.replayed == 1
    assert report.summary().endswith("(1 replayed again: scored meanwhile)")
    data = await contact_json(beacon, "wmBusy")
    assert any("演示" in e["reason"] or "demo" in e["reason"].lower() for e in data["score_breakdown"]), data["score_breakdown"]
    assert data["score"] == round(sum(e["points"] for e in data["score_breakdown"]), 2)
    monkeypatch.setattr(rescore._Run, "_write_sqlite", write)
    again = await rescore_all(beacon.rt.settings, clock=beacon.clock)
    assert again.changed == [] and again.contacts == 2 and again.replayed == 0 and "replayed" not in again.summary()


async def test_decay_chunks_are_sized_for_each_database(beacon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite: chunks sized to the one write lock (CHUNK, then by time). PostgreSQL, which locks rows:
    fewer, larger chunks (PG_CHUNK), each read being a pass over the ledger for its contacts."""
    import bot.scoring.jobs as jobs

    monkeypatch.setattr(jobs, "CHUNK", 2)
    monkeypatch.setattr(jobs, "PG_CHUNK", 5)
    for n in range(10):
        await new_contact(beacon, f"wmChunk{n}")
        await post_event(beacon, f"wmChunk{n}", "webinar_attended")
    await settle(beacon)
    beacon.clock.advance(days=40)
    reads: list[str] = []
    engine = (beacon.rt.background_engine or beacon.rt.engine).sync_engine
    record = lambda _c, _cur, statement, *_a: reads.append(statement) if "WITH chunk AS" in statement else None  # noqa: E731
    event.listen(engine, "before_cursor_execute", record)
    try:
        assert await run_job(beacon.rt, "decay-scores", decay_scores, "decay-scores:chunks")
    finally:
        event.remove(engine, "before_cursor_execute", record)
    sqlite = beacon.rt.engine.dialect.name == "sqlite"
    assert len(reads) == (10 // 2 if sqlite else 10 // 5) + 1  # and one that finds nobody left
    scores = [(await contact_json(beacon, f"wmChunk{n}"))["score_breakdown"][-1]["rule"] for n in range(10)]
    assert scores == ["decay"] * 10


@pytest.mark.parametrize("cold", [False, True], ids=["through-the-book", "from-the-ledger"])
async def test_decay_leaves_a_contact_scored_meanwhile_for_the_next_run(beacon: Any, cold: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decay reads a chunk, computes its ticks, then writes them in a transaction of its own. A contact
    whose score changed in between (another process scored it: its tracker decays it as it scores) is
    left out; the others are written, and the next run decays the one left out."""
    import bot.scoring.jobs as jobs

    ids = {who: await new_contact(beacon, who) for who in ("wmQuiet1", "wmQuiet2")}
    for who in ids:
        await post_event(beacon, who, "download", at=beacon.clock.now())
    await settle(beacon)
    beacon.clock.advance(days=60)
    await book_holds(beacon, None if cold else set(ids.values()))
    read = jobs._read_chunk

    async def read_then_change(*args: Any, **kwargs: Any) -> Any:
        found = await read(*args, **kwargs)
        async with beacon.rt.sessions() as session, session.begin():  # what the other process's scoring commits
            contact = await session.get(Contact, ids["wmQuiet2"])
            contact.score = 7.5
            session.add(ScoreEntry(contact_id=contact.id, model="default", rule="elsewhere", points=-0.5,
                                   reason="scored elsewhere", at=beacon.clock.now()))
        return found

    monkeypatch.setattr(jobs, "_read_chunk", read_then_change)
    assert await run_job(beacon.rt, "decay-scores", decay_scores, "decay:1")

    async def decay_rows(external: str) -> list[float]:
        async with beacon.rt.sessions() as session:
            return list((await session.scalars(
                select(ScoreEntry.points).where(ScoreEntry.contact_id == ids[external], ScoreEntry.rule == "decay")
            )).all())

    async def score(external: str) -> float:
        async with beacon.rt.sessions() as session:
            return (await session.get(Contact, ids[external])).score  # type: ignore[union-attr]

    assert await decay_rows("wmQuiet1") and await score("wmQuiet1") < 8.0
    assert await decay_rows("wmQuiet2") == [] and await score("wmQuiet2") == 7.5
    monkeypatch.setattr(jobs, "_read_chunk", read)
    assert await run_job(beacon.rt, "decay-scores", decay_scores, "decay:2")
    assert await decay_rows("wmQuiet2") and await score("wmQuiet2") < 7.5


@pytest.mark.parametrize("cold", [False, True], ids=["through-the-book", "from-the-ledger"])
async def test_decay_keeps_one_ledger_row_per_quiet_spell(beacon: Any, cold: bool) -> None:
    """Inactivity decay is one ledger row per quiet spell, not one per day: each night's tick and the
    tracker's lazy decay at a non-engagement event add to the spell's row; an engagement starts a new
    spell. The rows sum to the score, and a rescore writes the same rows."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(beacon.rt.settings.scoring.models[0].timezone)
    cid = await new_contact(beacon, "wmSpell")
    first = beacon.clock.now()
    await post_event(beacon, "wmSpell", "download", at=first)
    await settle(beacon)

    async def decay_rows() -> list[tuple[Any, ...]]:
        async with beacon.rt.sessions() as session:
            return [tuple(r) for r in (await session.execute(
                select(ScoreEntry.quiet_since, ScoreEntry.points, ScoreEntry.reason, ScoreEntry.at)
                .where(ScoreEntry.contact_id == cid, ScoreEntry.rule == "decay").order_by(ScoreEntry.id)
            )).all()]

    async def nightly(key: str) -> None:
        await book_holds(beacon, None if cold else {cid})
        assert await run_job(beacon.rt, "decay-scores", decay_scores, key)

    def midnight() -> dt.datetime:
        return dt.datetime.combine(beacon.clock.now().astimezone(zone).date(), dt.time(), tzinfo=zone)

    engaged = first.astimezone(zone).date()
    beacon.clock.advance(days=35)
    await nightly("decay:1")
    [(since, points, reason, at)] = await decay_rows()
    assert (since, at) == (engaged, midnight()) and points < 0
    assert reason == f"连续{(midnight().date() - engaged).days}天无互动，行为分逐日衰减"
    for night in (2, 3):
        beacon.clock.advance(days=1)
        await nightly(f"decay:{night}")
    [(since, more, reason, at)] = await decay_rows()
    assert since == engaged and more < points and at == midnight() and reason.startswith(f"连续{(midnight().date() - engaged).days}天")

    beacon.clock.advance(days=2)  # not engagement: the tracker decays up to it, into the same spell
    await post_event(beacon, "wmSpell", "unsubscribe", at=beacon.clock.now())
    await settle(beacon)
    [(since, most, _reason, at)] = await decay_rows()
    assert since == engaged and most < more and at == midnight()

    beacon.clock.advance(days=1)
    await post_event(beacon, "wmSpell", "open", at=beacon.clock.now())  # the day's tick, then the spell ends
    await settle(beacon)
    [ended] = await decay_rows()
    assert ended[0] == engaged and ended[1] < most and ended[3] == midnight()
    reengaged = beacon.clock.now().astimezone(zone).date()
    beacon.clock.advance(days=40)
    await nightly("decay:4")
    spells = await decay_rows()
    assert [s[0] for s in spells] == [engaged, reengaged] and spells[0] == ended

    async def ledger() -> tuple[list[tuple[Any, ...]], float]:
        async with beacon.rt.sessions() as session:
            rows = sorted(tuple(r) for r in (await session.execute(
                select(ScoreEntry.rule, ScoreEntry.points, ScoreEntry.event_id, ScoreEntry.quiet_since, ScoreEntry.reason)
                .where(ScoreEntry.contact_id == cid))).all())
            return rows, (await session.get(Contact, cid)).score  # type: ignore[union-attr]

    rows, score = await ledger()
    assert round(sum(r[1] for r in rows), 2) == score
    assert (await contact_json(beacon, "wmSpell"))["score"] == score
    await rescore_all(beacon.rt.settings, clock=beacon.clock)
    assert await ledger() == (rows, score)
