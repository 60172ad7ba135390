"""The hot queries use their indexes, on PostgreSQL (EXPLAIN) and on SQLite (EXPLAIN QUERY PLAN).

The tables are filled with a few thousand rows shaped like production (most inbox and outbox rows done,
most events processed, most tasks closed, most alerts sent) and analyzed, so the planner's choice means
something. On PostgreSQL sequential scans are also switched off (`enable_seqscan = off`): a query that
no index can serve still shows a Seq Scan then, and that is what fails. Each query must use the named
index (or, for a unique column, its unique index) and never scan the whole table.

The statements are the product's own where the product exposes them (inbox/outbox claims, the
tracker's unprocessed events) and otherwise copies of the code's queries, named after where they live.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, create_async_engine

from bot.alerts import latest_stage_changes_of, open_alerts_of
from bot.channels import ACTIVITY_BY_CHANNEL, CONTACTS_BY_CHANNEL
from bot.contact_list import ContactFilter, contact_table
from bot.leaderboards import content_leaderboard, rep_leaderboard, sop_compliance
from bot.leases import due_rows
from bot.models import (
    Alert, Channel, Contact, ContentItem, ContentVersion, Enrollment, Event, InboxItem, OutboxItem, Playbook, Rep, ScoreEntry, Share,
    StageChange, Task,
)
from bot.reports import DateRange, Scope, channel_funnel, content_funnel, stage_funnel
from bot.scoring.jobs import CHUNK_READ
from bot.shares import LINK_BY_TOKEN
from bot.sop.triggers import enrollments_of
from bot.tracker import OLDEST_UNPROCESSED, unprocessed_events
from tests.conftest import T0

N_CONTACTS = 2000
N_EVENTS = 20000
N_WORK = 5000  # inbox, outbox, tasks, alerts rows each
REPS = [f"rep{n:02d}" for n in range(20)]


@dataclass
class Plan:
    """What a plan touched: index names used, tables read in full, and the raw plan for messages."""

    indexes: set[str]
    full_scans: set[str]
    raw: str


def _pg_plan(rows: list[Any]) -> Plan:
    doc = rows[0][0]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    indexes: set[str] = set()
    scans: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        if "Index Name" in node:
            indexes.add(node["Index Name"])
        if node.get("Node Type") == "Seq Scan":
            scans.add(node["Relation Name"])
        for child in node.get("Plans", []):
            walk(child)

    walk(doc[0]["Plan"])
    return Plan(indexes, scans, json.dumps(doc[0]["Plan"], indent=1))


def _sqlite_plan(rows: list[Any]) -> Plan:
    indexes: set[str] = set()
    scans: set[str] = set()
    for row in rows:
        detail = row[-1]
        words = detail.split()
        if "INDEX" in words:
            indexes.add(words[words.index("INDEX") + 1])
        if "PRIMARY KEY" in detail or "INTEGER PRIMARY KEY" in detail:
            indexes.add("PRIMARY KEY")
        if words[:1] == ["SCAN"] and "INDEX" not in words and "PRIMARY" not in words:
            scans.add(words[1])
    return Plan(indexes, scans, "\n".join(str(r[-1]) for r in rows))


async def explain(conn: AsyncConnection, statement: Any) -> Plan:
    """EXPLAIN the statement as the dialect renders it, with its values inlined (as a custom plan sees them)."""
    sql = str(statement.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    if conn.dialect.name == "postgresql":
        return _pg_plan((await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}")).all())
    return _sqlite_plan((await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")).all())


def _unique_index(conn: AsyncConnection, table: str, column: str) -> str:
    """The name of a unique column's index: the constraint's on PostgreSQL, SQLite's automatic one."""
    return f"uq_{table}_{column}" if conn.dialect.name == "postgresql" else f"sqlite_autoindex_{table}_"


async def _fill(conn: AsyncConnection) -> dict[str, Any]:
    """Production-shaped rows: returns some keys the queries look up."""
    rng = random.Random(9)
    now = T0
    await conn.execute(insert(Rep), [{"userid": r, "name": r} for r in REPS])
    await conn.execute(insert(ContentItem), [{"id": 1, "slug": "item", "title": "Item", "kind": "solution", "stage": "decision"}])
    await conn.execute(insert(ContentVersion), [{"id": 1, "item_id": 1, "version": 1, "title": "Item", "body_md": "x", "body_hash": "h"}])
    await conn.execute(insert(Channel), [{"id": n, "name": f"channel {n}", "state": f"ch{n}", "created_at": now} for n in range(1, 6)])
    await conn.execute(insert(Contact), [
        {"id": n, "external_userid": f"wm{n:06d}", "owner_userid": REPS[n % len(REPS)], "created_at": now, "updated_at": now,
         "channel_id": n % 5 + 1 if n % 4 == 0 else None}
        for n in range(1, N_CONTACTS + 1)
    ])
    await conn.execute(insert(Share), [
        {"id": n, "token": f"tok{n:08d}", "item_id": 1, "version_id": 1, "rep_userid": REPS[n % len(REPS)], "contact_id": n,
         "created_at": now}
        for n in range(1, N_CONTACTS + 1)
    ])
    await conn.execute(insert(Event), [
        {"id": n, "type": rng.choice(["open", "read", "dwell"]), "contact_id": rng.randint(1, N_CONTACTS), "share_id": None,
         "item_id": 1, "rep_userid": REPS[n % len(REPS)], "props": {}, "occurred_at": now - dt.timedelta(minutes=N_EVENTS - n),
         "received_at": now, "processed": n <= N_EVENTS - 50}
        for n in range(1, N_EVENTS + 1)
    ])
    await conn.execute(insert(Event), [  # contacts a channel brought: few of all events carry a channel
        {"id": N_EVENTS + n, "type": "contact_added", "contact_id": 4 * n, "channel_id": n % 5 + 1, "props": {},
         "occurred_at": now - dt.timedelta(days=30), "received_at": now, "processed": True}
        for n in range(1, N_CONTACTS // 4 + 1)
    ])
    await conn.execute(insert(ScoreEntry), [
        {"contact_id": rng.randint(1, N_CONTACTS), "model": "default", "rule": "open", "points": 3.0, "event_id": None,
         "reason": "", "at": now}
        for _ in range(N_EVENTS // 2)
    ])
    work_rows = [
        {"status": "done" if n > 20 else "pending", "next_attempt_at": now - dt.timedelta(seconds=n), "received_at": now}
        for n in range(1, N_WORK + 1)
    ]
    await conn.execute(insert(InboxItem), [
        {**row, "dedupe_key": f"msg:{n}", "kind": "text", "body": "<xml/>"} for n, row in enumerate(work_rows)
    ])
    await conn.execute(insert(OutboxItem), [
        {"idempotency_key": f"out:{n}", "path": "/cgi-bin/message/send", "payload": {},
         "status": "sent" if n > 20 else "pending", "next_attempt_at": now, "created_at": now}
        for n in range(1, N_WORK + 1)
    ])
    await conn.execute(insert(Task), [
        {"id": n, "kind": "sop" if n % 7 == 0 else "follow_up", "title": "t", "owner_userid": REPS[n % len(REPS)], "contact_id": (n % N_CONTACTS) + 1,
         "status": "open" if n % 10 == 0 else "done", "due_at": now + dt.timedelta(hours=n % 48),
         "snoozed_until": now - dt.timedelta(minutes=1) if n % 500 == 0 else None, "created_at": now}
        for n in range(1, N_WORK + 1)
    ])
    await conn.execute(insert(Alert), [
        {"rep_userid": REPS[n % len(REPS)], "contact_id": (n % N_CONTACTS) + 1, "task_id": n, "kind": "engagement",
         "status": "pending" if n % 250 == 0 else "sent", "detail": {}, "first_event_at": now - dt.timedelta(hours=1),
         "send_after": now - dt.timedelta(hours=1) + dt.timedelta(seconds=60 if n % 300 == 0 else 0),
         "sent_at": None if n % 250 == 0 else now - dt.timedelta(hours=1)}
        for n in range(1, N_WORK + 1)
    ])
    await conn.execute(insert(StageChange), [
        {"contact_id": (n % N_CONTACTS) + 1, "from_stage": "nurturing", "to_stage": "mql", "by": "rule:mql", "at": now}
        for n in range(1, N_WORK + 1)
    ])
    await conn.execute(insert(Playbook), [{"id": 1, "key": "pb", "version": 1, "definition": {}, "definition_hash": "h", "created_at": now}])
    await conn.execute(insert(Enrollment), [
        {"playbook_id": 1, "playbook_key": "pb", "contact_id": (n % N_CONTACTS) + 1, "owner_userid": REPS[n % len(REPS)],
         "status": "active" if n % 3 == 0 else "stopped", "next_step": 1, "next_due_at": now + dt.timedelta(hours=n % 72),
         "started_at": now}
        for n in range(1, N_WORK + 1)
    ])
    return {"now": now, "contact": 1234, "rep": REPS[3], "token": "tok00000777", "external": "wm000042"}


@pytest.fixture
async def conn(db_url: str) -> Any:
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as connection:
            async with connection.begin():
                keys = await _fill(connection)
            if connection.dialect.name == "postgresql":  # autovacuum keeps statistics; SQLite has none
                await connection.execute(text("ANALYZE"))
                await connection.execute(text("SET enable_seqscan = off"))
            await connection.commit()
            connection.info["keys"] = keys
            yield connection
    finally:
        await engine.dispose()


def hot_queries(keys: dict[str, Any]) -> list[tuple[str, Any, str, Any]]:
    """(what, statement, table, index that must serve it: a name, "uq:table.column" for a unique
    column's index, or a name per dialect)."""
    now, contact, rep = keys["now"], keys["contact"], keys["rep"]
    return [
        # bot/shares.py ShareResolver._load (the link path, on a cache miss)
        ("share by token", LINK_BY_TOKEN.params(token=keys["token"]), "shares", "uq:shares.token"),
        # bot/tracker.py: the tracker's next batch (a partial index on processed = false)
        ("unprocessed events", unprocessed_events(50), "events", "ix_events_unprocessed"),
        # bot/tracker.py backlog (/healthz, /metrics): the oldest waiting event, the index's first entry
        ("oldest unprocessed event", OLDEST_UNPROCESSED, "events", "ix_events_unprocessed"),
        # bot/leases.py claim(): the inbox and outbox workers' due rows
        ("inbox due", due_rows(InboxItem, now=now, limit=20).with_for_update(skip_locked=True), "inbox", "ix_inbox_status_next"),
        ("outbox due", due_rows(OutboxItem, now=now, limit=20).with_for_update(skip_locked=True), "outbox", "ix_outbox_status_next"),
        # bot/inbox.py inbox_counts and bot/outbox.py outbox_counts (/healthz, /metrics)
        ("inbox backlog", select(InboxItem.status, func.count()).where(InboxItem.status.in_(["pending", "parked"]))
         .group_by(InboxItem.status), "inbox", "ix_inbox_status_next"),
        ("outbox backlog", select(OutboxItem.status, func.count()).where(OutboxItem.status.in_(["pending", "failed"]))
         .group_by(OutboxItem.status), "outbox", "ix_outbox_status_next"),
        # bot/identity.py contact_for_external_userid, handlers/contacts_api.py find_contact
        ("contact by external_userid", select(Contact).where(Contact.external_userid == keys["external"]), "contacts",
         "uq:contacts.external_userid"),
        # bot/scoring/service.py contact_events (replay), handlers/contacts_api.py contact_view (timeline)
        ("events of a contact in time order", select(Event).where(Event.contact_id == contact, Event.processed.is_(True))
         .order_by(Event.occurred_at, Event.id), "events", "ix_events_contact_occurred"),
        ("timeline of a contact", select(Event).where(Event.contact_id == contact)
         .order_by(Event.occurred_at.desc(), Event.id.desc()).limit(100), "events", "ix_events_contact_occurred"),
        # bot/scoring/service.py ensure: the contact's ledger
        ("ledger of a contact", select(func.max(ScoreEntry.at)).where(ScoreEntry.contact_id == contact), "score_ledger",
         "ix_score_ledger_contact_at"),
        # bot/tasks.py list_tasks (GET /api/tasks?rep=, 任务), bot/digest/todo.py
        ("open tasks of a rep", select(Task).where(Task.status == "open", Task.owner_userid == rep)
         .order_by(Task.priority, Task.due_at, Task.id).limit(200), "tasks", "ix_tasks_owner_status_due"),
        ("tasks due today per rep", select(Task.id).where(Task.status == "open", Task.owner_userid.in_([rep, REPS[4]]),
                                                          Task.due_at < now + dt.timedelta(days=1)), "tasks",
         "ix_tasks_owner_status_due"),
        # bot/alerts.py AlertService.open_alert (every alerting event)
        ("open alert of a contact", open_alerts_of(rep, {contact}), "alerts", "ix_alerts_rep_contact_status"),
        # the same for a tracker batch's contacts with an owner (AlertService.prepare)
        ("open alerts of a batch's contacts", open_alerts_of(rep, {contact, contact + 5, contact + 10}), "alerts",
         "ix_alerts_rep_contact_status"),
        # bot/alerts.py AlertService._stage_change, and per tracker batch
        ("latest stage change of a contact", select(StageChange).where(StageChange.contact_id == contact)
         .order_by(StageChange.id.desc()).limit(1), "stage_history", "ix_stage_history_contact_id"),
        ("latest stage changes of a batch's contacts", latest_stage_changes_of({contact, contact + 1, contact + 2}),
         "stage_history", "ix_stage_history_contact_id"),
        # bot/alert_jobs.py send_due_alerts, send_card_updates, remind_snoozed (every 30 s)
        ("due pending alerts", select(Alert).where(Alert.status == "pending", Alert.send_after <= now).order_by(Alert.id)
         .limit(100).with_for_update(skip_locked=True), "alerts", "ix_alerts_status_send_after"),
        ("sent cards with news", select(Alert).where(Alert.status == "sent", Alert.clicked_at.is_(None),
                                                     Alert.send_after > Alert.sent_at, Alert.send_after <= now)
         .order_by(Alert.id).limit(100), "alerts",
         # PostgreSQL knows from its statistics how few rows the partial index holds; SQLite, without
         # statistics, narrows to sent alerts due by the status index (still no full scan)
         {"postgresql": "ix_alerts_updates_due", "sqlite": "ix_alerts_status_send_after"}),
        # bot/sop/triggers.py: the SOP hook's running enrollments of a tracker batch's contacts
        ("enrollments of a batch's contacts", enrollments_of([contact, contact + 1, contact + 2]), "sop_enrollments",
         "ix_sop_enrollments_contact_id"),
        # bot/channels.py list_channels (/admin/channels, GET /api/channels): counted from the indexes alone
        ("contacts per channel", CONTACTS_BY_CHANNEL, "contacts", "ix_contacts_channel_merged"),
        ("adds and opens per channel", ACTIVITY_BY_CHANNEL, "events", "ix_events_type_channel"),
        ("snoozes that ran out", select(Task).where(Task.status == "open", Task.snoozed_until.is_not(None),
                                                    Task.snoozed_until <= now)
         .order_by(Task.snoozed_until, Task.id).limit(100), "tasks", "ix_tasks_status_snoozed"),
    ]


async def test_hot_queries_use_their_indexes(conn: AsyncConnection) -> None:
    problems = []
    for what, statement, table, index in hot_queries(conn.info["keys"]):
        plan = await explain(conn, statement)
        if isinstance(index, dict):
            index = index[conn.dialect.name]
        if index.startswith("uq:"):
            tbl, column = index[3:].split(".")
            wanted = _unique_index(conn, tbl, column)
            used = any(name.startswith(wanted) for name in plan.indexes)
        else:
            wanted = index
            used = index in plan.indexes
        if table in plan.full_scans or not used:
            problems.append(f"{what}: wanted {wanted} on {table}; plan:\n{plan.raw}")
    assert not problems, "\n\n".join(problems)
    # The check itself: a query no index serves is reported as a full scan.
    plan = await explain(conn, select(Event).where(Event.version_id == 1))
    assert "events" in plan.full_scans, plan.raw


async def test_a_teams_dashboards_read_the_teams_rows_by_index(conn: AsyncConnection) -> None:
    """Every statement of the dashboard's reports and contact list for a manager's team (two reps here)
    is served by indexes: the team's contacts drive the content funnel and the contact list (also with
    a stage filter), the rep index the activity counts and the shares. Read in full, the events of the date range were most of a team's wait at a million
    contacts (bot/reports.py, bot/leaderboards.py). The statements are captured as the reports run
    them, with their values, and explained."""
    now = conn.info["keys"]["now"]
    rng = DateRange.of_days((now - dt.timedelta(days=29)).date(), now.date(), dt.UTC)
    scope = Scope(frozenset(REPS[3:5]))
    session = AsyncSession(bind=conn)
    counted = await _statements_of(conn, {
        "stage funnel": stage_funnel(session, rng, scope), "channel funnel": channel_funnel(session, rng, scope),
        "content funnel": content_funnel(session, rng, scope), "content leaderboard": content_leaderboard(session, rng, scope),
        "rep leaderboard": rep_leaderboard(session, rng, scope, now=now), "sop compliance": sop_compliance(session, rng, scope, now=now),
        "contact list": contact_table(session, ContactFilter(stage="new"), scope, None),
    })  # fmt: skip
    big = {"events", "shares", "contacts", "stage_history", "tasks"}
    problems, used = [], {}
    for name, statements in counted.items():
        used[name] = set()
        for statement, parameters in statements:
            plan = await _explain_driver_sql(conn, statement, parameters)
            used[name] |= plan.indexes
            if plan.full_scans & big:
                problems.append(f"{name}: reads {sorted(plan.full_scans & big)} in full:\n{statement}\n{plan.raw}")
    assert not problems, "\n\n".join(problems)
    if conn.dialect.name == "postgresql":
        return  # its planner weighs this fill's statistics (one item, every event in range); SQLite has none, as in production
    assert "ix_events_contact_occurred" in used["content funnel"], used
    assert "ix_events_rep_type_occurred" in used["content leaderboard"], used
    assert "ix_events_rep_type_occurred" in used["rep leaderboard"], used
    assert "ix_shares_rep_userid" in used["content leaderboard"] and "ix_shares_rep_userid" in used["rep leaderboard"], used
    assert "ix_contacts_owner_userid" in used["contact list"] and "ix_contacts_stage" not in used["contact list"], used


async def _statements_of(conn: AsyncConnection, reports: dict[str, Any]) -> dict[str, list[tuple[str, Any]]]:
    """Run each report (a coroutine) in turn: the SELECTs each ran, with their values."""
    ran: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            ran.append((statement, parameters))

    sa_event.listen(conn.sync_engine, "before_cursor_execute", capture)
    try:
        counted: dict[str, list[tuple[str, Any]]] = {}
        for name, report in reports.items():
            before = len(ran)
            table = await report
            table = table[0] if isinstance(table, tuple) else table  # the contact list: (page, total)
            assert table.rows or name == "sop compliance", name  # the fill gives each report something to count
            counted[name] = ran[before:]
    finally:
        sa_event.remove(conn.sync_engine, "before_cursor_execute", capture)
    return counted


async def test_everyones_dashboards_count_events_from_indexes_alone(conn: AsyncConnection) -> None:
    """The admin's leaderboards and content funnel count everyone's events of the range: opens per rep
    from the rep index; opens, reads to the end, CTA clicks, downloads and each item's openers from a
    partial index; none reading an event's row (at a million contacts, reading the range's rows took
    2.4, 4.4 and 3.4 s). The reports' own statements, explained as they ran."""
    now = conn.info["keys"]["now"]
    rng = DateRange.of_days((now - dt.timedelta(days=29)).date(), now.date(), dt.UTC)
    session = AsyncSession(bind=conn)
    counted = await _statements_of(conn, {"content leaderboard": content_leaderboard(session, rng, Scope(None)),
                                          "content funnel": content_funnel(session, rng, Scope(None)),
                                          "rep leaderboard": rep_leaderboard(session, rng, Scope(None), now=now)})
    wanted = {"content leaderboard": "ix_events_item_counted", "content funnel": "ix_events_item_counted",
              "rep leaderboard": "ix_events_rep_type_occurred"}
    for name, statements in counted.items():
        plans = [await _explain_driver_sql(conn, statement, parameters) for statement, parameters in statements]
        assert not any("events" in plan.full_scans for plan in plans), (name, [p.raw for p in plans])
        if conn.dialect.name == "postgresql":
            continue  # its planner weighs this fill's statistics (one item, every event in range); SQLite has none, as in production
        counting = [(plan, ran) for plan, ran in zip(plans, statements, strict=True) if wanted[name] in plan.indexes]
        assert counting, (name, [p.raw for p in plans])
        for plan, (statement, parameters) in counting:
            assert await _event_rows_read(conn, statement, parameters) == [], plan.raw


async def test_sop_compliance_seeks_the_ranges_sop_tasks(conn: AsyncConnection) -> None:
    """Everyone's SOP compliance finds the range's SOP tasks by the (kind, due) index; read through the
    owner index, it went through every task ever made (0.28 s against 0.09 s at a million contacts). A
    team's stays on the owner index, which holds only the team's tasks."""
    plans = await _task_plans(conn, sop_compliance, lambda sql: "FROM tasks" in sql)
    for name, [plan] in plans.items():
        assert "tasks" not in plan.full_scans, (name, plan.raw)
    if conn.dialect.name == "postgresql":
        return  # its planner weighs this fill's statistics; SQLite has none, as in production
    [everyone], [team] = plans["everyone"], plans["team"]
    assert "ix_tasks_kind_due" in everyone.indexes, everyone.raw
    assert "ix_tasks_owner_status_due" in team.indexes and "ix_tasks_kind_due" not in team.indexes, team.raw


async def test_rep_leaderboard_takes_the_ranges_done_tasks_from_an_index_alone(conn: AsyncConnection) -> None:
    """Everyone's tasks done in the range (counted per owner, and their times for the follow-up speed) come
    from the covering (completed, ...) index without reading a task's row (at a million contacts the
    status index and the rows took 0.15 s a statement, this 0.06 s). A team's stay on the owner index."""
    plans = await _task_plans(conn, rep_leaderboard, lambda sql: "FROM tasks" in sql and "completed_at >=" in sql)
    for name, done in plans.items():
        assert len(done) == 2, (name, [plan.raw for plan in done])
        for plan in done:
            assert "tasks" not in plan.full_scans, (name, plan.raw)
            if conn.dialect.name == "postgresql":
                continue  # its planner weighs this fill's statistics; SQLite has none, as in production
            if name == "everyone":
                assert "ix_tasks_completed_cover" in plan.indexes and "COVERING INDEX" in plan.raw, plan.raw
            else:
                assert "ix_tasks_owner_status_due" in plan.indexes, plan.raw


async def test_decay_finds_each_quiet_contacts_last_engagement_from_its_newest_events(conn: AsyncConnection) -> None:
    """The nightly decay's chunk read takes each contact's last engagement by walking its events back
    through the (contact, time) index until one counts, a correlated subquery with LIMIT 1: a grouped
    max over the chunk read every event of every contact (10.7 against 6.9 ms a chunk of 500 contacts
    with ten events each)."""
    ran: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        ran.append((statement, parameters))

    now = conn.info["keys"]["now"]
    sa_event.listen(conn.sync_engine, "before_cursor_execute", capture)
    try:
        await conn.execute(CHUNK_READ, {"after": 0, "cutoff": now, "limit": 500})
    finally:
        sa_event.remove(conn.sync_engine, "before_cursor_execute", capture)
    [(statement, parameters)] = ran
    plan = await _explain_driver_sql(conn, statement, parameters)
    assert not plan.full_scans & {"events", "score_ledger"}, plan.raw
    assert "ix_events_contact_occurred" in plan.indexes, plan.raw
    if conn.dialect.name == "postgresql":
        assert '"Scan Direction": "Backward"' in plan.raw, plan.raw
    else:
        assert "CORRELATED SCALAR SUBQUERY" in plan.raw, plan.raw


async def _task_plans(conn: AsyncConnection, report: Any, wanted: Any) -> dict[str, list[Plan]]:
    """The plans of the `wanted` statements (by their SQL) that `report` (a leaderboard) ran over the
    last 30 days, for everyone and for a team of two reps."""
    now = conn.info["keys"]["now"]
    rng = DateRange.of_days((now - dt.timedelta(days=29)).date(), now.date(), dt.UTC)
    session = AsyncSession(bind=conn)
    counted = await _statements_of(conn, {"everyone": report(session, rng, Scope(None), now=now),
                                          "team": report(session, rng, Scope(frozenset(REPS[3:5])), now=now)})
    return {name: [await _explain_driver_sql(conn, statement, parameters) for statement, parameters in statements if wanted(statement)]
            for name, statements in counted.items()}


async def _event_rows_read(conn: AsyncConnection, statement: str, parameters: Any) -> list[Any]:
    """SQLite: the bytecode's reads of a column from an `events` row (not an index entry). A partial
    index's plan line never says COVERING when the query names a column only its condition uses, yet
    the row is not read: its seek is deferred until a column is needed, and none is."""
    root = (await conn.exec_driver_sql("SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = 'events'")).scalar()
    program = (await conn.exec_driver_sql(f"EXPLAIN {statement}", parameters)).all()
    rows = {op.p1 for op in program if op.opcode in ("OpenRead", "ReopenIdx") and op.p2 == root}
    return [tuple(op) for op in program if op.opcode == "Column" and op.p1 in rows]


async def _explain_driver_sql(conn: AsyncConnection, statement: str, parameters: Any) -> Plan:
    if conn.dialect.name == "postgresql":
        return _pg_plan((await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters)).all())
    return _sqlite_plan((await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)).all())
