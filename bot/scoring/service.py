"""Scoring wired to the database: the tracker feeds each new event in, ledger rows come out.

State lives in a compact in-memory ScoreBook. A contact first seen by this process is rebuilt by
replaying its events from the log (deterministic, so it equals what real-time scoring produced) up to
its latest ledger entry; a mismatch with the stored ledger means the rules changed without a rescore
and is logged. Rescoring (`python -m bot rescore`) replays every contact the same way.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Iterable

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.models import Contact, ContentItem, Event, ScoreEntry
from bot.scoring.engine import Entry, ScoreBook, ScoredEvent, Scorer
from bot.scoring.rules import ScoringModel, ScoringSettings

log = logging.getLogger("beacon.scoring")

PROFILE_FIELDS = ("name", "company", "title", "phone", "email", "region", "industry", "company_size", "persona")


def profile_of(contact: Contact) -> dict[str, Any]:
    profile = {name: getattr(contact, name) for name in PROFILE_FIELDS}
    profile.update({k: v for k, v in (contact.profile or {}).items() if k not in profile})
    return {k: v for k, v in profile.items() if v not in (None, "")} | {"region": contact.region or None}


class ItemFacts:
    """item id → (kind, stage, tags, title): the little the scorer needs, cached per process."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[str, str, tuple[str, ...], str]] = {}

    async def get(self, session: AsyncSession, item_id: int | None) -> tuple[str | None, str | None, tuple[str, ...], str | None]:
        if item_id is None:
            return None, None, (), None
        if item_id not in self._cache:
            item = await session.get(ContentItem, item_id)
            if item is None:
                return None, None, (), None
            self._cache[item_id] = (item.kind, item.stage, tuple(item.tags or ()), item.title)
        return self._cache[item_id]

    def forget(self) -> None:
        self._cache.clear()


async def scored_event(session: AsyncSession, facts: ItemFacts, event: Event, contact_id: int) -> ScoredEvent:
    kind, stage, tags, title = await facts.get(session, event.item_id)
    return ScoredEvent(
        id=event.id,
        contact_id=contact_id,
        type=event.type,
        at=event.occurred_at,
        item_id=event.item_id,
        item_kind=kind,
        item_stage=stage,
        item_tags=tags,
        props=event.props or {},
        item_title=title,
    )


def ledger_rows(entries: Iterable[Entry]) -> list[dict[str, Any]]:
    return [
        {"contact_id": e.contact_id, "model": e.model, "rule": e.rule, "points": e.points,
         "event_id": e.event_id, "reason": e.reason[:255], "at": e.at}
        for e in entries
    ]


class ScoringService:
    def __init__(self, settings: ScoringSettings) -> None:
        self.scorer = Scorer(settings)
        self.book = ScoreBook(self.scorer)
        self.facts = ItemFacts()

    def model(self, contact: Contact) -> ScoringModel:
        return self.scorer.model_for(contact.region or None)

    async def contact_events(self, session: AsyncSession, contact_id: int, *, exclude: int | None = None) -> list[ScoredEvent]:
        stmt = select(Event).where(Event.contact_id == contact_id, Event.processed.is_(True)).order_by(Event.occurred_at, Event.id)
        events = [e for e in (await session.scalars(stmt)).all() if e.id != exclude]
        return [await scored_event(session, self.facts, e, contact_id) for e in events]

    async def ensure(self, session: AsyncSession, contact: Contact, *, exclude: int | None = None) -> None:
        """Load the contact's state into the book (replaying the log) if this process lacks it."""
        if contact.id in self.book:
            return
        last = await session.scalar(select(func.max(ScoreEntry.at)).where(ScoreEntry.contact_id == contact.id))
        stored = await session.scalar(select(func.coalesce(func.sum(ScoreEntry.points), 0.0)).where(ScoreEntry.contact_id == contact.id))
        events = await self.contact_events(session, contact.id, exclude=exclude)
        # Up to the later of the last ledger entry and the last scored event: real time applied decay
        # lazily up to each event, and the nightly job up to its run; both are in that span.
        until = max([t for t in (last, events[-1].at if events else None) if t is not None], default=contact.created_at)
        state, entries = self.scorer.rescore(contact.id, profile_of(contact), events, until, profile_at=contact.created_at)
        if last is None:
            await self.store(session, entries)  # never scored before: the replay is its ledger
        elif round(state.score - float(stored), 2) != 0:
            log.warning("contact %s: stored ledger %.2f differs from rules %.2f; run `python -m bot rescore`",
                        contact.id, float(stored), state.score)
        self.book.put(state)

    async def on_event(self, session: AsyncSession, contact: Contact, event: Event) -> list[Entry]:
        """Score one new event (and any profile change) for its contact; writes ledger rows."""
        await self.ensure(session, contact, exclude=event.id)
        entries = self.book.update_profile(contact.id, profile_of(contact), event.received_at)
        entries += self.book.apply(await scored_event(session, self.facts, event, contact.id))
        await self.store(session, entries)
        return entries

    async def on_profile(self, session: AsyncSession, contact: Contact, at: dt.datetime) -> list[Entry]:
        await self.ensure(session, contact)
        entries = self.book.update_profile(contact.id, profile_of(contact), at)
        await self.store(session, entries)
        return entries

    async def store(self, session: AsyncSession, entries: list[Entry]) -> None:
        if entries:
            await session.execute(insert(ScoreEntry), ledger_rows(entries))

    def score(self, contact_id: int) -> float:
        return round(self.book.score(contact_id), 2)

    def forget(self, contact_id: int | None = None) -> None:
        """Drop cached state (after a merge or a rescore the log is replayed again)."""
        if contact_id is None:
            self.book = ScoreBook(self.scorer)
        elif contact_id in self.book:
            self.book.remove(contact_id)


async def rescore_contact(service: ScoringService, session: AsyncSession, contact: Contact, until: dt.datetime) -> list[Entry]:
    """Replace the contact's ledger with a replay of its whole log up to `until` (rule changes, merges)."""
    from sqlalchemy import delete

    events = await service.contact_events(session, contact.id)
    state, entries = service.scorer.rescore(contact.id, profile_of(contact), events, until, profile_at=contact.created_at)
    await session.execute(delete(ScoreEntry).where(ScoreEntry.contact_id == contact.id))
    await service.store(session, entries)
    service.forget(contact.id)
    service.book.put(state)
    return entries
