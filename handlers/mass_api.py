"""POST /api/mass-sends (a library item to a segment of contacts, through their reps; bot/mass_send.py)
and GET /api/mass-sends/{id} (what it reached, and how many opened their link)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select

from bot.app import RUNTIME
from bot.context import Context
from bot.errors import InvalidInput, NotShareable
from bot.mass_send import EVERYONE, SKIP_REASONS, check_text, parse_segment, plan, render, report, send
from bot.models import ContentItem
from handlers.api import api_error, read_json

routes = web.RouteTableDef()


@routes.post("/api/mass-sends")
async def handle_mass_send(request: web.Request) -> web.Response:
    """{"content": slug, "segment": {stage, temperature, owner, channel (name), q}, "text"?, "by"?,
    "dry_run"?} → 201 {"id", "recipients", "by_rep", "skipped", "preview"} (dry run: 200 without id,
    nothing recorded or sent); 400 {"error", "field"} for a bad field or an empty segment; 404 unknown
    content."""
    rt = request.app[RUNTIME]
    data = await read_json(request)
    slug, text, by, dry_run = data.get("content"), data.get("text"), data.get("by"), data.get("dry_run", False)
    if not isinstance(slug, str) or not slug.strip():
        return api_error(400, "content is required", field="content")
    if text is not None and not isinstance(text, str):
        return api_error(400, "text must be a string", field="text")
    if by is not None and (not isinstance(by, str) or len(by) > 64):
        return api_error(400, "by must be a string of at most 64 characters", field="by")
    if not isinstance(dry_run, bool):
        return api_error(400, "dry_run must be true or false", field="dry_run")
    async with rt.sessions() as session, session.begin():
        item = await session.scalar(select(ContentItem).where(ContentItem.slug == slug.strip()))
        if item is None:
            return api_error(404, f"unknown content: {slug}")
        try:
            template = check_text(text)
            segment = await parse_segment(session, data.get("segment"))
            prepared = await plan(session, item, segment, EVERYONE, now=rt.clock.now(), timezone=rt.settings.scheduler.timezone)
        except InvalidInput as exc:
            return api_error(400, exc.message, field=exc.field)
        except NotShareable as exc:
            return api_error(400, str(exc), field="content")
        skipped = {k: {"count": n, "reason": SKIP_REASONS[k]} for k, n in sorted(prepared.skipped.items())}
        if not prepared.recipients:
            return api_error(400, "no contact in the segment can receive it", field="segment", skipped=skipped)
        first = prepared.recipients[0]
        body: dict[str, Any] = {
            "content": item.slug, "recipients": len(prepared.recipients), "by_rep": prepared.by_rep(), "skipped": skipped,
            "preview": render(template, first, item, f"{rt.settings.server.public_url}/l/…", first.owner),
        }  # fmt: skip
        if dry_run:
            await session.rollback()
            return web.json_response({**body, "dry_run": True})
        ctx = Context(rt, session, origin="api:mass-send")
        mass = await send(ctx, prepared, template, segment={k: v for k, v in (data.get("segment") or {}).items() if v is not None},
                          created_by=(by or "api").strip())  # fmt: skip
        body["id"] = mass.id
    rt.outbox.wake()
    return web.json_response(body, status=201)


@routes.get("/api/mass-sends/{id:\\d+}")
async def handle_mass_send_report(request: web.Request) -> web.Response:
    """200 {"id", "content", "recipients", "by_rep", "skipped", "opened", ...}; 404 unknown id."""
    async with request.app[RUNTIME].read_sessions() as session:
        found = await report(session, int(request.match_info["id"]))
    if found is None:
        return api_error(404, f"unknown mass send: {request.match_info['id']}")
    return web.json_response(found)
