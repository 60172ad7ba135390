"""Scoring wired to the database: the tracker feeds each new event in, ledger rows come out.

State lives in a compact in-memory ScoreBook. A contact first seen by this process is rebuilt by
replaying its events from the log (deterministic, so it equals what real-time scoring produced) up to
its latest ledger entry; a mismatch with the stored ledger means the rules changed without a rescore
and is logged. Rescoring (`python -m bot rescore`) replays every contact the same way.

Inside a tracker batch (bot/tracker_batch.py) the replay data of the batch's new contacts is read in
two queries for all of them (`prefetch`), and ledger rows join the batch's write queue.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.ledger import ledger_insert, ledger_rows
from bot.models import Contact, ContentItem, Event, ScoreEntry
from bot.tracker_batch import BATCH_KEY, CONTACTS_BY_ID
from bot.scoring.engine import ContactScoreState, DayCaps, Entry, ScoreBook, ScoredEvent, Scorer
from bot.scoring.rules import ScoringModel, ScoringSettings

log = logging.getLogger("beacon.scoring")

PROFILE_FIELDS = ("name", "company", "title", "phone", "email", "region", "industry", "company_size", "persona")


def profile_of(contact: Contact) -> dict[str, Any]:
    profile = {name: getattr(contact, name) for name in PROFILE_FIELDS}
    profile.update({k: v for k, v in (contact.profile or {}).items() if k not in profile})
    return {k: v for k, v in profile.items() if v not in (None, "")} | {"region": contact.region or None}


_i = ContentItem.__table__.c
_ITEM_FACTS = select(_i.id, _i.kind, _i.stage, _i.tags, _i.title).where(_i.id.in_(bindparam("ids", expanding=True)))


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

    def cached(self, item_id: int | None) -> tuple[str | None, str | None, tuple[str, ...], str | None] | None:
        if item_id is None:
            return None, None, (), None
        return self._cache.get(item_id)

    async def load(self, session: AsyncSession, item_ids: set[int]) -> None:
        """Cache the facts of several items in one query."""
        missing = [i for i in item_ids if i is not None and i not in self._cache]
        if missing:
            rows = await (await session.connection()).execute(_ITEM_FACTS, {"ids": missing})
            for item_id, kind, stage, tags, title in rows:
                self._cache[item_id] = (kind, stage, tuple(tags or ()), title)

    def forget(self) -> None:
        self._cache.clear()


async def scored_event(session: AsyncSession, facts: ItemFacts, event: Any, contact_id: int) -> ScoredEvent:
    known = facts.cached(event.item_id)
    kind, stage, tags, title = known if known is not None else await facts.get(session, event.item_id)
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


# Built once (building one costs about as much as SQLite running it); ids as an expanding parameter.
_c, _led, _ev = Contact.__table__.c, ScoreEntry.__table__.c, Event.__table__.c
_LIVE_SCORES = select(_c.id, _c.score).where(_c.id.in_(bindparam("ids", expanding=True)), _c.merged_into_id.is_(None),
                                           _c.erased_at.is_(None))
_LEDGER_TOTALS = (select(_led.contact_id, func.max(_led.at), func.coalesce(func.sum(_led.points), 0.0))
                  .where(_led.contact_id.in_(bindparam("ids", expanding=True))).group_by(_led.contact_id))
_REPLAY_EVENTS = (select(_ev.id, _ev.contact_id, _ev.type, _ev.occurred_at, _ev.item_id, _ev.props)
                  .where(_ev.contact_id.in_(bindparam("ids", expanding=True)), _ev.processed.is_(True))
                  .order_by(_ev.contact_id, _ev.occurred_at, _ev.id))


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

    async def prefetch(self, session: AsyncSession, contact_ids: set[int]) -> dict[int, tuple[Any, Any, list[ScoredEvent]]]:
        """What `ensure` reads, for every contact not in the book, in two queries: contact id →
        (last ledger time, ledger sum, processed events in time order)."""
        ids = [cid for cid in contact_ids if cid not in self.book]
        if not ids:
            return {}
        conn = await session.connection()
        found: dict[int, tuple[Any, Any, list[ScoredEvent]]] = {cid: (None, 0.0, []) for cid in ids}
        for cid, last, stored in await conn.execute(_LEDGER_TOTALS, {"ids": ids}):
            found[cid] = (last, stored, [])
        rows = (await conn.execute(_REPLAY_EVENTS, {"ids": ids})).all()
        if rows:
            await self.facts.load(session, {r.item_id for r in rows})
            for row in rows:
                found[row.contact_id][2].append(await scored_event(session, self.facts, row, row.contact_id))
        return found

    async def ensure(self, session: AsyncSession, contact: Contact, *, exclude: int | None = None) -> None:
        """Load the contact's state into the book (replaying the log) if this process lacks it."""
        batch = session.info.get(BATCH_KEY)
        if batch is not None:
            self.remember(batch, contact.id)
        if contact.id in self.book:
            return
        prefetched = batch.prepared.get("scoring", {}).pop(contact.id, None) if batch is not None else None
        if prefetched is not None:
            last, stored, events = prefetched
            events = [e for e in events if e.id != exclude]
        else:
            last = await session.scalar(select(func.max(ScoreEntry.at)).where(ScoreEntry.contact_id == contact.id))
            stored = await session.scalar(select(func.coalesce(func.sum(ScoreEntry.points), 0.0)).where(ScoreEntry.contact_id == contact.id))
            events = await self.contact_events(session, contact.id, exclude=exclude)
        state, entries = self._replay(contact, last, events)
        if last is None:
            await self.store(session, entries)  # never scored before: the replay is its ledger
        elif round(state.score - float(stored), 2) != 0:
            log.warning("contact %s: stored ledger %.2f differs from rules %.2f; run `python -m bot rescore`",
                        contact.id, float(stored), state.score)
        self.book.put(state)

    def _replay(self, contact: Contact, last: dt.datetime | None, events: list[ScoredEvent]) -> tuple[ContactScoreState, list[Entry]]:
        # Up to the later of the last ledger entry and the last scored event: real time applied decay
        # lazily up to each event, and the nightly job up to its run; both are in that span.
        until = max([t for t in (last, events[-1].at if events else None) if t is not None], default=contact.created_at)
        return self.scorer.rescore(contact.id, profile_of(contact), events, until, profile_at=contact.created_at)

    async def warm(self, session: AsyncSession, contact_ids: set[int]) -> int:
        """Load into the book, from a read-only `session`, the contacts of `contact_ids` it lacks or holds
        out of date (`check`), ahead of the tracker's write transaction. Returns how many were loaded.

        Replaying a contact's history is the costliest thing scoring does (all its events and its
        ledger read, every event scored again); inside the tracker's transaction it held SQLite's write
        lock meanwhile, and the link path's group commit waited behind it. The write transaction then
        finds these contacts in the book. Only a state that agrees with what the same snapshot stored
        is kept (ledger sum and `contacts.score`); the rest (never scored, merged, erased, disagreeing)
        is left to `ensure`, which writes or warns as before. A score written after this read (the
        nightly decay) is caught by `check` in the write transaction."""
        if not contact_ids:
            return 0
        scores = (await session.execute(_LIVE_SCORES, {"ids": list(contact_ids)})).all()
        for row in scores:
            self.check(row)  # type: ignore[arg-type]  # (id, score) is all it reads
        missing = [row.id for row in scores if row.id not in self.book]
        if not missing:
            return 0  # the usual pass: every contact already in the book and up to date
        live = {contact.id: contact for contact in (await session.scalars(CONTACTS_BY_ID, {"ids": missing})).all()}
        found = await self.prefetch(session, set(live))
        loaded = 0
        for contact_id, (last, stored, events) in found.items():
            contact = live[contact_id]
            if last is None:
                continue
            state, _entries = self._replay(contact, last, events)
            score = round(state.score, 2)
            if score != round(float(stored), 2) or score != round(contact.score or 0.0, 2):
                continue
            self.book.put(state)
            loaded += 1
        return loaded

    def check(self, contact: Contact) -> None:
        """Drop the contact's cached state if its stored score disagrees with it: another process wrote
        to its ledger since (the nightly decay job runs wherever its run was claimed, `rescore` is a
        process of its own). Every writer of the ledger sets `contacts.score` in the same transaction,
        so `contact`, read in this transaction, tells. The state is replayed from the log on `ensure`."""
        if contact.id in self.book and round(contact.score or 0.0, 2) != self.score(contact.id):
            log.info("contact %s: score changed elsewhere (%.2f, cached %.2f); replaying its log",
                     contact.id, contact.score or 0.0, self.score(contact.id))
            self.forget(contact.id)

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
            batch = session.info.get(BATCH_KEY)
            if batch is not None:
                batch.add_ledger(ledger_rows(entries))  # written with the batch, before any read of the ledger
            else:
                await session.execute(ledger_insert(session.bind.dialect.name), ledger_rows(entries))  # Core: no ORM bulk path

    def remember(self, batch: Any, contact_id: int) -> None:
        """Keep the contact's state as it was before the batch touched it (see `restore`)."""
        saved = batch.prepared.setdefault("scoring_before", {})
        if contact_id not in saved:
            saved[contact_id] = self._copy(contact_id) if contact_id in self.book else None

    def restore(self, batch: Any) -> None:
        """The batch was rolled back: put back the states it changed, exactly as they were."""
        for contact_id, state in batch.prepared.get("scoring_before", {}).items():
            if state is None:
                self.forget(contact_id)
            else:
                self.book.put(state)

    def _copy(self, contact_id: int) -> ContactScoreState:
        state = self.book.get(contact_id)
        if state.caps is not None:  # the book hands out its own counters: copy them
            caps = DayCaps(state.caps.day)
            caps.earned = state.caps.earned
            caps.per_item = dict(state.caps.per_item) if state.caps.per_item is not None else None
            state.caps = caps
        if state.totals is not None:
            state.totals = dict(state.totals)
        return state

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

    batch = session.info.get(BATCH_KEY)
    if batch is not None:
        service.remember(batch, contact.id)
    events = await service.contact_events(session, contact.id)
    state, entries = service.scorer.rescore(contact.id, profile_of(contact), events, until, profile_at=contact.created_at)
    await session.execute(delete(ScoreEntry).where(ScoreEntry.contact_id == contact.id))
    await service.store(session, entries)
    service.forget(contact.id)
    service.book.put(state)
    return entries
