"""Personal data on request: export everything Beacon holds about a contact, or erase it.

Erasure removes what identifies the person (profile fields, identities, personal values in event
properties, the browser link) and keeps anonymous aggregates: events stay as (type, time, item, rep,
channel) so funnels and content statistics do not change, and the contact row remains as a tombstone
with `erased_at` so nothing re-creates the person from an old event.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.models import Alert, Contact, ContactMerge, Enrollment, Event, Identity, ScoreEntry, Share, StageChange, Task, Visitor

PERSONAL_PROPS = ("name", "company", "title", "phone", "email", "content", "text")


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, (dt.datetime, dt.date)) else value


def _row(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    return {c.key: _iso(getattr(obj, c.key)) for c in obj.__table__.columns if c.key not in skip}


async def export_contact(session: AsyncSession, contact: Contact) -> dict[str, Any]:
    """Everything stored about one contact, as plain JSON-ready data."""
    async def rows(model: Any, *where: Any, skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        return [_row(r, skip) for r in (await session.scalars(select(model).where(*where).order_by(model.id))).all()]

    return {
        "contact": _row(contact),
        "identities": await rows(Identity, Identity.contact_id == contact.id),
        "browsers": await rows(Visitor, Visitor.contact_id == contact.id),
        "events": await rows(Event, Event.contact_id == contact.id),
        "score_ledger": await rows(ScoreEntry, ScoreEntry.contact_id == contact.id),
        "stage_history": await rows(StageChange, StageChange.contact_id == contact.id),
        "shares": await rows(Share, Share.contact_id == contact.id),
        "tasks": await rows(Task, Task.contact_id == contact.id),
        "alerts": await rows(Alert, Alert.contact_id == contact.id),
        "sop_enrollments": await rows(Enrollment, Enrollment.contact_id == contact.id),
        "merges": await rows(ContactMerge, (ContactMerge.from_contact_id == contact.id) | (ContactMerge.into_contact_id == contact.id)),
    }


async def erase_contact(session: AsyncSession, contact: Contact, *, now: dt.datetime) -> dict[str, int]:
    """Remove personal data, keep anonymous aggregates. Returns counts of what was changed."""
    counts: dict[str, int] = {}
    counts["identities"] = (await session.execute(delete(Identity).where(Identity.contact_id == contact.id))).rowcount or 0
    counts["browsers"] = (
        await session.execute(update(Visitor).where(Visitor.contact_id == contact.id).values(contact_id=None, user_agent=""))
    ).rowcount or 0
    scrubbed = 0
    events = (await session.scalars(select(Event).where(Event.contact_id == contact.id))).all()
    for event in events:
        props = dict(event.props or {})
        if any(key in props for key in PERSONAL_PROPS):
            for key in PERSONAL_PROPS:
                if key in props:
                    props[key] = "[erased]"
            event.props = props
            scrubbed += 1
    counts["events_scrubbed"] = scrubbed
    for task in (await session.scalars(select(Task).where(Task.contact_id == contact.id))).all():
        task.title, task.body = "[已删除的联系人]", ""
    for alert in (await session.scalars(select(Alert).where(Alert.contact_id == contact.id))).all():
        alert.detail = {}
    for name in ("name", "company", "title"):
        setattr(contact, name, "")
    contact.phone = contact.email = contact.external_userid = None
    contact.profile_due_at = None  # nothing left to ask WeCom about
    contact.profile = {}
    contact.erased_at = now
    contact.updated_at = now
    return counts
