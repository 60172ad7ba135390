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


async def test_merge_of_two_contacts_quiet_since_the_same_day(beacon: Any) -> None:
    """Each has a decay row for a quiet spell since the same day (one row per contact and spell): the
    merge moves the source's row over as a closed entry, so the two do not collide, and the
    survivor's own spell goes on taking ticks. Undo moves it back."""
    import datetime as dt

    from bot.ledger import ledger_insert
    from bot.models import ScoreEntry

    rt, now = beacon.rt, beacon.clock.now()
    since = dt.date(2026, 1, 5)

    def tick(contact_id: int, points: float) -> dict[str, Any]:
        return {"contact_id": contact_id, "model": "default", "rule": "decay", "points": points, "event_id": None,
                "reason": "连续40天无互动，行为分逐日衰减", "at": now, "quiet_since": since}

    async with rt.sessions() as session, session.begin():
        one, two = (Contact(name=n, created_at=now, updated_at=now) for n in ("甲", "乙"))
        session.add_all([one, two])
        await session.flush()
        await session.execute(ledger_insert(rt.engine.dialect.name), [tick(one.id, -1.5), tick(two.id, -2.0)])
        one_id, two_id = one.id, two.id
    async with rt.sessions() as session, session.begin():
        record = await merge_contacts(session, two_id, one_id, reason="same person", now=now)
        merge_id = record.id
    async with rt.sessions() as session, session.begin():
        await session.execute(ledger_insert(rt.engine.dialect.name), [tick(one_id, -0.25)])  # the survivor's next tick
    async with rt.sessions() as session:
        rows = sorted((r.points, r.quiet_since) for r in (await session.scalars(select(ScoreEntry).where(ScoreEntry.contact_id == one_id))).all())
        assert rows == [(-2.0, None), (-1.75, since)]
    async with rt.sessions() as session, session.begin():
        await undo_merge(session, merge_id, now=now)
    async with rt.sessions() as session:
        back = (await session.scalars(select(ScoreEntry.points).where(ScoreEntry.contact_id == two_id))).all()
        assert list(back) == [-2.0]
