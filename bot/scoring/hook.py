"""The tracker hook that scores each attributed event in real time and applies what it means."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession

from bot.identity import live_contact
from bot.lifecycle import after_scoring
from bot.models import Event
from bot.scoring.service import rescore_contact
from bot.tracker_batch import BATCH_KEY, TrackerBatch

if TYPE_CHECKING:
    from bot.runtime import Runtime


def scoring_hook(rt: "Runtime") -> Callable[[AsyncSession, Event], Awaitable[None]]:
    async def score_event(session: AsyncSession, event: Event) -> None:
        if event.contact_id is None:
            return  # anonymous so far; scored when the browser is identified
        batch: TrackerBatch | None = session.info.get(BATCH_KEY)
        if batch is not None:
            contact = await batch.live_contact(event.contact_id)
        else:
            contact = await live_contact(session, event.contact_id)
        if contact is None or contact.erased_at is not None:
            return
        if batch is not None:
            batch.set_contact(event, contact.id)
        else:
            event.contact_id = contact.id
        service = rt.services["scoring"]
        service.check(contact)
        if contact.id in rt.tracker.merged:  # two histories became one: replay it
            rt.tracker.merged.discard(contact.id)
            await rescore_contact(service, session, contact, event.occurred_at)
        entries = await service.on_event(session, contact, event)
        if batch is not None:  # what alerts would read back from the ledger (bot/alerts.py _add_event)
            batch.prepared.setdefault("ledger", {})[(contact.id, event.id)] = [
                (e.reason[:255], e.points) for e in entries if e.event_id == event.id
            ]
        await after_scoring(rt, session, contact, event, rt.clock.now())

    async def prepare(session: AsyncSession, batch: TrackerBatch) -> None:
        """The replay data of the batch's contacts that this process has not scored yet, and the
        facts of the batch's items: a few queries for the whole batch instead of some per contact."""
        service = rt.services["scoring"]
        await service.facts.load(session, {e.item_id for e in batch.events[batch.index:] if e.item_id is not None})
        live = {batch.live_contact_id(cid) for cid in batch.contacts}
        live.discard(None)
        for cid in live:
            service.check(batch.contacts[cid])  # type: ignore[index,arg-type]
        batch.prepared["scoring"] = await service.prefetch(session, live)  # type: ignore[arg-type]

    async def warm(session: AsyncSession, contact_ids: set[int]) -> int:
        """Before the write transaction, in a read-only session: replay the next events' contacts."""
        return await rt.services["scoring"].warm(session, contact_ids)

    def abandon(batch: TrackerBatch) -> None:
        """The batch was rolled back: the book must not keep what it applied."""
        rt.services["scoring"].restore(batch)

    def lease_taken() -> None:
        """Another process may have scored since this one last was the tracker: start from the log."""
        rt.services["scoring"].forget()

    hook: Any = score_event
    hook.batch_aware = True  # keeps its reads and writes in the tracker's batch (bot/tracker_batch.py)
    hook.prepare = prepare
    hook.warm = warm
    hook.abandon = abandon
    hook.lease_taken = lease_taken
    return hook
