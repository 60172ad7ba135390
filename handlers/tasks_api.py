"""Admin API for reps' to-do tasks (bearer auth comes from handlers.api).

GET /api/tasks?rep=&status=open|done|dismissed, POST /api/tasks (a manual task), and
POST /api/tasks/{id}/done | snooze | dismiss. Validation errors are 400 with the field named,
unknown tasks, reps and contacts 404, changing a closed task 409.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from bot.app import RUNTIME
from bot.errors import InvalidInput, NotFound
from bot.models import Contact, Rep
from bot.tasks import STATUSES, TaskClosed, add_task, complete, dismiss, get_task, list_tasks, snooze, task_json
from handlers.api import api_error, read_json
from handlers.contacts_api import find_contact

routes = web.RouteTableDef()
MAX_SNOOZE_MINUTES = 30 * 24 * 60


def _when(value: Any, field: str) -> dt.datetime:
    if not isinstance(value, str):
        raise InvalidInput(field, "must be an ISO 8601 time with an offset, e.g. 2026-11-23T15:00:00+08:00")
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(field, f"is not an ISO 8601 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise InvalidInput(field, "needs a time zone offset, e.g. 2026-11-23T15:00:00+08:00")
    return parsed.astimezone(dt.timezone.utc)


def _text(data: dict[str, Any], field: str, *, required: bool) -> str | None:
    value = data.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(field, "is required (a non-empty string)" if required else "must be a non-empty string or null")
    return value.strip()


async def _contact_json(session: Any, task: Any) -> dict[str, Any]:
    contact = await session.get(Contact, task.contact_id) if task.contact_id else None
    return task_json(task, contact)


@routes.get("/api/tasks")
async def handle_list_tasks(request: web.Request) -> web.Response:
    """Tasks of one rep (`rep`, optional: everyone's) with `status` open (default; snoozed ones included,
    with `snoozed_until`), done or dismissed → 200 [{"id", "kind", "title", "contact", "due_at", "status", ...}];
    400 bad status; 404 unknown rep."""
    rt = request.app[RUNTIME]
    status = request.query.get("status") or "open"
    if status not in STATUSES:
        return api_error(400, f"status must be one of {', '.join(STATUSES)}", field="status")
    rep = request.query.get("rep") or None
    async with rt.read_sessions() as session:
        if rep is not None and await session.get(Rep, rep) is None:
            return api_error(404, f"unknown rep: {rep}")
        rows = await list_tasks(session, rep=rep, status=status, limit=1000)
    return web.json_response([task_json(task, contact) for task, contact in rows])


@routes.post("/api/tasks")
async def handle_create_task(request: web.Request) -> web.Response:
    """A manual task: {rep, contact?, title, due_at?, priority?} → 201 with the task; 400 names the bad
    field; 404 unknown rep or contact."""
    rt = request.app[RUNTIME]
    data = await read_json(request)
    now = rt.clock.now()
    try:
        rep_id = _text(data, "rep", required=True)
        title = _text(data, "title", required=True)
        external = _text(data, "contact", required=False)
        due_at = _when(data["due_at"], "due_at") if data.get("due_at") is not None else None
        priority = data.get("priority", 2)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise InvalidInput("priority", "must be 1 (urgent), 2 (normal) or 3 (low)")
        async with rt.sessions() as session, session.begin():
            if await session.get(Rep, rep_id) is None:
                return api_error(404, f"unknown rep: {rep_id}")
            contact = await find_contact(session, external) if external else None
            if external and contact is None:
                return api_error(404, f"unknown contact: {external}")
            task = await add_task(session, rep=rep_id or "", title=title or "", now=now, contact=contact, due_at=due_at,
                                  priority=priority)
            body = task_json(task, contact)
    except InvalidInput as exc:
        return api_error(400, str(exc), field=exc.field)
    return web.json_response(body, status=201)


async def _change(request: web.Request, action: str) -> web.Response:
    rt = request.app[RUNTIME]
    data = await read_json(request) if action == "snooze" else {}
    now = rt.clock.now()
    try:
        until = _snooze_until(data, now) if action == "snooze" else None
        async with rt.sessions() as session, session.begin():
            task = await get_task(session, int(request.match_info["id"]))
            if action == "done":
                complete(task, now)
            elif action == "dismiss":
                dismiss(task, now)
            else:
                assert until is not None
                snooze(task, until, now)
            body = await _contact_json(session, task)
    except InvalidInput as exc:
        return api_error(400, str(exc), field=exc.field)
    except NotFound as exc:
        return api_error(404, str(exc))
    except TaskClosed as exc:
        return api_error(409, str(exc))
    return web.json_response(body)


def _snooze_until(data: dict[str, Any], now: dt.datetime) -> dt.datetime:
    if data.get("until") is not None:
        return _when(data["until"], "until")
    minutes = data.get("minutes")
    if minutes is None:
        raise InvalidInput("until", "give until (ISO 8601 time) or minutes")
    if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= MAX_SNOOZE_MINUTES:
        raise InvalidInput("minutes", f"must be a whole number from 1 to {MAX_SNOOZE_MINUTES}")
    return now + dt.timedelta(minutes=minutes)


@routes.post(r"/api/tasks/{id:\d{1,15}}/done")
async def handle_task_done(request: web.Request) -> web.Response:
    """Mark a task done (repeating it is harmless) → 200 with the task; 404 unknown."""
    return await _change(request, "done")


@routes.post(r"/api/tasks/{id:\d{1,15}}/snooze")
async def handle_task_snooze(request: web.Request) -> web.Response:
    """Snooze an open task: {"until": iso8601} or {"minutes": n} → 200 (still "open", with
    snoozed_until; the owner is reminded then); 400 bad or past time; 404 unknown; 409 closed."""
    return await _change(request, "snooze")


@routes.post(r"/api/tasks/{id:\d{1,15}}/dismiss")
async def handle_task_dismiss(request: web.Request) -> web.Response:
    """Dismiss a task as not relevant → 200 with the task; 404 unknown; 409 if it was done."""
    return await _change(request, "dismiss")
