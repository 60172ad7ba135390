"""The SOP jobs: `sop-tick` (every minute) and `sop-quiet-check` (daily).

`sop-tick` enrolls contacts that reached a playbook's stage, then advances every enrollment whose next
step is due: stop conditions first, then the step (task + sends), then the next step's due time, all
in the tick's one unit of work. A step that comes due outside business time (a late tick after
downtime) waits for the next business morning; steps missed during downtime are done once each.
On PostgreSQL due enrollments are locked with SKIP LOCKED, so overlapping ticks never run a step twice.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select

from bot.context import Context
from bot.models import Contact, Enrollment
from bot.sop.calendar import BusinessCalendar
from bot.sop.definition import PlaybookDef
from bot.sop.enroll import stop_enrollments, stop_reason
from bot.sop.steps import run_step
from bot.sop.triggers import enroll_by_stage, enroll_quiet, enroll_tagged, latest_signals, sop_service

log = logging.getLogger("beacon.sop")
MAX_PASSES = 100  # a tick handles at most MAX_PASSES × [sop] batch enrollments; the rest wait a minute


async def sop_tick(ctx: Context) -> None:
    """Enroll by stage, then advance due enrollment steps."""
    session, now, settings = ctx.session, ctx.clock.now(), ctx.settings
    calendar = BusinessCalendar.from_settings(settings)
    service = sop_service(ctx.runtime)
    playbooks = await service.active(session, refresh=True)
    enrolled = await enroll_by_stage(session, playbooks, calendar, now=now,
                                     lookback=dt.timedelta(hours=settings.sop.stage_lookback_hours))
    steps = stopped = 0
    for _ in range(MAX_PASSES):
        due = list((await session.scalars(
            select(Enrollment)
            .where(Enrollment.status == "active", Enrollment.next_due_at <= now)
            .order_by(Enrollment.next_due_at, Enrollment.id)
            .limit(settings.sop.batch)
            .with_for_update(skip_locked=True)
        )).all())
        if not due:
            break
        contact_ids = sorted({e.contact_id for e in due})
        contacts = {c.id: c for c in (await session.scalars(select(Contact).where(Contact.id.in_(contact_ids)))).all()}
        signals = await latest_signals(session, contact_ids)
        for enrollment in due:
            definition = await service.definition(session, enrollment.playbook_id)
            contact = contacts.get(enrollment.contact_id)
            if definition is None:
                await stop_enrollments(session, [enrollment], "playbook_invalid", now=now)
                stopped += 1
                continue
            reason = stop_reason(definition, enrollment, contact,
                                 replied_at=signals.get((enrollment.contact_id, "message")),
                                 left_at=signals.get((enrollment.contact_id, "contact_deleted")))
            if reason or contact is None:
                await stop_enrollments(session, [enrollment], reason or "erased", now=now)
                stopped += 1
                continue
            steps += await advance(ctx, enrollment, definition, contact, calendar)
        await session.flush()
    if enrolled or steps or stopped:
        log.info("sop-tick: %d enrolled by stage, %d steps done, %d enrollments stopped", enrolled, steps, stopped)


async def advance(ctx: Context, enrollment: Enrollment, definition: PlaybookDef, contact: Contact,
                  calendar: BusinessCalendar) -> int:
    """Do every step of `enrollment` that is due now (usually one); returns how many."""
    now = ctx.clock.now()
    if not calendar.is_business_time(now):
        enrollment.next_due_at = calendar.next_business_time(now)
        return 0
    done = 0
    while enrollment.next_due_at is not None and enrollment.next_due_at <= now:
        index = enrollment.next_step
        if index >= len(definition.steps):  # nothing left (cannot happen unless edited by hand): finish it
            enrollment.status, enrollment.next_due_at, enrollment.finished_at = "done", None, now
            break
        await run_step(ctx, enrollment, definition, contact, index, enrollment.next_due_at)
        done += 1
        enrollment.next_step = index + 1
        if enrollment.next_step >= len(definition.steps):
            enrollment.status, enrollment.next_due_at, enrollment.finished_at = "done", None, now
            break
        step = definition.steps[enrollment.next_step]
        enrollment.next_due_at = calendar.step_due(enrollment.started_at, step.day, step.at)
    return done


async def sop_quiet_check(ctx: Context) -> None:
    """Daily: enroll contacts quiet for N days, and contacts carrying a playbook's tag."""
    session, now = ctx.session, ctx.clock.now()
    calendar = BusinessCalendar.from_settings(ctx.settings)
    playbooks = await sop_service(ctx.runtime).active(session, refresh=True)
    quiet = await enroll_quiet(session, playbooks, calendar, now=now)
    tagged = await enroll_tagged(session, playbooks, calendar, now=now)
    log.info("sop-quiet-check: %d quiet and %d tagged contacts enrolled", quiet, tagged)
