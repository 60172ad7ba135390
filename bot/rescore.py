"""`python -m bot rescore`: replay every contact's event log under the current rules.

Contacts are taken in id ranges; per range, one query reads the events in (contact, time) order and
the pure scorer replays them. A contact's old ledger rows are deleted and its new ones written in one
transaction, so its ledger is never half old, half new: on PostgreSQL the range's transaction, on
SQLite short write transactions after the replay, each checking that its contacts are as they were
read (see `_Run.range`). Deterministic: the same log and rules give the same ledger, equal to what
real-time scoring produced for events that arrived in time order.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter
from types import MappingProxyType, SimpleNamespace
from typing import Any, Callable, Mapping

from sqlalchemy import String, Text, cast, delete, insert, select, type_coerce

from bot.batch import BulkUpdate, converted_once, executemany, prepared_statement, still_as_read, write_in_one_call
from bot.clock import Clock, SystemClock
from bot.config import Settings
from bot.db import create_engine, read_session_factory, session_factory, write_gate
from bot.lifecycle import recently_reactivated
from bot.models import Contact, ContentItem, Event, ScoreEntry, StageChange
from bot.scoring.engine import ScoredEvent
from bot.ledger import insert_merged_rows, ledger_insert, ledger_rows
from bot.scoring.service import PROFILE_FIELDS, ScoringService, profile_of
from bot.scoring.stages import reach_of, stage_for_score, temperature

Progress = Callable[[int, int], None]


@dataclass
class RescoreReport:
    contacts: int = 0
    events: int = 0
    entries: int = 0
    stage_moves: int = 0
    changed: list[int] = field(default_factory=list)  # contacts whose score changed
    replayed: int = 0  # SQLite: contacts replayed again because another writer changed them meanwhile

    def summary(self) -> str:
        again = f" ({self.replayed} replayed again: scored meanwhile)" if self.replayed else ""
        return (f"rescored {self.contacts} contacts from {self.events} events: {self.entries} ledger entries, "
                f"{len(self.changed)} scores changed, {self.stage_moves} stage moves{again}")


async def rescore_all(settings: Settings, *, clock: Clock | None = None, chunk: int = 2000,
                      progress: Progress | None = None) -> RescoreReport:
    clock = clock or SystemClock()
    engine = create_engine(settings.database)
    run = _Run(engine, ScoringService(settings.scoring), clock.now())
    try:
        async with run.sessions() as session:
            ids = list((await session.scalars(
                select(Contact.id).where(Contact.merged_into_id.is_(None), Contact.erased_at.is_(None)).order_by(Contact.id)
            )).all())
            run.items = {i.id: (i.kind, i.stage, tuple(i.tags or ()), i.title) for i in (await session.scalars(select(ContentItem))).all()}
        for start in range(0, len(ids), chunk):
            await run.range(ids[start:start + chunk])
            if progress:
                progress(min(start + chunk, len(ids)), len(ids))
    finally:
        await engine.dispose()
    return run.report


_CONTACTS = Contact.__table__.c
# What a contact's replay starts from, and (`stored_at`: updated_at as stored, compared as such) what
# tells on SQLite that another writer changed it between the replay's read and its write.
_CONTACT_COLUMNS = [_CONTACTS.id, _CONTACTS.score, _CONTACTS.stage, _CONTACTS.reach, _CONTACTS.temperature, _CONTACTS.created_at,
                    _CONTACTS.profile, type_coerce(_CONTACTS.updated_at, String).label("stored_at"),
                    *(_CONTACTS[name] for name in PROFILE_FIELDS)]  # region is one of PROFILE_FIELDS
_STAGE_INSERT = insert(StageChange.__table__)
_CONTACT_UPDATE = BulkUpdate(Contact.__table__, "id", ("score", "temperature", "stage", "reach"), same=("updated_at",))
# SQLite: ledger rows per write transaction (the contacts' old rows deleted, their new ones inserted,
# their scores updated). Rescoring 100k events (2k contacts), a probe beside it waited at most 62-71 ms
# for the write lock, against 2.4 s when the range's one transaction held it through the replay.
WRITE_ROWS = 4000
ATTEMPTS = 3  # SQLite: replays of contacts another writer changed meanwhile, before taking the lock for them


@dataclass
class _Outcome:
    """One contact's replay: what to write, and what the contact looked like when it was read."""

    ledger: list[dict[str, Any]]
    move: dict[str, Any] | None
    update: dict[str, Any] | None
    seen: tuple[Any, ...]  # (score, stage, temperature, updated_at as stored)
    events: int
    entries: int
    changed: bool


class _Run:
    def __init__(self, engine: Any, service: ScoringService, now: dt.datetime) -> None:
        self.engine = engine
        self.sessions = session_factory(engine)
        self.reads = read_session_factory(engine)
        self.service = service
        self.now = now
        self.items: dict[int, tuple[Any, ...]] = {}
        self.props = _props_reader()
        self.report = RescoreReport()
        self.sqlite = write_gate(engine) is not None

    async def range(self, batch: list[int]) -> None:
        """One id range. PostgreSQL: read, replay and write in one transaction (its locks are per row).
        SQLite: read and replay in a read transaction, then write in short transactions of about
        WRITE_ROWS ledger rows, each first checking that its contacts are as they were read; a contact
        another writer changed meanwhile (the tracker scored an event of it, the nightly decay ran) is
        replayed again, and after ATTEMPTS the rest run under the write lock from their read on. Held
        through the replay, the one database lock kept link opens and callbacks waiting for seconds."""
        if not self.sqlite:
            await self._locked(batch)
            return
        pending = batch
        for _ in range(ATTEMPTS):
            async with self.reads() as session:
                conn = await session.connection()
                outcomes = await self._replay(conn, pending)
            pending = await self._write_sqlite(outcomes)
            if not pending:
                return
            self.report.replayed += len(pending)
        await self._locked(pending)

    async def _locked(self, batch: list[int]) -> None:
        """The range in one write transaction: on SQLite under the write lock from the read on; on
        PostgreSQL the ledger rows by COPY (`insert_merged_rows`) and the updates as one statement over
        arrays (`BulkUpdate`)."""
        async with self.sessions() as session, session.begin():
            conn = await session.connection()
            outcomes = await self._replay(conn, batch)
            await conn.execute(delete(ScoreEntry).where(ScoreEntry.contact_id.in_(batch)))
            await insert_merged_rows(conn, [row for o in outcomes.values() for row in o.ledger])
            await executemany(conn, _STAGE_INSERT, [o.move for o in outcomes.values() if o.move is not None])
            await _CONTACT_UPDATE.run(conn, [o.update for o in outcomes.values() if o.update is not None])
        for cid, outcome in outcomes.items():
            self._count(cid, outcome)

    async def _replay(self, conn: Any, batch: list[int]) -> dict[int, _Outcome]:
        """Read the contacts of `batch` and their processed events, in Core statements (no ORM object per
        contact or row), and replay each through the scorer."""
        contacts = {row.id: SimpleNamespace(**row._mapping)
                    for row in (await conn.execute(select(*_CONTACT_COLUMNS).where(_CONTACTS.id.in_(batch))))}
        # A range by its bounds (its events by index, in order); the few contacts replayed again by their ids.
        which = _EV.contact_id.between(batch[0], batch[-1]) if len(batch) > 100 else _EV.contact_id.in_(batch)
        rows = (await conn.execute(_EVENTS.where(which))).all()  # Rows unpack like tuples
        by_contact = {cid: list(group) for cid, group in groupby(rows, key=itemgetter(1))}
        scorer, now = self.service.scorer, self.now
        outcomes: dict[int, _Outcome] = {}
        for cid in batch:
            contact = contacts.get(cid)
            if contact is None:
                continue  # gone since the list was read
            events = [_scored(row, self.items, self.props) for row in by_contact.get(cid, ())]
            state, entries = scorer.rescore(cid, profile_of(contact), events, now, profile_at=contact.created_at)  # type: ignore[arg-type]
            score = round(state.score, 2)
            model = scorer.model_for(contact.region or None)
            temp = "hot" if recently_reactivated(contact, now) else temperature(score, model)  # type: ignore[arg-type]
            stage = contact.stage
            target = stage_for_score(stage, score, model)
            move = None
            if target is not None:
                move = {"contact_id": cid, "from_stage": stage, "to_stage": target, "by": "rule:rescore",
                        "reason": f"重新评分 {score:g}", "at": now}
                stage = target
            update = None
            if (score, temp, stage) != (contact.score, contact.temperature, contact.stage):
                update = {"b_id": cid, "b_score": score, "b_temperature": temp, "b_stage": stage,
                          "b_reach": max(contact.reach, reach_of(stage)), "b_updated_at": now}
            outcomes[cid] = _Outcome(ledger_rows(entries), move, update, (contact.score, contact.stage, contact.temperature, contact.stored_at),
                                     len(events), len(entries), round(contact.score or 0.0, 2) != score)
        return outcomes

    async def _write_sqlite(self, outcomes: dict[int, _Outcome]) -> list[int]:
        """Write `outcomes` in transactions of about WRITE_ROWS ledger rows, each a single call on
        SQLite's thread (bot.batch.write_in_one_call) with the rows converted before; returns the
        contacts that changed since they were read (not written)."""
        if not outcomes:
            return []
        dialect = self.engine.dialect
        ledger = update = move = None
        for o in outcomes.values():
            if o.ledger and ledger is None:
                ledger = prepared_statement(ledger_insert("sqlite"), tuple(o.ledger[0]), dialect)
            if o.update is not None and update is None:
                update = prepared_statement(_CONTACT_UPDATE.stmt, tuple(o.update), dialect)
            if o.move is not None and move is None:
                move = prepared_statement(_STAGE_INSERT, tuple(o.move), dialect)
        if any((o.ledger and ledger is None) or (o.update and update is None) or (o.move and move is None) for o in outcomes.values()):
            await self._locked(list(outcomes))  # a statement the driver cannot take as it is: SQLAlchemy's way
            return []
        changed: list[int] = []
        group: list[int] = []
        size = 0
        for n, (cid, outcome) in enumerate(outcomes.items(), 1):
            group.append(cid)
            size += len(outcome.ledger) + 1
            if size >= WRITE_ROWS or n == len(outcomes):
                work = [(cid, outcomes[cid].seen, [ledger.row(r) for r in outcomes[cid].ledger] if ledger else [],  # type: ignore[union-attr]
                         move.row(outcomes[cid].move) if move and outcomes[cid].move else None,  # type: ignore[union-attr,arg-type]
                         update.row(outcomes[cid].update) if update and outcomes[cid].update else None)  # type: ignore[union-attr,arg-type]
                        for cid in group]
                sqls = (ledger.sql if ledger else "", move.sql if move else "", update.sql if update else "")
                written, _held, _commit = await write_in_one_call(self.engine, _write_in_thread, work, sqls, sql=sqls[0] or "rescore")
                kept = set(written)
                for cid in group:
                    if cid in kept:
                        self._count(cid, outcomes[cid])
                    else:
                        changed.append(cid)
                group, size = [], 0
        return changed

    def _count(self, cid: int, outcome: _Outcome) -> None:
        report = self.report
        report.contacts += 1
        report.events += outcome.events
        report.entries += outcome.entries
        report.stage_moves += outcome.move is not None
        if outcome.changed:
            report.changed.append(cid)


def _write_in_thread(conn: sqlite3.Connection, work: list[tuple[Any, ...]], sqls: tuple[str, str, str]) -> list[int]:
    """Inside `write_in_one_call`'s transaction: the contacts that are as they were read get their
    ledger replaced, their stage move and their new score; returns their ids."""
    seen = {item[0]: item[1] for item in work}
    unchanged = set(still_as_read(conn, Contact.__tablename__, "score, stage, temperature, updated_at", seen))
    kept = [item for item in work if item[0] in unchanged]
    if not kept:
        return []
    kept_ids = [item[0] for item in kept]
    conn.execute(f"DELETE FROM {ScoreEntry.__tablename__} WHERE contact_id IN ({','.join('?' * len(kept_ids))})", kept_ids)
    ledger_sql, move_sql, update_sql = sqls
    rows = [row for item in kept for row in item[2]]
    if rows:
        conn.executemany(ledger_sql, rows)
    moves = [item[3] for item in kept if item[3] is not None]
    if moves:
        conn.executemany(move_sql, moves)
    updates = [item[4] for item in kept if item[4] is not None]
    if updates:
        conn.executemany(update_sql, updates)
    return kept_ids


_EV = Event.__table__.c
# The time as the driver gives it (text on SQLite, a naive datetime on PostgreSQL) and props as JSON
# text (cast: asyncpg would decode every row's JSON itself), turned into values below: SQLAlchemy's
# own result processing (a regular expression per timestamp, json.loads per row) was a fifth of a
# rescore.
_EVENTS = (select(_EV.id, _EV.contact_id, _EV.type, type_coerce(_EV.occurred_at, String), _EV.item_id, cast(_EV.props, Text))
           .where(_EV.processed.is_(True)).order_by(_EV.contact_id, _EV.occurred_at, _EV.id))
_NO_ITEM = (None, None, (), None)
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _props_reader(size: int = 4096) -> Callable[[Any], Mapping[str, Any]]:
    """Event props from their JSON text, each distinct text parsed once (events repeat a handful of
    shapes: a read depth, a CTA name), shared read-only between the events that have it."""
    parse = converted_once(lambda raw: MappingProxyType(json.loads(raw) or {}), size)

    def read(raw: Any) -> Mapping[str, Any]:
        if raw is None:
            return _EMPTY
        if not isinstance(raw, str):  # a driver that decodes JSON itself
            return MappingProxyType(dict(raw))
        return parse(raw)  # type: ignore[no-any-return]

    return read


def _utc(raw: Any) -> dt.datetime:
    """A stored timestamp (naive UTC: SQLite's text, or a PostgreSQL driver's datetime) as aware UTC."""
    value = dt.datetime.fromisoformat(raw) if isinstance(raw, str) else raw
    return value.replace(tzinfo=dt.timezone.utc)


def _scored(row: tuple, items: dict, props: Callable[[Any], Mapping[str, Any]]) -> ScoredEvent:
    """(id, contact_id, type, occurred_at, item_id, props) -> ScoredEvent (positional: the hot loop)."""
    event_id, contact_id, kind_, at, item_id, raw = row
    kind, stage, tags, title = items.get(item_id, _NO_ITEM)
    return ScoredEvent(event_id, contact_id, kind_, _utc(at), item_id, kind, stage, tags, props(raw), title)
