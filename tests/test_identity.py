"""Identity merges move a person's whole history and can be undone exactly."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from bot.identity import add_identity, contact_for_external_userid, find_by_identity, merge_contacts, normalize_phone, undo_merge
from bot.models import Contact, ContactMerge, Event, Identity
from bot.tracking import add_event


def test_normalize_phone() -> None:
    assert normalize_phone("+86 138-1234-5678") == "13812345678"
    assert normalize_phone("8613812345678") == "13812345678"
    assert normalize_phone("12345678901") is None
    assert normalize_phone("") is None


async def test_merge_and_undo(beacon: Any) -> None:
    rt, now = beacon.rt, beacon.clock.now()
    async with rt.sessions() as session, session.begin():
        wecom = await contact_for_external_userid(session, "wmSame", now=now)
        web = Contact(name="访客", phone="13900002222", created_at=now, updated_at=now)
        session.add(web)
        await session.flush()
        await add_identity(session, web, "phone", "13900002222")
        await add_event(session, "open", contact_id=web.id, at=now)
        await add_event(session, "message", contact_id=wecom.id, at=now)
        wecom_id, web_id = wecom.id, web.id
    async with rt.sessions() as session, session.begin():
        record = await merge_contacts(session, web_id, wecom_id, reason="same person", now=now)
        merge_id = record.id
    async with rt.sessions() as session:
        survivor = await session.get(Contact, wecom_id)
        assert survivor.phone == "13900002222"  # copied where the survivor had nothing
        assert (await find_by_identity(session, "phone", "13900002222")).id == wecom_id
        assert (await session.get(Contact, web_id)).merged_into_id == wecom_id
        owners = set((await session.scalars(select(Event.contact_id))).all())
        assert owners == {wecom_id}
    async with rt.sessions() as session, session.begin():
        await undo_merge(session, merge_id, now=now)
    async with rt.sessions() as session:
        survivor = await session.get(Contact, wecom_id)
        restored = await session.get(Contact, web_id)
        assert survivor.phone is None and survivor.external_userid == "wmSame"
        assert restored.merged_into_id is None and restored.phone == "13900002222"
        assert (await find_by_identity(session, "phone", "13900002222")).id == web_id
        events = {e.type: e.contact_id for e in (await session.scalars(select(Event))).all()}
        assert events == {"open": web_id, "message": wecom_id}
        kinds = {(i.kind, i.contact_id) for i in (await session.scalars(select(Identity))).all()}
        assert kinds == {("external_userid", wecom_id), ("phone", web_id)}
        assert (await session.get(ContactMerge, merge_id)).undone_at is not None
    async with rt.sessions() as session, session.begin():
        try:
            await undo_merge(session, merge_id, now=now)
        except ValueError as exc:
            assert "already undone" in str(exc)
        else:
            raise AssertionError("a merge cannot be undone twice")
