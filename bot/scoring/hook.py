"""The tracker hook that scores each attributed event in real time and applies what it means."""

from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession

from bot.identity import live_contact
from bot.lifecycle import after_scoring
from bot.models import Event
from bot.scoring.service import rescore_contact

if TYPE_CHECKING:
    from bot.runtime import Runtime


def scoring_hook(rt: "Runtime") -> Callable[[AsyncSession, Event], Awaitable[None]]:
    async def score_event(session: AsyncSession, event: Event) -> None:
        if event.contact_id is None:
            return  # anonymous so far; scored when the browser is identified
        contact = await live_contact(session, event.contact_id)
        if contact is None or contact.erased_at is not None:
            return
        event.contact_id = contact.id
        service = rt.services["scoring"]
        if contact.id in rt.tracker.merged:  # two histories became one: replay it
            rt.tracker.merged.discard(contact.id)
            await rescore_contact(service, session, contact, event.occurred_at)
        await service.on_event(session, contact, event)
        await after_scoring(rt, session, contact, event, rt.clock.now())

    return score_event
