"""Enrolling contacts in playbooks and stopping enrollments.

A contact is enrolled in a playbook (by key) at most once, whichever version is in force; a quiet
trigger may enroll again after the contact was active and went quiet again. Only contacts with an
owner are enrolled: every step is a task for the owner.
"""

from __future__ import annotations

import datetime as dt
from typing import Iterable

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.models import Contact, Enrollment, Task
from bot.sop.calendar import BusinessCalendar
from bot.sop.definition import PlaybookDef, Stop
from bot.sop.store import LoadedPlaybook

# Order along the journey for "a later stage": dormant customers count as starting over.
STAGE_RANK = {"dormant": 0, "new": 0, "nurturing": 1, "mql": 2, "sql": 3, "customer": 4}
NOT_ENROLLED_STAGES = frozenset({"invalid"})


def first_due(calendar: BusinessCalendar, definition: PlaybookDef, started: dt.datetime) -> dt.datetime:
    step = definition.steps[0]
    return calendar.step_due(started, step.day, step.at)


async def enroll(session: AsyncSession, playbook: LoadedPlaybook, contact: Contact, *, now: dt.datetime,
                 calendar: BusinessCalendar) -> Enrollment | None:
    """Enroll `contact` unless it has no owner, is invalid, or was ever enrolled in this playbook."""
    if contact.owner_userid is None or contact.stage in NOT_ENROLLED_STAGES or contact.merged_into_id is not None:
        return None
    if contact.erased_at is not None:
        return None
    already = await session.scalar(
        select(Enrollment.id).where(Enrollment.playbook_key == playbook.key, Enrollment.contact_id == contact.id).limit(1)
    )
    if already is not None:
        return None
    enrollment = Enrollment(
        playbook_id=playbook.id, playbook_key=playbook.key, contact_id=contact.id, owner_userid=contact.owner_userid,
        status="active", next_step=0, next_due_at=first_due(calendar, playbook.definition, now), started_at=now,
        start_stage=contact.stage, trigger=playbook.definition.trigger.describe(),
    )  # fmt: skip
    session.add(enrollment)
    await session.flush()
    return enrollment


def moved_on(stop: Stop, start_stage: str | None, stage: str) -> bool:
    """Has the contact reached a stage that ends the playbook?"""
    if not stop.on_later_stage:
        return False
    if stage == "invalid":
        return True
    rank = STAGE_RANK.get(stage, 0)
    if stop.at_stage:
        if stage == stop.at_stage:
            return True
        # dormant is a side stage, not a step along the journey: only an exact match counts for it.
        return stop.at_stage != "dormant" and stage != "dormant" and rank >= STAGE_RANK.get(stop.at_stage, 0)
    return rank > STAGE_RANK.get(start_stage or "new", 0)


def stop_reason(definition: PlaybookDef, enrollment: Enrollment, contact: Contact | None,
                replied_at: dt.datetime | None = None, left_at: dt.datetime | None = None) -> str | None:
    """Why the enrollment should stop now, or None. `replied_at` / `left_at` are the contact's latest
    `message` / `contact_deleted` events; only those after enrollment count."""
    if contact is None or contact.erased_at is not None:
        return "erased"
    if contact.merged_into_id is not None:
        return "merged"
    stop = definition.stop
    if stop.on_leave and left_at is not None and left_at >= enrollment.started_at:
        return "left"
    if stop.on_reply and replied_at is not None and replied_at >= enrollment.started_at:
        return "replied"
    if moved_on(stop, enrollment.start_stage, contact.stage):
        return f"stage:{contact.stage}"
    return None


async def stop_enrollments(session: AsyncSession, enrollments: Iterable[Enrollment], reason: str, *, now: dt.datetime) -> None:
    """Stop them and dismiss their open SOP tasks (what is left of a playbook no longer applies)."""
    ids = []
    for enrollment in enrollments:
        enrollment.status, enrollment.stopped_reason = "stopped", reason[:64]
        enrollment.next_due_at, enrollment.finished_at = None, now
        ids.append(enrollment.id)
    if ids:
        await session.execute(
            update(Task).where(Task.enrollment_id.in_(ids), Task.status == "open").values(status="dismissed", completed_at=now)
        )
