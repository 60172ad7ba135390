"""Admin API: create shares, read a contact (score, breakdown, timeline), record offline events."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web
from sqlalchemy import select

from bot.app import RUNTIME
from bot.errors import NotShareable
from bot.event_types import EVENT_TYPE_SET, EVENT_TYPES
from bot.identity import contact_for_external_userid, known_contact, live_contact
from bot.models import Channel, Contact, ContentItem, Event, Rep, ScoreEntry, Share, StageChange
from bot.shares import create_share
from handlers.api import api_error, read_json

routes = web.RouteTableDef()


def _optional_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise web.HTTPBadRequest(text=f'{{"error": "{key} must be a non-empty string or null"}}', content_type="application/json")
    return value.strip()


@routes.post("/api/shares")
async def handle_create_share(request: web.Request) -> web.Response:
    """Create (or reuse) the tracked link for (item's current version, rep, contact, channel).
    201 {"token", "url", ...}; 404 unknown content/rep/channel; 400 bad body or internal item."""
    rt = request.app[RUNTIME]
    data = await read_json(request)
    slug = _optional_str(data, "content")
    rep_id = _optional_str(data, "rep")
    if slug is None or rep_id is None:
        return api_error(400, "content and rep are required")
    external = _optional_str(data, "contact")
    channel_name = _optional_str(data, "channel")
    async with rt.sessions() as session, session.begin():
        item = await session.scalar(select(ContentItem).where(ContentItem.slug == slug))
        if item is None:
            return api_error(404, f"unknown content: {slug}")
        if await session.get(Rep, rep_id) is None:
            return api_error(404, f"unknown rep: {rep_id}")
        channel = None
        if channel_name is not None:
            channel = await session.scalar(select(Channel).where(Channel.name == channel_name))
            if channel is None:
                return api_error(404, f"unknown channel: {channel_name}")
        contact = await contact_for_external_userid(session, external, now=rt.clock.now()) if external else None
        try:
            share = await create_share(
                session, item, rep_userid=rep_id, contact_id=contact.id if contact else None,
                channel_id=channel.id if channel else None, source="api",
            )
        except NotShareable as exc:
            return api_error(400, str(exc))
        body = {
            "token": share.token,
            "url": f"{rt.settings.server.public_url}/l/{share.token}",
            "content": item.slug,
            "title": item.title,
            "version_id": share.version_id,
            "rep": rep_id,
            "contact": external,
            "channel": channel_name,
        }
    return web.json_response(body, status=201)


async def contact_view(session: Any, contact: Contact, *, timeline_limit: int = 100) -> dict[str, Any]:
    """The contact as the API and pages show it: profile, score with its explanation, timeline."""
    entries = (
        await session.scalars(select(ScoreEntry).where(ScoreEntry.contact_id == contact.id).order_by(ScoreEntry.id))
    ).all()
    rows = (
        await session.execute(
            select(Event, ContentItem.title, ContentItem.slug)
            .outerjoin(ContentItem, ContentItem.id == Event.item_id)
            .where(Event.contact_id == contact.id)
            .order_by(Event.occurred_at.desc(), Event.id.desc())
            .limit(timeline_limit)
        )
    ).all()
    stages = (
        await session.scalars(select(StageChange).where(StageChange.contact_id == contact.id).order_by(StageChange.id))
    ).all()
    channel = await session.get(Channel, contact.channel_id) if contact.channel_id else None
    breakdown = [
        {"rule": e.rule, "points": e.points, "event_id": e.event_id, "model": e.model, "reason": e.reason, "at": e.at.isoformat()}
        for e in entries
    ]
    return {
        "id": contact.id,
        "external_userid": contact.external_userid,
        "name": contact.name,
        "company": contact.company,
        "title": contact.title,
        "phone": contact.phone,
        "owner": contact.owner_userid,
        "channel": channel.name if channel else None,
        "referrer_contact_id": contact.referrer_contact_id,
        "stage": contact.stage,
        "temperature": contact.temperature,
        "score": round(sum(e.points for e in entries), 2),
        "score_breakdown": breakdown,
        "stage_history": [
            {"from": s.from_stage, "to": s.to_stage, "by": s.by, "reason": s.reason, "at": s.at.isoformat()} for s in stages
        ],
        "timeline": [
            {
                "id": event.id,
                "type": event.type,
                "at": event.occurred_at.isoformat(),
                "item": slug,
                "item_title": title,
                "props": _public_props(event),
                "rep": event.rep_userid,
            }
            for event, title, slug in rows
        ],
    }


def _public_props(event: Event) -> dict[str, Any]:
    props = dict(event.props or {})
    if "phone" in props and props["phone"]:
        phone = str(props["phone"])
        props["phone"] = phone[:3] + "****" + phone[-4:] if len(phone) >= 7 else "****"
    return props


async def find_contact(session: Any, key: str) -> Contact | None:
    """By external_userid (the contract's key), else by Beacon's numeric id (`id:42`)."""
    contact = await known_contact(session, key)
    if contact is None and key.startswith("id:") and key[3:].isdigit():
        contact = await live_contact(session, int(key[3:]))
    return contact


CSV_COLUMNS = ("external_userid", "name", "company", "title", "phone", "owner", "channel", "stage", "temperature",
               "score", "last_activity_at", "created_at")


@routes.get("/api/contacts.csv")
async def handle_contacts_csv(request: web.Request) -> web.StreamResponse:
    """All live contacts as CSV (UTF-8 with BOM so spreadsheet apps read the Chinese), streamed in chunks."""
    import csv
    import io

    rt = request.app[RUNTIME]
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": 'attachment; filename="contacts.csv"',
    })
    await response.prepare(request)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    await response.write(("\ufeff" + buffer.getvalue()).encode())
    last_id = 0
    async with rt.read_sessions() as session:
        channels = {c.id: c.name for c in (await session.scalars(select(Channel))).all()}
        while True:
            rows = (await session.scalars(
                select(Contact).where(Contact.id > last_id, Contact.merged_into_id.is_(None), Contact.erased_at.is_(None))
                .order_by(Contact.id).limit(1000)
            )).all()
            if not rows:
                break
            buffer.seek(0)
            buffer.truncate()
            for c in rows:
                writer.writerow([c.external_userid or "", c.name, c.company, c.title, c.phone or "", c.owner_userid or "",
                                 channels.get(c.channel_id, ""), c.stage, c.temperature, f"{c.score:g}",
                                 c.last_activity_at.isoformat() if c.last_activity_at else "", c.created_at.isoformat()])
            await response.write(buffer.getvalue().encode())
            last_id = rows[-1].id
    await response.write_eof()
    return response


@routes.get("/api/contacts/{external_userid}")
async def handle_get_contact(request: web.Request) -> web.Response:
    """A contact with score, score_breakdown (sum = score), stage and timeline (newest first); 404 if unknown."""
    rt = request.app[RUNTIME]
    key = request.match_info["external_userid"]
    async with rt.read_sessions() as session:
        contact = await find_contact(session, key)
        if contact is None:
            return api_error(404, f"unknown contact: {key}")
        return web.json_response(await contact_view(session, contact))


def _parse_at(value: Any, now: dt.datetime) -> dt.datetime:
    if value is None:
        return now
    if not isinstance(value, str):
        raise ValueError("at must be an ISO 8601 string or null")
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("at needs a time zone offset, e.g. 2026-11-23T10:00:00+08:00")
    return parsed.astimezone(dt.timezone.utc)


@routes.post("/api/events")
async def handle_post_event(request: web.Request) -> web.Response:
    """Record an offline behavior event (payment, call, webinar …), scored like any other. 202;
    400 unknown type (naming the known ones) or bad fields; 404 unknown contact."""
    rt = request.app[RUNTIME]
    data = await read_json(request)
    type_ = data.get("type")
    if type_ not in EVENT_TYPE_SET:
        return api_error(400, f"unknown event type {type_!r}", known=list(EVENT_TYPES))
    external = data.get("contact")
    if not isinstance(external, str) or not external:
        return api_error(400, "contact (external_userid) is required")
    props = data.get("props") or {}
    if not isinstance(props, dict):
        return api_error(400, "props must be an object")
    key = data.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 100):
        return api_error(400, "idempotency_key must be a string of 1-100 characters")
    now = rt.clock.now()
    try:
        at = _parse_at(data.get("at"), now)
    except ValueError as exc:
        return api_error(400, f"at: {exc}")
    async with rt.sessions() as session:
        contact = await find_contact(session, external)
    if contact is None:
        return api_error(404, f"unknown contact: {external}")
    await rt.events.contact_event(
        type_, contact.id, occurred_at=at, received_at=now, props=props,
        key=f"api:{key}" if key else None, rep_userid=contact.owner_userid,
    )
    rt.tracker.wake()
    return web.json_response({"status": "accepted", "contact": external, "type": type_}, status=202)


async def shares_of(session: Any, contact_id: int) -> list[Share]:
    return list((await session.scalars(select(Share).where(Share.contact_id == contact_id))).all())


@routes.post("/api/contacts/{external_userid}/stage")
async def handle_move_stage(request: web.Request) -> web.Response:
    """A manual stage move by a rep: {"stage", "by": rep userid, "reason"} → 200 with the contact;
    400 unknown stage or missing reason; 404 unknown contact or rep. Recorded in stage history."""
    from bot.lifecycle import StageError, move_stage

    rt = request.app[RUNTIME]
    data = await read_json(request)
    stage, by, reason = data.get("stage"), data.get("by"), data.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        return api_error(400, "reason is required for a manual stage move")
    if not isinstance(by, str) or not by:
        return api_error(400, "by (the rep's userid) is required")
    async with rt.sessions() as session, session.begin():
        contact = await find_contact(session, request.match_info["external_userid"])
        if contact is None:
            return api_error(404, f"unknown contact: {request.match_info['external_userid']}")
        if await session.get(Rep, by) is None:
            return api_error(404, f"unknown rep: {by}")
        try:
            await move_stage(rt, session, contact, str(stage), by=by, reason=reason.strip(), now=rt.clock.now())
        except StageError as exc:
            return api_error(400, str(exc))
        from bot.lifecycle import mirror_tags

        await mirror_tags(rt, session, contact)
        await session.flush()
        body = await contact_view(session, contact)
    rt.outbox.wake()
    return web.json_response(body)


