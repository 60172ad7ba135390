"""To-do tasks of reps: listing, manual creation, done / snooze / dismiss, and reading durations.

One implementation for the admin API (handlers/tasks_api.py), the chat commands and the alert cards.
Domain errors (`NotFound`, `NotYourTask`, `TaskClosed`, `InvalidInput`) are translated at the edges.
A snoozed task stays "open" with `snoozed_until`; the alert job reminds the owner when it runs out.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.errors import DomainError, InvalidInput, NotFound
from bot.models import Contact, Task

TASK_KINDS = ("follow_up", "sop", "hot_lead", "dormant", "manual")
TASK_KIND_LABELS = {"follow_up": "跟进", "sop": "SOP", "hot_lead": "热线索", "dormant": "沉睡唤醒", "manual": "手动"}
FOLLOW_UP_KINDS = ("follow_up", "hot_lead", "dormant")  # what alerts open, and what the SLA watches
STATUSES = ("open", "done", "dismissed")
MAX_SNOOZE = dt.timedelta(days=30)
MORNING = dt.time(9, 0)  # "tomorrow" means the start of the next working morning

_UNITS = {
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60, "分": 60, "分钟": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600, "时": 3600, "小时": 3600, "个小时": 3600,
    "d": 86400, "day": 86400, "days": 86400, "天": 86400,
}  # fmt: skip
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(" + "|".join(sorted(map(re.escape, _UNITS), key=len, reverse=True)) + r")", re.I)
_TOMORROW = {"明天", "明早", "tomorrow", "明天早上"}


class NotYourTask(DomainError):
    def __init__(self, task_id: int) -> None:
        super().__init__(f"task {task_id} belongs to another rep")
        self.task_id = task_id


class TaskClosed(DomainError):
    def __init__(self, task: Task) -> None:
        super().__init__(f"task {task.id} is already {task.status}")
        self.task = task


def tomorrow_morning(now: dt.datetime, tz: str) -> dt.datetime:
    local = now.astimezone(ZoneInfo(tz))
    day = local.date() + dt.timedelta(days=1)
    return dt.datetime.combine(day, MORNING, tzinfo=ZoneInfo(tz)).astimezone(dt.timezone.utc)


def parse_duration(text: str, now: dt.datetime, tz: str) -> dt.datetime | None:
    """When a snooze of `text` ends: "1h", "30m", "1h30m", "2天", "90 分钟", "明天"/"tomorrow"
    (next morning 09:00 local). None when the text is not a duration or is over 30 days."""
    cleaned = re.sub(r"\s+", "", (text or "").strip().lower())
    if not cleaned:
        return None
    if cleaned in _TOMORROW:
        return tomorrow_morning(now, tz)
    parts = _PART.findall(cleaned)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != cleaned:
        return None
    seconds = sum(float(n) * _UNITS[u.lower()] for n, u in parts)
    if seconds <= 0 or seconds > MAX_SNOOZE.total_seconds():
        return None
    return now + dt.timedelta(seconds=seconds)


async def get_task(session: AsyncSession, task_id: int, *, rep: str | None = None) -> Task:
    """The task; NotFound if there is none, NotYourTask if `rep` is given and does not own it."""
    task = await session.get(Task, task_id)
    if task is None:
        raise NotFound("task", str(task_id))
    if rep is not None and task.owner_userid != rep:
        raise NotYourTask(task_id)
    return task


def complete(task: Task, now: dt.datetime) -> bool:
    """Mark done (idempotent); False if it already was. A dismissed task can still be done."""
    if task.status == "done":
        return False
    task.status, task.completed_at, task.snoozed_until = "done", now, None
    return True


def dismiss(task: Task, now: dt.datetime) -> bool:
    """Not relevant: closed without follow-up (idempotent)."""
    if task.status == "dismissed":
        return False
    if task.status == "done":
        raise TaskClosed(task)
    task.status, task.completed_at, task.snoozed_until = "dismissed", now, None
    return True


def snooze(task: Task, until: dt.datetime, now: dt.datetime) -> None:
    """Remind later: stays open, hidden from "due now" until `until`."""
    if task.status != "open":
        raise TaskClosed(task)
    if until <= now:
        raise InvalidInput("until", "must be in the future")
    if until - now > MAX_SNOOZE:
        raise InvalidInput("until", "must be within 30 days")
    task.snoozed_until = until


async def add_task(
    session: AsyncSession, *, rep: str, title: str, now: dt.datetime, contact: Contact | None = None,
    due_at: dt.datetime | None = None, priority: int = 2, kind: str = "manual", source_event_id: int | None = None,
) -> Task:
    title = title.strip()
    if not title:
        raise InvalidInput("title", "is required")
    if len(title) > 255:
        raise InvalidInput("title", "must be at most 255 characters")
    if priority not in (1, 2, 3):
        raise InvalidInput("priority", "must be 1 (urgent), 2 (normal) or 3 (low)")
    task = Task(kind=kind, title=title, owner_userid=rep, contact_id=contact.id if contact else None, priority=priority,
                due_at=due_at or now, source_event_id=source_event_id, created_at=now)
    session.add(task)
    await session.flush()
    return task


async def list_tasks(
    session: AsyncSession, *, rep: str | None, status: str = "open", limit: int = 200
) -> list[tuple[Task, Contact | None]]:
    """Tasks with their contacts: urgent first, then by due time (open) or newest first (closed)."""
    stmt = select(Task, Contact).outerjoin(Contact, Contact.id == Task.contact_id).where(Task.status == status)
    if rep is not None:
        stmt = stmt.where(Task.owner_userid == rep)
    if status == "open":
        stmt = stmt.order_by(Task.priority, Task.due_at, Task.id)
    else:
        stmt = stmt.order_by(Task.completed_at.desc(), Task.id.desc())
    return [(task, contact) for task, contact in (await session.execute(stmt.limit(limit))).all()]


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def task_json(task: Task, contact: Contact | None) -> dict[str, Any]:
    """The API's view of a task (CONTRACT.md: id, kind, title, contact, due_at, status, ...)."""
    return {
        "id": task.id,
        "kind": task.kind,
        "title": task.title,
        "body": task.body,
        "contact": contact.external_userid if contact is not None else None,
        "contact_name": contact.name if contact is not None else None,
        "rep": task.owner_userid,
        "priority": task.priority,
        "due_at": _iso(task.due_at),
        "status": task.status,
        "snoozed_until": _iso(task.snoozed_until),
        "source_event_id": task.source_event_id,
        "created_at": _iso(task.created_at),
        "completed_at": _iso(task.completed_at),
        "escalated_at": _iso(task.escalated_at),
    }
