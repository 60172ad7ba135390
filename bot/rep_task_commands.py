"""What 任务 / 完成 / 推迟 answer: the rep's to-do list, and changes only the owner may make."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from bot.errors import InvalidInput, NotFound
from bot.models import Rep
from bot.rep_desk import Reply, when_text
from bot.rep_texts import say
from bot.tasks import NotYourTask, TaskClosed, complete, get_task, list_tasks, parse_duration, snooze

if TYPE_CHECKING:
    from bot.runtime import Runtime

LIST_LIMIT = 20
_ID = re.compile(r"^#?(\d{1,12})$")
STATUS_WORDS = {"zh": {"done": "已完成", "dismissed": "已忽略"}, "en": {}}


def _task_id(text: str) -> int | None:
    match = _ID.match(text.strip())
    return int(match.group(1)) if match else None


async def tasks_reply(rt: "Runtime", session: AsyncSession, rep: Rep, lang: str) -> Reply:
    """任务: open tasks, urgent first then by due time, each with its id for 完成 / 推迟."""
    rows = await list_tasks(session, rep=rep.userid, status="open", limit=LIST_LIMIT + 1)
    if not rows:
        return Reply.text(say("tasks_none", lang))
    now, tz = rt.clock.now(), rt.settings.scheduler.timezone
    lines = [say("tasks_head", lang, n=len(rows) if len(rows) <= LIST_LIMIT else f"{LIST_LIMIT}+")]
    for task, _contact in rows[:LIST_LIMIT]:
        mark = say("urgent_mark", lang) if task.priority == 1 else ""
        title = task.title if len(task.title) <= 40 else task.title[:39] + "…"
        if task.snoozed_until is not None and task.snoozed_until > now:
            when = say("task_snoozed", lang, when=when_text(task.snoozed_until, now, tz, lang))
        else:
            when = say("task_due", lang, when=when_text(task.due_at, now, tz, lang))
        lines.append(f"#{task.id} {mark}{title} · {when}")
    lines += ["", say("tasks_tail", lang)]
    return Reply.text("\n".join(lines))


async def done_reply(rt: "Runtime", session: AsyncSession, rep: Rep, args: str, lang: str) -> Reply:
    """完成 <编号>: marks the rep's own task done."""
    task_id = _task_id(args)
    if task_id is None:
        return Reply.text(say("done_usage", lang))
    try:
        task = await get_task(session, task_id, rep=rep.userid)
    except NotFound:
        return Reply.text(say("task_unknown", lang, id=task_id))
    except NotYourTask:
        return Reply.text(say("task_not_yours", lang, id=task_id))
    if not complete(task, rt.clock.now()):
        return Reply.text(say("done_already", lang, id=task_id))
    return Reply.text(say("done_ok", lang, id=task.id, title=task.title))


async def snooze_reply(rt: "Runtime", session: AsyncSession, rep: Rep, args: str, lang: str) -> Reply:
    """推迟 <编号> <时长>: reminds the owner later (1h, 30m, 2天, 明天 …)."""
    first, _, rest = args.strip().partition(" ")
    task_id = _task_id(first)
    if task_id is None or not rest.strip():
        return Reply.text(say("snooze_usage", lang))
    now, tz = rt.clock.now(), rt.settings.scheduler.timezone
    until = parse_duration(rest, now, tz)
    if until is None:
        return Reply.text(say("bad_duration", lang, d=rest.strip()))
    try:
        task = await get_task(session, task_id, rep=rep.userid)
        snooze(task, until, now)
    except NotFound:
        return Reply.text(say("task_unknown", lang, id=task_id))
    except NotYourTask:
        return Reply.text(say("task_not_yours", lang, id=task_id))
    except TaskClosed as exc:
        status = STATUS_WORDS.get(lang, {}).get(exc.task.status, exc.task.status)
        return Reply.text(say("task_closed", lang, id=task_id, status=status))
    except InvalidInput:
        return Reply.text(say("bad_duration", lang, d=rest.strip()))
    return Reply.text(say("snooze_ok", lang, id=task_id, when=when_text(until, now, tz, lang)))
