"""Nightly scoring jobs: inactivity decay and dormancy, in chunks so the write lock is held briefly."""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select

from bot.context import Context
from bot.lifecycle import mark_dormant, recently_reactivated
from bot.models import Contact
from bot.scoring.stages import temperature

log = logging.getLogger("beacon.scoring.jobs")
CHUNK = 1000


async def decay_scores(ctx: Context) -> None:
    """Bring every quiet contact's decay up to now (real time applies it lazily on the next event)."""
    rt = ctx.runtime
    service = rt.services["scoring"]
    now = ctx.clock.now()
    quiet_days = min(m.decay_after_days for m in rt.settings.scoring.models)
    # Quiet contacts only (the scorer's definition of activity, kept in last_activity_at); a contact
    # never active has no behavior points to lose.
    ids = list((await ctx.session.scalars(
        select(Contact.id).where(
            Contact.last_activity_at < now - dt.timedelta(days=quiet_days),
            Contact.merged_into_id.is_(None),
            Contact.erased_at.is_(None),
        ).order_by(Contact.id)
    )).all())
    decayed = 0
    for start in range(0, len(ids), CHUNK):
        contacts = (await ctx.session.scalars(select(Contact).where(Contact.id.in_(ids[start:start + CHUNK])))).all()
        for contact in contacts:
            await service.ensure(ctx.session, contact)
            entries = service.book.decay(contact.id, now)
            if entries:
                await service.store(ctx.session, entries)
                decayed += 1
                contact.score = service.score(contact.id)
                if not recently_reactivated(contact, now):
                    contact.temperature = temperature(contact.score, service.model(contact))
        await ctx.session.flush()
    log.info("decay: %d of %d quiet contacts lost points", decayed, len(ids))


async def mark_dormant_customers(ctx: Context) -> None:
    """Customers whose last payment is older than [lifecycle].dormant_after_days become dormant."""
    moved = await mark_dormant(ctx.runtime, ctx.session, ctx.clock.now())
    log.info("dormancy: %d customers became dormant", moved)
