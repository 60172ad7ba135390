"""`python -m bot rescore`: replay every contact's event log under the current rules.

Contacts are taken in id ranges; per range, one query reads the events in (contact, time) order,
the pure scorer replays them, and the range's ledger is replaced in one transaction, so a contact's
ledger is never half old, half new. Deterministic: the same log and rules give the same ledger, equal
to what real-time scoring produced for events that arrived in time order.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter
from types import SimpleNamespace
from typing import Any, Callable

from sqlalchemy import bindparam, delete, insert, select, update

from bot.batch import executemany
from bot.clock import Clock, SystemClock
from bot.config import Settings
from bot.db import create_engine, session_factory
from bot.lifecycle import recently_reactivated
from bot.models import Contact, ContentItem, Event, ScoreEntry, StageChange
from bot.scoring.engine import ScoredEvent
from bot.ledger import ledger_insert, ledger_rows
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
    try:
        async with sessions() as session:
            ids = list((await session.scalars(
                select(Contact.id).where(Contact.merged_into_id.is_(None), Contact.erased_at.is_(None)).order_by(Contact.id)
            )).all())
            items = {i.id: (i.kind, i.stage, tuple(i.tags or ()), i.title) for i in (await session.scalars(select(ContentItem))).all()}
        for start in range(0, len(ids), chunk):
            batch = ids[start:start + chunk]
            await _rescore_range(sessions, service, items, batch, now, report)
            if progress:
                progress(min(start + chunk, len(ids)), len(ids))
    finally:
        await engine.dispose()
    return report


_CONTACTS = Contact.__table__.c
_CONTACT_COLUMNS = [_CONTACTS.id, _CONTACTS.score, _CONTACTS.stage, _CONTACTS.temperature, _CONTACTS.created_at, _CONTACTS.profile,
                    *(_CONTACTS[name] for name in PROFILE_FIELDS)]  # region is one of PROFILE_FIELDS
_STAGE_INSERT = insert(StageChange.__table__)
_CONTACT_UPDATE = update(Contact.__table__).where(_CONTACTS.id == bindparam("b_id")).values(
    score=bindparam("b_score"), temperature=bindparam("b_temperature"), stage=bindparam("b_stage"), updated_at=bindparam("b_now"),
)


async def _rescore_range(sessions, service: ScoringService, items: dict, batch: list[int], now: dt.datetime, report: RescoreReport) -> None:
    """One id range in one transaction, in Core statements (no ORM object per contact or row): the
    ledger rows, stage moves and contact updates go in with one executemany each, on SQLite straight
    to the driver (bot/batch.py: the rows converted once, not per execution by SQLAlchemy)."""
    lo, hi = batch[0], batch[-1]
    async with sessions() as session, session.begin():
        conn = await session.connection()
        contacts = {row.id: SimpleNamespace(**row._mapping)
                    for row in (await conn.execute(select(*_CONTACT_COLUMNS).where(_CONTACTS.id.in_(batch))))}
        ev = Event.__table__.c
        rows = (await conn.execute(
            select(ev.id, ev.contact_id, ev.type, ev.occurred_at, ev.item_id, ev.props)
            .where(ev.contact_id.between(lo, hi), ev.processed.is_(True))
            .order_by(ev.contact_id, ev.occurred_at, ev.id)
        )).all()  # Rows unpack like tuples
        by_contact = {cid: list(group) for cid, group in groupby(rows, key=itemgetter(1))}
        await conn.execute(delete(ScoreEntry).where(ScoreEntry.contact_id.in_(batch)))
        new_rows: list[dict[str, Any]] = []
        moves: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for cid in batch:
            contact = contacts[cid]
            events = [_scored(row, items) for row in by_contact.get(cid, ())]
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
                updates.append({"b_id": cid, "b_score": score, "b_temperature": temp, "b_stage": stage, "b_now": now})
        await executemany(conn, ledger_insert(conn.dialect.name), new_rows)
        await executemany(conn, _STAGE_INSERT, moves)
        await executemany(conn, _CONTACT_UPDATE, updates)


_NO_ITEM = (None, None, (), None)


def _scored(row: tuple, items: dict) -> ScoredEvent:
    """(id, contact_id, type, occurred_at, item_id, props) -> ScoredEvent (positional: the hot loop)."""
    event_id, contact_id, kind_, at, item_id, props = row
    kind, stage, tags, title = items.get(item_id, _NO_ITEM)
    return ScoredEvent(event_id, contact_id, kind_, at, item_id, kind, stage, tags, props or {}, title)
