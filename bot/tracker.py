"""The tracker: behind the hot path, it attributes each new behavior event to a contact.

One process at a time holds the "tracker" lease and works through unprocessed events in id order:
- an anonymous browser opening a link made for a contact who has no browser yet becomes that contact;
- a browser that is not the share's person is a *forward*: the referrer gets a `forward` event, and the
  chain (share → child share per viewer) records who passed it to whom;
- a gate form identifies the browser: by phone to an existing contact (merging if needed), else a new
  contact attributed to the referrer, owned by the sharing rep.
Hooks (scoring, alerts) run on every processed event in the same transaction. A hook that caches
state between passes carries `lease_taken()`, called whenever this process takes the lease over (the
cache may be stale: another process was the tracker in between).

A batch is processed set-based (bot/tracker_batch.py): one query per table to preload what its events
refer to, attribution in memory, writes queued and flushed together. Gate forms (identity, merges) take
the ORM path below, one at a time. If any event of a batch fails, the batch is rolled back and done
again one event at a time, each in its own savepoint: a failing event is logged and marked processed,
the others commit. So hooks may run twice for an event whose transaction was rolled back (as after any
failed commit): keep their effects in the session. Hooks see the session as before: the batch's
queued writes are flushed before each hook that is not marked `batch_aware`, and that hook runs with
no batch in `session.info`, so everything it calls executes directly. A batch-aware hook (scoring) may
carry `prepare(session, batch)`, called when a batch is loaded to preload what it needs for the batch's
events, and `abandon(batch)`, called when a batch is rolled back to drop in-memory state it changed.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from sqlalchemy import Integer, bindparam, false, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot import notify
from bot.db import unavailable_reason, yield_to_writer
from bot.identity import add_identity, find_by_identity, live_contact, merge_contacts, normalize_phone
from bot.inbox import insert_ignore
from bot.leases import hold_lease, holds_lease
from bot.models import Contact, Event, Share, Visitor
from bot.tracker_batch import TrackerBatch, batch_sessions, forward_params
from bot.worker import PollingWorker

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger("beacon.tracker")

Hook = Callable[[AsyncSession, Event], Awaitable[None]]


# Events per tracker transaction and its time budget, by database. SQLite: the transaction holds the
# one write lock, and the link path's group commit waits behind it; at most 50 events or about 20 ms
# keep that wait short. PostgreSQL: the transaction holds row locks only, so batches may be longer,
# which shares each batch's preloads over more events (on the links benchmark the tracker then keeps
# up at full load instead of falling thousands of events behind).
BATCH_BUDGET = {"sqlite": (50, 0.02), "postgresql": (200, 0.2)}
# Woken by new events, the tracker leaves at least this long between the end of a pass that found events
# and the start of the next (PollingWorker.settle_s): the first event after a quiet spell goes at once.
SETTLE_S = 0.02


class Tracker(PollingWorker):
    name = "tracker"
    settle_s = SETTLE_S
    channel = notify.TRACKER

    def __init__(self, runtime: "Runtime", *, batch: int = 50, lease_s: float = 30.0, max_batch_s: float = 0.02,
                 batched: bool = True) -> None:
        super().__init__(runtime)
        self.poll_s = runtime.settings.tracker.poll_s
        self.batch = batch
        self.lease_s = lease_s
        self.max_batch_s = max_batch_s
        self.batched = batched  # False: every event in its own savepoint (what a failed batch falls back to)
        self.hooks: list[Hook] = []
        self._limit = batch  # events per batched transaction, adapted to max_batch_s
        self.fallbacks = 0  # batches that failed and were done again one event at a time
        self.merged: set[int] = set()  # contacts whose history changed in this pass: rescored by the hook
        self._batch_sessions = batch_sessions(runtime.engine)  # batched passes: bot.tracker_batch.BatchSession

    def runs_here(self) -> bool:
        return self.rt.settings.tracker.enabled

    def runs_elsewhere(self) -> bool:
        return not holds_lease(self.rt, "tracker")  # the process holding the lease processes the events

    async def drain(self) -> int:
        """Process all unprocessed events (if this process holds the lease). Returns how many."""
        handled = 0
        while not self.stopping and await hold_lease(self.rt, "tracker", self.lease_s, on_acquire=self._lease_taken):
            began = time.perf_counter()
            done, more = await (self._pass_batched() if self.batched else self._pass_one_by_one())
            handled += done
            if done:
                self.rt.metrics.tracker_batches.inc()
                self.rt.metrics.tracker_events.inc(done)
            if not more:
                break  # the backlog is done: what comes next within `settle_s` joins the next batch
            # The edge comes first (bot.edge): people waiting for a page, WeCom for an answer.
            self.rt.metrics.tracker_gave_way.inc(await self.give_way(time.perf_counter() - began))
        if handled:
            self.rt.outbox.wake()
        return handled

    def _lease_taken(self) -> None:
        """This process just became the tracker (at start, or taking over from another process): what
        the hooks cached as the tracker before may be out of date, since another process was the tracker
        in between. Hooks with such state carry `lease_taken()` (scoring: forget the ScoreBook)."""
        for hook in self.hooks:
            taken = getattr(hook, "lease_taken", None)
            if taken is not None:
                taken()

    async def _next_events(self, session: AsyncSession, limit: int | None = None) -> list[Event]:
        return list((await session.scalars(unprocessed_events(limit or self.batch))).all())

    async def _pass_one_by_one(self) -> tuple[int, bool]:
        """(events processed, whether more may be waiting) — as `_pass_batched`."""
        async with self.rt.sessions() as session, session.begin():
            events = await self._next_events(session)
            for event in events:
                await self._process(session, event)
        return len(events), len(events) == self.batch

    async def _process(self, session: AsyncSession, event: Event) -> None:
        event_id, event_type = event.id, event.type  # a rolled-back savepoint expires the object
        try:
            async with session.begin_nested():
                await self.attribute(session, event)
                for hook in self.hooks:
                    await hook(session, event)
        except Exception:
            log.exception("event %s (%s) could not be processed; left unattributed", event_id, event_type)
        event.processed = True

    async def _pass_batched(self) -> tuple[int, bool]:
        """(events processed, whether more may be waiting: a full fetch, or a batch out of time)."""
        merged = set(self.merged)
        batch: TrackerBatch | None = None
        limit = min(self._limit, self.batch)
        if await self._warm(limit) == 0:
            return 0, False  # nothing to do: no write transaction (on SQLite, the write lock) for it
        try:
            async with self._batch_sessions() as session, session.begin():
                events = await self._next_events(session, limit)
                if not events:
                    return 0, False
                batch = TrackerBatch(self, session, events)
                await batch.install()
                try:
                    done = await self._run_batch(batch)
                    await batch.flush()
                    await batch.write_contacts()
                finally:
                    batch.uninstall()
            return done, done < len(events) or len(events) == limit
        except Exception as exc:
            if batch is None:
                raise  # no batch to blame: the pass fails, as any database trouble does
            self.merged.clear()
            self.merged.update(merged)
            for hook in self.hooks:
                abandon = getattr(hook, "abandon", None)
                if abandon is not None:
                    abandon(batch)
            if unavailable_reason(exc) is not None:
                raise  # the database, not an event: the pass fails, and the next one takes the batch again
            log.warning("a batch of %d events failed; processing them one by one", len(batch.events), exc_info=True)
            self.fallbacks += 1
            return await self._pass_one_by_one()

    async def _warm(self, limit: int) -> int:
        """Read, in a read-only session, which contacts the next `limit` events are probably about, and
        return how many unprocessed events there are (up to `limit`); events committed after this read
        wake the worker's next pass (PollingWorker.run). Hooks that cache per-contact state (scoring's
        book) load it for those contacts here, before the write transaction takes the lock: on SQLite,
        loading it inside held the write lock for tens of milliseconds per cold contact. A guess:
        attribution may find other contacts, which the hooks then load in the transaction."""
        warmers = [warm for hook in self.hooks if (warm := getattr(hook, "warm", None)) is not None]
        if warmers:
            await yield_to_writer(self.rt.engine)  # replays are CPU: after any write transaction in progress
        async with self.rt.read_sessions() as session:
            rows = (await session.execute(likely_contacts(limit))).all()
            ids = {cid for row in rows for cid in row if cid is not None}
            for warm in warmers:
                warmed = await warm(session, ids)
                if warmed:
                    self.rt.metrics.tracker_warmed.inc(warmed)
        return len(rows)

    async def _run_batch(self, batch: TrackerBatch) -> int:
        session, events = batch.session, batch.events
        deadline = time.perf_counter() + self.max_batch_s
        while batch.index < len(events):
            event = events[batch.index]
            if event.type == "form_submit" and event.visitor_id is not None:
                # Identity, maybe a merge: the ORM path, with everything queued so far written first.
                await batch.flush()
                await self.attribute(session, event)
                await session.flush()
                for obj in list(session.identity_map.values()):
                    if isinstance(obj, (Visitor, Share)):
                        session.expunge(obj)  # later bindings in this batch are written past the ORM
                batch.resync()
                await batch.load()
            else:
                if batch.stale:
                    await batch.load()
                await self._attribute_batched(batch, event)
            for hook in self.hooks:
                if getattr(hook, "batch_aware", False):
                    await hook(session, event)
                else:
                    await batch.call_unaware(hook, event)
            batch.set_processed(event)
            batch.index += 1
            if time.perf_counter() > deadline:
                break  # the rest waits for the next transaction
        # The next batch's size: about what fits in the time budget (loading more is wasted work).
        if batch.index < len(events):
            self._limit = max(4, batch.index + batch.index // 2)
        elif len(events) == self._limit:
            self._limit = min(self.batch, self._limit * 2)
        return batch.index

    async def _attribute_batched(self, batch: TrackerBatch, event: Event) -> None:
        """`attribute` for everything but gate forms, from the batch's preloads."""
        visitor = await batch.visitor(event.visitor_id) if event.visitor_id else None
        share = await batch.share(event.share_id) if event.share_id else None
        if event.contact_id is None and visitor is not None:
            if visitor.contact_id is not None:
                contact = await batch.live_contact(visitor.contact_id)
                batch.set_contact(event, contact.id if contact else None)
            elif share is not None and share.contact_id is not None and not await batch.contact_has_browser(share.contact_id):
                batch.bind_visitor(visitor, share.contact_id)
                batch.set_contact(event, share.contact_id)
        if event.type != "open" or share is None or visitor is None:
            return
        if share.contact_id is not None:
            is_forward = event.contact_id != share.contact_id
        elif share.visitor_id is not None:
            is_forward = visitor.id != share.visitor_id
        else:
            return  # a channel link
        if not is_forward:
            return
        referrer = share.contact_id
        if referrer is None and share.visitor_id is not None:
            sharer = await batch.visitor(share.visitor_id)
            referrer = sharer.contact_id if sharer is not None else None
        batch.add_forward(forward_params(share, visitor.id, event.contact_id, referrer, event.occurred_at, self.rt.clock.now()))

    async def attribute(self, session: AsyncSession, event: Event) -> None:
        now = self.rt.clock.now()
        visitor = await session.get(Visitor, event.visitor_id) if event.visitor_id else None
        share = await session.get(Share, event.share_id) if event.share_id else None
        if event.contact_id is None and visitor is not None:
            if visitor.contact_id is not None:
                contact = await live_contact(session, visitor.contact_id)
                event.contact_id = contact.id if contact else None
            elif share is not None and share.contact_id is not None and not await _has_browser(session, share.contact_id):
                await bind_visitor(session, visitor, share.contact_id)
                event.contact_id = share.contact_id
        if event.type == "form_submit" and visitor is not None:
            await self._identify(session, event, visitor, share, now)
        if event.type == "open" and share is not None and visitor is not None:
            await self._detect_forward(session, event, visitor, share, now)

    async def _identify(self, session: AsyncSession, event: Event, visitor: Visitor, share: Share | None, now: dt.datetime) -> None:
        props = event.props or {}
        phone = normalize_phone(str(props.get("phone", "")))
        by_phone = await find_by_identity(session, "phone", phone) if phone else None
        current = await live_contact(session, visitor.contact_id) if visitor.contact_id else None
        if by_phone is not None and current is not None and by_phone.id != current.id:
            await merge_contacts(session, current.id, by_phone.id, reason="gate form: same phone", now=now)
            self.merged.add(by_phone.id)
            contact = by_phone
        else:
            contact = by_phone or current
        if contact is None:
            referrer = await referrer_of(session, share) if share is not None else None
            contact = Contact(
                owner_userid=share.rep_userid if share else None,
                channel_id=share.channel_id if share else None,
                referrer_contact_id=referrer,
                created_at=now,
                updated_at=now,
            )
            session.add(contact)
            await session.flush()
        for name in ("name", "company", "title"):
            value = str(props.get(name) or "").strip()
            if value:
                setattr(contact, name, value[:128])
        if phone:
            contact.phone = phone
            await add_identity(session, contact, "phone", phone)
        contact.updated_at = now
        if visitor.contact_id != contact.id:
            await bind_visitor(session, visitor, contact.id)
        event.contact_id = contact.id

    async def _detect_forward(self, session: AsyncSession, event: Event, visitor: Visitor, share: Share, now: dt.datetime) -> None:
        if share.contact_id is not None:
            is_forward = event.contact_id != share.contact_id
        elif share.visitor_id is not None:
            is_forward = visitor.id != share.visitor_id
        else:
            return  # a channel link: whoever opens it is simply a visitor of that channel
        if not is_forward:
            return
        # The direct referrer gets the credit: the share's contact, or the viewer who passed their page
        # on (by their browser while anonymous; bind_visitor hands it to them once they identify).
        referrer = share.contact_id
        if referrer is None and share.visitor_id is not None:
            sharer = await session.get(Visitor, share.visitor_id)
            referrer = sharer.contact_id if sharer is not None else None
        stmt = insert_ignore(session.bind.dialect.name, Event.__table__, "idempotency_key")
        await session.execute(stmt, forward_params(share, visitor.id, event.contact_id, referrer, event.occurred_at, now))


BACKLOG_COUNT_CAP = 100_000  # /healthz and /metrics count the unprocessed events up to this many
# When the oldest waiting event arrived: the first entry of the partial index (ids grow as events arrive).
OLDEST_UNPROCESSED = select(Event.received_at).where(Event.processed == false()).order_by(Event.id).limit(1)


async def backlog(session: AsyncSession, now: dt.datetime, cap: int = BACKLOG_COUNT_CAP) -> dict[str, Any]:
    """Events stored but not yet attributed and scored (counted up to `cap`), and how long the oldest
    has waited (seconds; 0 with none). Both from the partial index on unprocessed events, whose
    first entry is the oldest: a load balancer polling /healthz during a backlog of millions reads
    at most `cap` index entries and one row, not every waiting row for its time."""
    unprocessed = select(Event.id).where(Event.processed == false())
    count = await session.scalar(select(func.count()).select_from(unprocessed.limit(cap).subquery()))
    oldest = await session.scalar(OLDEST_UNPROCESSED)
    return {"unprocessed": int(count or 0), "lag_s": round(max(0.0, (now - oldest).total_seconds()), 1) if oldest else 0.0}


def _likely_contacts() -> Any:
    ev = Event.__table__.c
    upcoming = (select(ev.contact_id, ev.visitor_id, ev.share_id).where(ev.processed == false()).order_by(ev.id)
                .limit(bindparam("limit", type_=Integer)).subquery())
    vis, sh = Visitor.__table__.c, Share.__table__.c
    return (
        select(upcoming.c.contact_id, vis.contact_id, sh.contact_id)
        .select_from(upcoming)
        .outerjoin(Visitor.__table__, vis.id == upcoming.c.visitor_id)
        .outerjoin(Share.__table__, sh.id == upcoming.c.share_id)
    )


# Built once and given their limit with `.params()`: building a statement costs about as much as
# SQLite running it, and the tracker runs both on every pass.
_LIKELY_CONTACTS = _likely_contacts()
# `= false`, not `IS false`: only the former matches the partial index.
_UNPROCESSED = select(Event).where(Event.processed == false()).order_by(Event.id).limit(bindparam("limit", type_=Integer))


def likely_contacts(limit: int) -> Any:
    """The contacts the oldest `limit` unprocessed events are probably about, before attribution: their
    own, their browser's and their share's (rows of three ids, any of them NULL)."""
    return _LIKELY_CONTACTS.params(limit=limit)


def unprocessed_events(limit: int) -> Any:
    """The oldest events the tracker has not processed yet (served by the partial ix_events_unprocessed)."""
    return _UNPROCESSED.params(limit=limit)


async def _has_browser(session: AsyncSession, contact_id: int) -> bool:
    return await session.scalar(select(Visitor.id).where(Visitor.contact_id == contact_id).limit(1)) is not None


async def bind_visitor(session: AsyncSession, visitor: Visitor, contact_id: int) -> None:
    """The browser belongs to the contact; its earlier anonymous events do too."""
    visitor.contact_id = contact_id
    # Processed again so that they are scored for the contact (attribution is idempotent).
    await session.execute(
        update(Event)
        .where(Event.visitor_id == visitor.id, Event.contact_id.is_(None))
        .values(contact_id=contact_id, processed=False)
    )


async def referrer_of(session: AsyncSession, share: Share) -> int | None:
    """Who passed this link on: the share's own contact, else the nearest identified viewer up the chain."""
    current: Share | None = share
    for _ in range(20):
        if current is None:
            return None
        if current.contact_id is not None:
            return current.contact_id
        if current.visitor_id is not None:
            viewer = await session.get(Visitor, current.visitor_id)
            if viewer is not None and viewer.contact_id is not None:
                return viewer.contact_id
        current = await session.get(Share, current.parent_share_id) if current.parent_share_id else None
    return None


async def referral_chain(session: AsyncSession, token: str) -> list[dict[str, Any]]:
    """The path from the original share to this (child) token: who forwarded to whom."""
    chain: list[dict[str, Any]] = []
    share = await session.scalar(select(Share).where(Share.token == token))
    while share is not None and len(chain) < 50:
        viewer = await session.get(Visitor, share.visitor_id) if share.visitor_id else None
        chain.append(
            {
                "share_id": share.id,
                "contact_id": share.contact_id or (viewer.contact_id if viewer else None),
                "visitor_id": share.visitor_id,
                "rep": share.rep_userid,
            }
        )
        share = await session.get(Share, share.parent_share_id) if share.parent_share_id else None
    return list(reversed(chain))
