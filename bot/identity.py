"""Identities and merges: one person, one contact, however many ways we learned of them.

A merge moves everything of one contact to another and records exactly which rows moved, so that
`undo_merge` can put them back. Nothing is deleted.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.models import Alert, Contact, ContactMerge, Enrollment, Event, Identity, MassSendRecipient, ScoreEntry, Share, Task, Visitor

# (model, column) pairs that point at a contact and move with it.
_OWNED: tuple[tuple[Any, str], ...] = (
    (Identity, "contact_id"),
    (Event, "contact_id"),
    (Share, "contact_id"),
    (Visitor, "contact_id"),
    (Task, "contact_id"),
    (ScoreEntry, "contact_id"),
    (Alert, "contact_id"),
    (Enrollment, "contact_id"),
    (MassSendRecipient, "contact_id"),
)

_PHONE_DIGITS = re.compile(r"\D")


def normalize_phone(raw: str) -> str | None:
    """Mainland mobile numbers to 11 digits (drops +86, spaces, dashes); None if not one."""
    digits = _PHONE_DIGITS.sub("", raw or "")
    if digits.startswith("86") and len(digits) == 13:
        digits = digits[2:]
    return digits if re.fullmatch(r"1[3-9]\d{9}", digits) else None


async def find_by_identity(session: AsyncSession, kind: str, value: str) -> Contact | None:
    contact_id = await session.scalar(select(Identity.contact_id).where(Identity.kind == kind, Identity.value == value))
    if contact_id is None:
        return None
    return await live_contact(session, contact_id)


async def live_contact(session: AsyncSession, contact_id: int) -> Contact | None:
    """The contact, following merges to the surviving one."""
    contact = await session.get(Contact, contact_id)
    seen = 0
    while contact is not None and contact.merged_into_id is not None and seen < 10:
        contact = await session.get(Contact, contact.merged_into_id)
        seen += 1
    return contact


async def add_identity(session: AsyncSession, contact: Contact, kind: str, value: str) -> None:
    existing = await session.scalar(select(Identity).where(Identity.kind == kind, Identity.value == value))
    if existing is None:
        session.add(Identity(contact_id=contact.id, kind=kind, value=value))


async def known_contact(session: AsyncSession, external_userid: str) -> Contact | None:
    """The live contact behind a WeCom external_userid, following merges (a contact merged away keeps
    its id only as an identity of the survivor), or None if Beacon has not met it."""
    contact = await find_by_identity(session, "external_userid", external_userid)
    if contact is None:
        contact = await session.scalar(select(Contact).where(Contact.external_userid == external_userid))
    return contact


async def contact_for_external_userid(session: AsyncSession, external_userid: str, *, now: dt.datetime) -> Contact:
    """The contact behind a WeCom external_userid, created on first sight. A new contact is known by its
    id alone: its WeCom profile is due (bot/profiles.py fetches it, unless the caller has it)."""
    contact = await known_contact(session, external_userid)
    if contact is None:
        contact = Contact(external_userid=external_userid, created_at=now, updated_at=now, profile_due_at=now)
        session.add(contact)
        await session.flush()
    await add_identity(session, contact, "external_userid", external_userid)
    return contact


async def merge_contacts(session: AsyncSession, from_id: int, into_id: int, *, reason: str, now: dt.datetime) -> ContactMerge:
    """Move everything of `from_id` to `into_id`; the record says what moved so it can be undone."""
    if from_id == into_id:
        raise ValueError("cannot merge a contact into itself")
    source = await session.get(Contact, from_id)
    target = await session.get(Contact, into_id)
    if source is None or target is None:
        raise ValueError("both contacts must exist")
    moved: dict[str, Any] = {}
    for model, column in _OWNED:
        col = getattr(model, column)
        key = model.__tablename__
        ids = list((await session.scalars(select(model.id if hasattr(model, "id") else col).where(col == from_id))).all())
        if ids:
            values: dict[str, Any] = {column: into_id}
            if model is ScoreEntry:  # the source's quiet spells close: the target may have spells since the same day
                values["quiet_since"] = None
            await session.execute(update(model).where(model.id.in_(ids)).values(values))
            moved[key] = ids
    fields: dict[str, Any] = {}
    for name in ("external_userid", "phone", "name", "company", "title", "email", "owner_userid", "channel_id"):
        if getattr(target, name) in (None, "") and getattr(source, name) not in (None, ""):
            fields[name] = getattr(source, name)
    moved["fields"] = fields
    moved["source_external_userid"] = source.external_userid
    if source.external_userid:
        source.external_userid = None
        await session.flush()
    for name, value in fields.items():
        setattr(target, name, value)
    source.merged_into_id = into_id
    source.updated_at = now
    record = ContactMerge(from_contact_id=from_id, into_contact_id=into_id, reason=reason, moved=moved, at=now)
    session.add(record)
    await session.flush()
    return record


async def undo_merge(session: AsyncSession, merge_id: int, *, now: dt.datetime) -> None:
    """Reverse a merge: rows that moved go back, copied fields are cleared on the survivor."""
    record = await session.get(ContactMerge, merge_id)
    if record is None or record.undone_at is not None:
        raise ValueError("no such merge, or already undone")
    moved = record.moved
    for model, column in _OWNED:
        ids = moved.get(model.__tablename__)
        if ids:
            await session.execute(update(model).where(model.id.in_(ids)).values({column: record.from_contact_id}))
    target = await session.get(Contact, record.into_contact_id)
    source = await session.get(Contact, record.from_contact_id)
    assert target is not None and source is not None
    for name, value in moved.get("fields", {}).items():
        if getattr(target, name) == value:
            setattr(target, name, None if name in ("external_userid", "phone", "email", "owner_userid", "channel_id") else "")
    await session.flush()
    source.external_userid = moved.get("source_external_userid")
    source.merged_into_id = None
    source.updated_at = now
    record.undone_at = now
