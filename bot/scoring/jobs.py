"""Nightly scoring jobs: inactivity decay and dormancy, set-based, with the write lock held briefly.

Decay (`decay-scores`) goes through the quiet contacts in id order, a chunk at a time (on SQLite
`Chunks` sizes them so that a chunk's write transaction takes about bot.db.WRITE_TARGET_S; on
PostgreSQL, which locks rows only, they are PG_CHUNK contacts):
1. Read, in a read-only session (no write lock; on SQLite at background CPU priority:
   Runtime.background_reads) and one statement: the chunk's contacts and, per contact, from the
   ledger (grouped) the positive behavior points left (event points > 0 plus the decay ticks so
   far) and the day of the last tick, and from the event log the last engagement (the contact's
   events walked back from the newest until one counts). That is all decay needs (see
   bot/scoring/engine.py): ticks fall on the local midnights after the later of the last tick and
   `decay_after_days` past the last engagement, while behavior points are left. The ticks are
   computed by the scorer itself (`Scorer.decay`), so they are the entries a replay makes. Contacts
   this process's ScoreBook holds are decayed through the book instead, which carries the same state
   (the book must not miss a tick it would otherwise apply again at the next event).
2. Write, in a short transaction of its own: the chunk's contacts are read again (FOR UPDATE on
   PostgreSQL), those whose score or last activity changed since step 1 (the tracker scored them
   meanwhile, decaying them itself) are left out, and the ticks (added to each contact's row for its
   quiet spell: bot/ledger.py) and new scores / temperatures
   of the others go in with one executemany each. On SQLite the write lock is held for that
   transaction only (milliseconds), not for the whole job: link opens and callbacks keep committing.
   There, the rows are converted for the driver in step 1, and the transaction (BEGIN IMMEDIATE,
   the check, both executemany runs, COMMIT) is one call on the connection's thread: nothing of the
   event loop's runs inside it, which under link load stretched each chunk's transaction to several
   times its own work (the loop's other tasks ran between its awaits while the lock was held).
   Contacts the ScoreBook holds are decayed through the book, in a transaction of their own.
The job needs no replay of the event log, so its cost is a few indexed aggregates per chunk, not a
rescore of every quiet contact. The longest write transaction (BEGIN through COMMIT) is logged.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import String, and_, bindparam, case, func, or_, select, type_coerce

from bot.batch import BulkUpdate, on_driver, prepared_statement, still_as_read, write_in_one_call
from bot.context import Context
from bot.db import Chunks, write_gate, yield_to_writer
from bot.leases import holds_lease
from bot.ledger import insert_merged_rows, ledger_insert, ledger_rows
from bot.lifecycle import mark_dormant, recently_reactivated
from bot.models import Contact, Event, ScoreEntry
from bot.scoring.engine import NOT_ENGAGEMENT, ContactScoreState, local_day, shared_local_day
from bot.scoring.rules import DECAY_RULE
from bot.scoring.stages import temperature

log = logging.getLogger("beacon.scoring.jobs")
_SCORES = BulkUpdate(Contact.__table__, "id", ("score", "temperature"), same=("updated_at",))
CHUNK = 500  # contacts in the first chunk: about 10-20 ms of write lock on SQLite, in a database in memory
# PostgreSQL locks rows, not the database: a chunk's transaction delays only an event of one of its
# (quiet) contacts. Fewer, larger chunks: each chunk's read costs a pass over the ledger's and the
# log's pages for its contacts, and at a few thousand contacts the planner reads them whole (a
# sequential scan per chunk: with 500 contacts a chunk, decay there took twice the raw SQL's time).
PG_CHUNK = 1000


async def decay_scores(ctx: Context) -> None:
    """Bring every quiet contact's decay up to now (real time applies it lazily on the next event)."""
    rt = ctx.runtime
    service = rt.services["scoring"]
    now = ctx.clock.now()
    if not holds_lease(rt, "tracker"):
        # This process is not the tracker: whatever its ScoreBook holds may be stale (the tracker of
        # another process scored since). Start from the ledger, as for contacts the book lacks.
        service.forget()
    quiet_days = min(m.decay_after_days for m in rt.settings.scoring.models)
    cutoff = now - dt.timedelta(days=quiet_days)
    after = 0
    quiet = decayed = chunks = 0
    longest = 0.0
    form = _WriteForm(rt.engine)
    size = Chunks(CHUNK if form.driver else PG_CHUNK)
    while True:
        await yield_to_writer(rt.engine)  # the chunk's read and arithmetic run after any transaction in progress
        async with rt.background_reads() as reader:
            seen, prepared = await _read_chunk(reader, rt.engine, service, cutoff, after, now, size.size, form)
        if not seen:
            break
        after = max(seen)
        quiet += len(seen)
        chunks += 1
        held = 0.0
        if form.driver:
            written, held = await _write_prepared(rt, service, seen, prepared, form)
            prepared = {}
            decayed += written
        if not form.driver or any(cid in service.book for cid in seen):
            written, took = await _write_chunk(rt, service, seen, prepared, now, form)
            decayed += written
            held = max(held, took)
        if form.driver:  # sized to SQLite's one write lock; PostgreSQL locks rows
            size.took(held, len(seen))
        longest = max(longest, held)
    log.info("decay: %d of %d quiet contacts lost points (%d chunks, last %d contacts, longest write transaction %.1f ms)",
             decayed, quiet, chunks, size.size, longest * 1000)


def _chunk_statement() -> Any:
    """The next `:limit` quiet contacts after id `:after` with what decay needs of each, in one
    statement: the contact's row, its ledger totals (all points; behavior points left, i.e. event
    points > 0 plus the decay ticks so far; the last tick) and its last engagement. Built once; the
    aggregates reach their rows through the chunk's ids, by index."""
    c = Contact.__table__.c
    chunk = (
        select(c.id, c.score, c.last_activity_at, c.region, c.profile["reactivated_at"].as_string().label("reactivated"))
        .where(c.id > bindparam("after"), c.last_activity_at < bindparam("cutoff", type_=c.last_activity_at.type),
               c.merged_into_id.is_(None), c.erased_at.is_(None))
        .order_by(c.id).limit(bindparam("limit"))
        .cte("chunk")
    )
    ids = select(chunk.c.id).scalar_subquery()
    led = ScoreEntry.__table__.c
    is_behavior = or_(led.rule == DECAY_RULE, and_(led.event_id.is_not(None), led.points > 0))
    ledger = (
        select(led.contact_id, func.sum(led.points).label("total"),
               func.sum(case((is_behavior, led.points), else_=0.0)).label("behavior"),
               func.max(led.at).filter(led.rule == DECAY_RULE).label("last_tick"))
        .where(led.contact_id.in_(ids)).group_by(led.contact_id)
        .subquery("ledger")
    )
    ev = Event.__table__.c
    # The newest engagement, walking the contact's events back from the newest by the (contact, time)
    # index: it stops at the first that counts (usually the newest), where a grouped max over the
    # chunk read every event of every contact (10.7 -> 6.9 ms a chunk of 500 at 10 events a contact).
    engaged = (
        select(ev.occurred_at)
        .where(ev.contact_id == chunk.c.id, ev.processed.is_(True), ev.type.not_in(sorted(NOT_ENGAGEMENT)))
        .order_by(ev.occurred_at.desc()).limit(1)
        .correlate(chunk)
        .scalar_subquery()
    )
    return (
        # The last activity as stored (on SQLite its text): only compared with itself, read again at write time.
        select(chunk.c.id, chunk.c.score, type_coerce(chunk.c.last_activity_at, String), chunk.c.region, chunk.c.reactivated,
               ledger.c.total, ledger.c.behavior, ledger.c.last_tick, engaged.label("engaged"))
        .select_from(chunk.outerjoin(ledger, ledger.c.contact_id == chunk.c.id))
        .order_by(chunk.c.id)
    )


CHUNK_READ = _chunk_statement()


class _WriteForm:
    """The rows decay writes, in the form they are written in: on SQLite the driver's positional rows,
    converted before the write transaction (`bot.batch.prepared_statement`); elsewhere the dicts
    SQLAlchemy takes."""

    def __init__(self, engine: Any) -> None:
        self.dialect = engine.dialect
        self.driver = write_gate(engine) is not None  # SQLite (the gate is what the one-call transaction takes)
        self.ledger: Any = None
        self.update: Any = None

    def rows(self, ledger: list[dict[str, Any]], change: dict[str, Any]) -> tuple[list[Any], Any]:
        if self.driver and self.ledger is None:
            self.ledger = prepared_statement(ledger_insert(self.dialect.name), tuple(ledger[0]), self.dialect, repeated=True)
            self.update = prepared_statement(_SCORES.stmt, tuple(change), self.dialect, repeated=True)
            self.driver = self.ledger is not None and self.update is not None
        if not self.driver:
            return ledger, change
        return [self.ledger.row(row) for row in ledger], self.update.row(change)


async def _read_chunk(reader: Any, engine: Any, service: Any, cutoff: dt.datetime, after: int,
                      now: dt.datetime, limit: int, form: _WriteForm) -> tuple[dict[int, tuple[Any, ...]], dict[int, tuple[list[Any], Any]]]:
    """The next `limit` quiet contacts after id `after`: {id: (score, last_activity_at as stored,
    region, reactivated_at)} as read, and for those the book does not hold and that lose points, {id:
    (ledger rows, contact update)} in `form`."""
    conn = await reader.connection()
    contacts = (await conn.execute(CHUNK_READ, {"after": after, "cutoff": cutoff, "limit": limit})).all()
    if not contacts:
        return {}, {}
    scorer, book = service.scorer, service.book
    models: dict[str | None, tuple[Any, ZoneInfo]] = {}  # region: its model and time zone
    seen: dict[int, tuple[Any, ...]] = {}
    prepared: dict[int, tuple[list[dict[str, Any]], dict[str, Any]]] = {}
    for n, (contact_id, score, last_activity, region, reactivated, total, behavior, last_tick, last_engaged) in enumerate(contacts):
        if n % 100 == 99:
            await yield_to_writer(engine)  # a chunk's arithmetic is tens of milliseconds: let others go first
        seen[contact_id] = (score, last_activity, region, reactivated)
        if contact_id in book:
            service.check(SimpleNamespace(id=contact_id, score=score))  # scored elsewhere: from the ledger, then
            if contact_id in book:
                continue  # the book's state is used at write time
        if last_engaged is None:
            continue  # never engaged: nothing decays
        model = models.get(region)
        if model is None:
            spec = scorer.model_for(region or None)
            model = models[region] = (spec, ZoneInfo(spec.timezone))
        spec, zone = model
        active = local_day(zone, last_engaged)
        clock = active if last_tick is None else max(active, shared_local_day(zone, last_tick))
        state = ContactScoreState(contact_id, spec.name, behavior=round(float(behavior or 0.0) * 100),
                                  active_day=active, clock_day=clock)
        entries = scorer.decay(state, now)
        if entries:
            new_score = round(float(total or 0.0) + sum(e.points for e in entries), 2)
            change = _update(contact_id, new_score, _temperature(new_score, spec, reactivated, now), now)
            prepared[contact_id] = form.rows(ledger_rows(entries), change)
    return seen, prepared


def _temperature(score: float, model: Any, reactivated: str | None, now: dt.datetime) -> str:
    if reactivated and recently_reactivated(SimpleNamespace(profile={"reactivated_at": reactivated}), now):  # type: ignore[arg-type]
        return "hot"
    return temperature(score, model)


def _update(contact_id: int, score: float, temp: str, now: dt.datetime) -> dict[str, Any]:
    return {"b_id": contact_id, "b_score": score, "b_temperature": temp, "b_updated_at": now}


_CONTACTS = Contact.__table__.name


async def _write_prepared(rt: Any, service: Any, seen: dict[int, tuple[Any, ...]],
                          prepared: dict[int, tuple[list[Any], Any]], form: _WriteForm) -> tuple[int, float]:
    """SQLite: the ticks and new scores computed before the transaction, for the contacts nobody
    scored meanwhile, in one call on the connection's thread (BEGIN IMMEDIATE through COMMIT, under
    this process's write gate). Returns how many contacts lost points and how long the lock was held.
    A contact the book took up meanwhile without scoring it is written too; its cached state is
    dropped, to be replayed from what was written."""
    if not prepared:
        return 0, 0.0
    expected = {cid: seen[cid][:2] for cid in prepared}
    written, held, _commit_s = await write_in_one_call(rt.engine, _decay_in_thread, expected, prepared, form.ledger.sql,
                                                       form.update.sql, sql=form.update.sql)
    for contact_id in written:
        if contact_id in service.book:
            service.forget(contact_id)
    return len(written), held


def _decay_in_thread(conn: Any, expected: dict[int, tuple[Any, Any]], prepared: dict[int, tuple[list[Any], Any]],
                     ledger_sql: str, update_sql: str) -> list[int]:
    """Inside `_write_prepared`'s transaction, on SQLite's thread: the contacts as they were read
    get their rows written; returns their ids."""
    written = still_as_read(conn, _CONTACTS, "score, last_activity_at", expected)
    ledger = [row for cid in written for row in prepared[cid][0]]
    if ledger:
        conn.executemany(ledger_sql, ledger)
        conn.executemany(update_sql, [prepared[cid][1] for cid in written])
    return written


async def _write_chunk(rt: Any, service: Any, seen: dict[int, tuple[Any, ...]],
                       prepared: dict[int, tuple[list[Any], Any]], now: dt.datetime, form: _WriteForm) -> tuple[int, float]:
    """One short transaction: the chunk's ticks and new scores, for contacts nobody scored meanwhile
    (the book's contacts decayed through the book; the others' rows, in `prepared`, were computed
    before the transaction began: on SQLite they were written by `_write_prepared` and this only
    decays the book's). Returns how many contacts lost points and how long the transaction held the
    write lock (BEGIN through COMMIT).

    COMMIT counts: it writes the chunk's changed pages to the WAL with the lock held, which at a
    million contacts was as long again as the statements. It does not include a checkpoint as long
    as a background checkpointer runs (`serve`; [database] checkpoint_interval_s): SQLite's own
    runs inside the COMMIT call, after the lock is released, and would shrink chunks for nothing."""
    changed_book: list[int] = []
    try:
        async with rt.sessions() as session:
            async with session.begin():
                conn = await session.connection()  # BEGIN IMMEDIATE on SQLite: the write lock from here
                began = time.perf_counter()
                rows, updates = await _chunk_changes(conn, service, seen, prepared, now, changed_book, form)
                if form.driver:
                    if rows:
                        await on_driver(conn, _write_rows_in_thread, form.ledger.sql, rows, form.update.sql, updates, sql=form.update.sql)
                else:
                    await insert_merged_rows(conn, rows)  # a tick per contact and spell: one row each
                    await _SCORES.run(conn, updates)
            held = time.perf_counter() - began
    except BaseException:
        for contact_id in changed_book:  # the book moved on, the database did not: replay them later
            service.forget(contact_id)
        raise
    return len(updates), held


def _write_rows_in_thread(conn: Any, ledger_sql: str, ledger: list[Any], update_sql: str, updates: list[Any]) -> None:
    conn.executemany(ledger_sql, ledger)
    conn.executemany(update_sql, updates)


async def _chunk_changes(conn: Any, service: Any, seen: dict[int, tuple[Any, ...]],
                         prepared: dict[int, tuple[list[Any], Any]], now: dt.datetime,
                         changed_book: list[int], form: _WriteForm) -> tuple[list[Any], list[Any]]:
    """Inside the write transaction: the ledger rows and contact updates (in `form`) of the chunk's
    contacts that are as they were read (locked on PostgreSQL), decaying the book's contacts through
    the book."""
    c = Contact.__table__.c
    wanted = list(seen) if not form.driver else [cid for cid in seen if cid in service.book]
    current = select(c.id, c.score, type_coerce(c.last_activity_at, String)).where(c.id.in_(wanted))
    if conn.dialect.name == "postgresql":
        current = current.with_for_update()
    rows: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for contact_id, score, last_activity in (await conn.execute(current)).all():
        score_then, activity_then, region, reactivated = seen[contact_id]
        if (score, last_activity) != (score_then, activity_then):
            continue  # scored since it was read (and decayed by that), or changed: the next run
        if contact_id in service.book:
            service.check(SimpleNamespace(id=contact_id, score=score))  # drops a state gone stale
        if contact_id in service.book:
            ticks = service.book.decay(contact_id, now)
            if not ticks:
                continue
            changed_book.append(contact_id)
            new_score = service.score(contact_id)
            model = service.scorer.model_for(region or None)
            ledger, change = form.rows(ledger_rows(ticks), _update(contact_id, new_score, _temperature(new_score, model, reactivated, now), now))
            rows += ledger
            updates.append(change)
        elif contact_id in prepared:
            ledger, change = prepared[contact_id]
            rows += ledger
            updates.append(change)
    return rows, updates


async def mark_dormant_customers(ctx: Context) -> None:
    """Customers whose last payment is older than [lifecycle].dormant_after_days become dormant."""
    moved = await mark_dormant(ctx.runtime, ctx.session, ctx.clock.now())
    log.info("dormancy: %d customers became dormant", moved)
