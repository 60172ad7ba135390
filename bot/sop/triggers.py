"""What enrolls contacts and what stops them, in real time (tracker hook) and set-based (jobs).

Real time, per attributed event (`sop_hook`, after the scoring hook):
- stops: a `message` from the contact (replied), `contact_deleted` (left), a later stage;
- triggers: `contact_added` (optionally via a channel), `read` of an item to a depth, a customer tag.
Set-based, in jobs (one INSERT … SELECT per playbook, never a loop over contacts):
- `stage` / `dormant`: contacts whose stage history reached the stage recently and who are still there
  (catches score moves, manual moves and the nightly dormancy alike), in `sop-tick`;
- `quiet`: contacts without interaction for N days, in `sop-quiet-check`;
- `tag`: contacts carrying the tag (a text prefilter, then an exact check), in `sop-quiet-check`.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from sqlalchemy import String, and_, bindparam, cast, func, insert, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.identity import live_contact
from bot.models import Channel, Contact, ContentItem, Enrollment, Event, StageChange, UTCDateTime
from bot.sop.calendar import BusinessCalendar
from bot.sop.enroll import enroll, first_due, stop_enrollments, stop_reason
from bot.sop.store import LoadedPlaybook, SopService
from bot.tracker_batch import BATCH_KEY, TrackerBatch

if TYPE_CHECKING:
    from bot.runtime import Runtime

ENROLL_COLUMNS = ["playbook_id", "playbook_key", "contact_id", "owner_userid", "status", "next_step", "next_due_at",
                  "started_at", "start_stage", "trigger"]


def sop_service(rt: "Runtime") -> SopService:
    service = rt.services.get("sop")
    if service is None:
        service = rt.services["sop"] = SopService()
    return service


def contact_tags(contact: Contact) -> list[str]:
    tags = (contact.profile or {}).get("tags") or []
    return [str(t) for t in tags] if isinstance(tags, list) else []


def sop_hook(rt: "Runtime") -> Callable[[AsyncSession, Event], Awaitable[None]]:
    """The tracker hook. Batch-aware: a tracker batch preloads the running enrollments of all its
    contacts in one query (`prepare`), so an event that stops or enrolls nothing costs no query."""
    calendar = BusinessCalendar.from_settings(rt.settings)

    async def on_event(session: AsyncSession, event: Event) -> None:
        if event.contact_id is None:
            return
        batch: TrackerBatch | None = session.info.get(BATCH_KEY)
        contact = await (batch.live_contact(event.contact_id) if batch is not None else live_contact(session, event.contact_id))
        if contact is None or contact.erased_at is not None:
            return
        now = rt.clock.now()
        service = sop_service(rt)
        running = await _running(session, batch, contact.id)
        await _apply_stops(session, service, contact, event, now, running)
        for playbook in await service.active(session):
            if await _event_matches(session, playbook, contact, event):
                enrollment = await enroll(session, playbook, contact, now=now, calendar=calendar)
                if enrollment is not None:
                    running.append(enrollment)

    async def prepare(session: AsyncSession, batch: TrackerBatch) -> None:
        """The running enrollments of the batch's (live) contacts, in one query."""
        ids = {batch.live_contact_id(cid) for cid in batch.contacts}
        ids.discard(None)
        by_contact: dict[int, list[Enrollment]] = {cid: [] for cid in ids}  # type: ignore[misc]
        if ids:
            for enrollment in (await session.scalars(enrollments_of(ids))).all():
                if enrollment.status == "active":
                    by_contact[enrollment.contact_id].append(enrollment)
        batch.prepared["sop"] = by_contact

    hook: Any = on_event
    hook.batch_aware = True  # reads and writes only tables the tracker batch does not queue
    hook.prepare = prepare
    return hook


def enrollments_of(contact_ids: Any) -> Any:
    """Every enrollment of the contacts, by the contact_id index. The running ones are picked out in
    Python: with `status = 'active'` in the query, SQLite prefers the status index and reads every
    running enrollment of every contact."""
    return _ENROLLMENTS.params(contacts=list(contact_ids))


_ENROLLMENTS = (select(Enrollment).where(Enrollment.contact_id.in_(bindparam("contacts", expanding=True)))
                .order_by(Enrollment.id))  # built once: building costs about as much as running it


async def _running(session: AsyncSession, batch: "TrackerBatch | None", contact_id: int) -> list[Enrollment]:
    """The contact's running enrollments: from the batch's preload when there is one (kept current:
    enrollments started in the batch are added, stopped ones change status), else queried."""
    prepared = batch.prepared.get("sop") if batch is not None else None
    if prepared is not None and contact_id in prepared:
        return prepared[contact_id]
    found = [e for e in (await session.scalars(enrollments_of([contact_id]))).all() if e.status == "active"]
    if prepared is not None:
        prepared[contact_id] = found
    return found


async def _apply_stops(session: AsyncSession, service: SopService, contact: Contact, event: Event, now: dt.datetime,
                       running: list[Enrollment]) -> None:
    for enrollment in running:
        if enrollment.status != "active":
            continue
        definition = await service.definition(session, enrollment.playbook_id)
        if definition is None:
            continue
        reason = stop_reason(
            definition, enrollment, contact,
            replied_at=event.occurred_at if event.type == "message" else None,
            left_at=event.occurred_at if event.type == "contact_deleted" else None,
        )  # fmt: skip
        if reason:
            await stop_enrollments(session, [enrollment], reason, now=now)


async def _event_matches(session: AsyncSession, playbook: LoadedPlaybook, contact: Contact, event: Event) -> bool:
    trigger = playbook.definition.trigger
    if trigger.type == "contact_added" and event.type == "contact_added":
        if not trigger.channel:
            return True
        name = (event.props or {}).get("channel")
        if name is None and event.channel_id is not None:
            channel = await session.get(Channel, event.channel_id)
            name = channel.name if channel else None
        return name == trigger.channel
    if trigger.type == "item_read" and event.type == "read" and event.item_id is not None:
        try:
            depth = float((event.props or {}).get("depth") or 0)
        except (TypeError, ValueError):
            return False
        if depth < trigger.min_depth:
            return False
        if not trigger.items:
            return True
        item = await session.get(ContentItem, event.item_id)
        return item is not None and item.slug in trigger.items
    if trigger.type == "tag":
        return trigger.tag in contact_tags(contact) and _stage_allowed(trigger.stages, contact.stage)
    return False


def _stage_allowed(stages: list[str], stage: str) -> bool:
    return stage in stages if stages else stage != "invalid"


def _enroll_select(playbook: LoadedPlaybook, due: dt.datetime, now: dt.datetime, *where: Any, blocker: Any = None) -> Any:
    """SELECT the enrollment rows for every contact matching `where` who has an owner and has no
    enrollment matching `blocker` (default: any enrollment in this playbook, any version)."""
    if blocker is None:
        blocker = select(Enrollment.id).where(Enrollment.playbook_key == playbook.key, Enrollment.contact_id == Contact.id)
    return select(
        literal(playbook.id), literal(playbook.key), Contact.id, Contact.owner_userid, literal("active"), literal(0),
        literal(due, UTCDateTime()), literal(now, UTCDateTime()), Contact.stage,
        literal(playbook.definition.trigger.describe()),
    ).where(
        Contact.owner_userid.is_not(None), Contact.merged_into_id.is_(None), Contact.erased_at.is_(None),
        Contact.stage != "invalid", ~blocker.exists(), *where,
    )  # fmt: skip


async def _insert(session: AsyncSession, rows: Any) -> int:
    result = await session.execute(insert(Enrollment).from_select(ENROLL_COLUMNS, rows))
    return max(result.rowcount or 0, 0)


async def enroll_by_stage(session: AsyncSession, playbooks: list[LoadedPlaybook], calendar: BusinessCalendar, *,
                          now: dt.datetime, lookback: dt.timedelta) -> int:
    """Enroll contacts that reached a playbook's stage since max(now - lookback, the playbook's
    first import) and are still in it."""
    enrolled = 0
    for playbook in playbooks:
        stage = playbook.definition.trigger.watched_stage
        if stage is None:
            continue
        since = max(now - lookback, playbook.first_seen)
        reached = select(StageChange.contact_id).where(StageChange.to_stage == stage, StageChange.at >= since)
        due = first_due(calendar, playbook.definition, now)
        enrolled += await _insert(session, _enroll_select(playbook, due, now, Contact.stage == stage, Contact.id.in_(reached)))
    return enrolled


async def enroll_quiet(session: AsyncSession, playbooks: list[LoadedPlaybook], calendar: BusinessCalendar, *,
                       now: dt.datetime) -> int:
    """Enroll contacts quiet for [days, days + within_days) days; again after a later quiet spell
    only (an earlier enrollment that started after their last activity blocks)."""
    enrolled = 0
    last_seen = func.coalesce(Contact.last_activity_at, Contact.created_at)
    for playbook in playbooks:
        trigger = playbook.definition.trigger
        if trigger.type != "quiet":
            continue
        newest = now - dt.timedelta(days=trigger.days)
        oldest = now - dt.timedelta(days=trigger.days + trigger.within_days)
        stage_ok = Contact.stage.in_(trigger.stages) if trigger.stages else literal(True)
        same_spell = select(Enrollment.id).where(
            Enrollment.playbook_key == playbook.key, Enrollment.contact_id == Contact.id,
            or_(Enrollment.status == "active", Enrollment.started_at >= last_seen),
        )  # fmt: skip
        rows = _enroll_select(playbook, first_due(calendar, playbook.definition, now), now,
                              and_(last_seen < newest, last_seen >= oldest, stage_ok), blocker=same_spell)
        enrolled += await _insert(session, rows)
    return enrolled


async def enroll_tagged(session: AsyncSession, playbooks: list[LoadedPlaybook], calendar: BusinessCalendar, *,
                        now: dt.datetime) -> int:
    """Enroll contacts carrying a playbook's tag: a LIKE on the stored JSON narrows, Python confirms."""
    enrolled = 0
    for playbook in playbooks:
        trigger = playbook.definition.trigger
        if trigger.type != "tag":
            continue
        # The JSON column holds json.dumps output (ASCII escapes); match the tag as it is stored.
        needle = json.dumps(trigger.tag).replace("!", "!!").replace("%", "!%").replace("_", "!_")
        candidates = select(Contact.id).where(cast(Contact.profile, String).like(f"%{needle}%", escape="!"))
        enrolled_ids = select(Enrollment.contact_id).where(Enrollment.playbook_key == playbook.key)
        rows = (await session.scalars(
            select(Contact).where(Contact.id.in_(candidates), Contact.id.not_in(enrolled_ids), Contact.merged_into_id.is_(None))
        )).all()
        for contact in rows:
            if trigger.tag in contact_tags(contact) and _stage_allowed(trigger.stages, contact.stage):
                enrolled += await enroll(session, playbook, contact, now=now, calendar=calendar) is not None
    return enrolled


async def latest_signals(session: AsyncSession, contact_ids: list[int]) -> dict[tuple[int, str], dt.datetime]:
    """(contact, "message" | "contact_deleted") → the latest such event, in one grouped query."""
    if not contact_ids:
        return {}
    rows = await session.execute(
        select(Event.contact_id, Event.type, func.max(Event.occurred_at))
        .where(Event.contact_id.in_(contact_ids), Event.type.in_(["message", "contact_deleted"]))
        .group_by(Event.contact_id, Event.type)
    )
    out: dict[tuple[int, str], dt.datetime] = {}
    for contact_id, type_, at in rows.all():
        if isinstance(at, str):
            at = dt.datetime.fromisoformat(at)
        out[(contact_id, type_)] = at if at.tzinfo else at.replace(tzinfo=dt.timezone.utc)
    return out


__all__ = ["enroll_by_stage", "enroll_quiet", "enroll_tagged", "latest_signals", "sop_hook", "sop_service", "stop_reason"]
