"""`python -m bot rescore`: replay every contact's event log under the current rules.

Contacts are taken in id ranges; per range, one query reads the events in (contact, time) order,
the pure scorer replays them, and the range's ledger is replaced in one transaction, so a contact's
ledger is never half old, half new. Deterministic: the same log and rules give the same ledger, equal
to what real-time scoring produced for events that arrived in time order.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter
from types import MappingProxyType, SimpleNamespace
from typing import Any, Callable, Mapping

from sqlalchemy import String, Text, cast, delete, insert, select, type_coerce

from bot.batch import BulkUpdate, executemany
from bot.clock import Clock, SystemClock
from bot.config import Settings
from bot.db import create_engine, session_factory
from bot.lifecycle import recently_reactivated
from bot.models import Contact, ContentItem, Event, ScoreEntry, StageChange
from bot.scoring.engine import ScoredEvent
from bot.ledger import insert_merged_rows, ledger_rows
from bot.scoring.service import PROFILE_FIELDS, ScoringService, profile_of
from bot.scoring.stages import stage_for_score, temperature

Progress = Callable[[int, int], None]


@dataclass
class RescoreReport:
    contacts: int = 0
    events: int = 0
    entries: int = 0
    stage_moves: int = 0
    changed: list[int] = field(default_factory=list)  # contacts whose score changed

    def summary(self) -> str:
        return (f"rescored {self.contacts} contacts from {self.events} events: {self.entries} ledger entries, "
                f"{len(self.changed)} scores changed, {self.stage_moves} stage moves")


async def rescore_all(settings: Settings, *, clock: Clock | None = None, chunk: int = 2000,
                      progress: Progress | None = None) -> RescoreReport:
    clock = clock or SystemClock()
    engine = create_engine(settings.database)
    sessions = session_factory(engine)
    service = ScoringService(settings.scoring)
    report = RescoreReport()
    now = clock.now()
    props = _Props()
    try:
        async with sessions() as session:
            ids = list((await session.scalars(
                select(Contact.id).where(Contact.merged_into_id.is_(None), Contact.erased_at.is_(None)).order_by(Contact.id)
            )).all())
            items = {i.id: (i.kind, i.stage, tuple(i.tags or ()), i.title) for i in (await session.scalars(select(ContentItem))).all()}
        for start in range(0, len(ids), chunk):
            batch = ids[start:start + chunk]
            await _rescore_range(sessions, service, items, props, batch, now, report)
            if progress:
                progress(min(start + chunk, len(ids)), len(ids))
    finally:
        await engine.dispose()
    return report


_CONTACTS = Contact.__table__.c
_CONTACT_COLUMNS = [_CONTACTS.id, _CONTACTS.score, _CONTACTS.stage, _CONTACTS.temperature, _CONTACTS.created_at, _CONTACTS.profile,
                    *(_CONTACTS[name] for name in PROFILE_FIELDS)]  # region is one of PROFILE_FIELDS
_STAGE_INSERT = insert(StageChange.__table__)
_CONTACT_UPDATE = BulkUpdate(Contact.__table__, "id", ("score", "temperature", "stage"), same=("updated_at",))


async def _rescore_range(sessions, service: ScoringService, items: dict, props: "_Props", batch: list[int], now: dt.datetime,
                         report: RescoreReport) -> None:
    """One id range in one transaction, in Core statements (no ORM object per contact or row): the
    ledger rows, stage moves and contact updates go in with one executemany each, on SQLite straight
    to the driver (bot/batch.py: the rows converted once, not per execution by SQLAlchemy); on
    PostgreSQL the ledger rows by COPY (`insert_merged_rows`) and the updates as one statement over
    arrays (`BulkUpdate`)."""
    lo, hi = batch[0], batch[-1]
    async with sessions() as session, session.begin():
        conn = await session.connection()
        contacts = {row.id: SimpleNamespace(**row._mapping)
                    for row in (await conn.execute(select(*_CONTACT_COLUMNS).where(_CONTACTS.id.in_(batch))))}
        rows = (await conn.execute(_EVENTS.where(_EV.contact_id.between(lo, hi)))).all()  # Rows unpack like tuples
        by_contact = {cid: list(group) for cid, group in groupby(rows, key=itemgetter(1))}
        await conn.execute(delete(ScoreEntry).where(ScoreEntry.contact_id.in_(batch)))
        new_rows: list[dict[str, Any]] = []
        moves: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for cid in batch:
            contact = contacts[cid]
            events = [_scored(row, items, props) for row in by_contact.get(cid, ())]
            state, entries = service.scorer.rescore(cid, profile_of(contact), events, now, profile_at=contact.created_at)  # type: ignore[arg-type]
            new_rows += ledger_rows(entries)
            report.contacts += 1
            report.events += len(events)
            report.entries += len(entries)
            score = round(state.score, 2)
            if round(contact.score or 0.0, 2) != score:
                report.changed.append(cid)
            model = service.scorer.model_for(contact.region or None)
            temp = "hot" if recently_reactivated(contact, now) else temperature(score, model)  # type: ignore[arg-type]
            stage = contact.stage
            target = stage_for_score(stage, score, model)
            if target is not None:
                moves.append({"contact_id": cid, "from_stage": stage, "to_stage": target, "by": "rule:rescore",
                              "reason": f"重新评分 {score:g}", "at": now})
                stage = target
                report.stage_moves += 1
            if (score, temp, stage) != (contact.score, contact.temperature, contact.stage):
                updates.append({"b_id": cid, "b_score": score, "b_temperature": temp, "b_stage": stage, "b_updated_at": now})
        await insert_merged_rows(conn, new_rows)
        await executemany(conn, _STAGE_INSERT, moves)
        await _CONTACT_UPDATE.run(conn, updates)


_EV = Event.__table__.c
# The time as the driver gives it (text on SQLite, a naive datetime on PostgreSQL) and props as JSON
# text (cast: asyncpg would decode every row's JSON itself), turned into values below: SQLAlchemy's
# own result processing (a regular expression per timestamp, json.loads per row) was a fifth of a
# rescore.
_EVENTS = (select(_EV.id, _EV.contact_id, _EV.type, type_coerce(_EV.occurred_at, String), _EV.item_id, cast(_EV.props, Text))
           .where(_EV.processed.is_(True)).order_by(_EV.contact_id, _EV.occurred_at, _EV.id))
_NO_ITEM = (None, None, (), None)
_EMPTY: Mapping[str, Any] = MappingProxyType({})


class _Props:
    """Event props from their JSON text, each distinct text parsed once (events repeat a handful of
    shapes: a read depth, a CTA name), shared read-only between the events that have it."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.seen: dict[str, Mapping[str, Any]] = {}

    def __call__(self, raw: Any) -> Mapping[str, Any]:
        if raw is None:
            return _EMPTY
        if not isinstance(raw, str):  # a driver that decodes JSON itself
            return MappingProxyType(dict(raw))
        try:
            return self.seen[raw]
        except KeyError:
            pass
        if len(self.seen) >= self.size:
            self.seen.clear()
        value = self.seen[raw] = MappingProxyType(json.loads(raw) or {})
        return value


def _utc(raw: Any) -> dt.datetime:
    """A stored timestamp (naive UTC: SQLite's text, or a PostgreSQL driver's datetime) as aware UTC."""
    value = dt.datetime.fromisoformat(raw) if isinstance(raw, str) else raw
    return value.replace(tzinfo=dt.timezone.utc)


def _scored(row: tuple, items: dict, props: _Props) -> ScoredEvent:
    """(id, contact_id, type, occurred_at, item_id, props) -> ScoredEvent (positional: the hot loop)."""
    event_id, contact_id, kind_, at, item_id, raw = row
    kind, stage, tags, title = items.get(item_id, _NO_ITEM)
    return ScoredEvent(event_id, contact_id, kind_, _utc(at), item_id, kind, stage, tags, props(raw), title)
