"""The rep's to-do pages: `/tasks` (my list) and `/tasks/{id}` (one task, with 完成 / 稍后提醒 / 不相关).

Digests and SOP messages link here. Anyone whose scope covers the task's owner may look (a manager sees
the team's tasks, an admin all); only the owner changes a task. Actions are CSRF-protected forms that
redirect back to the task (post/redirect/get), with the outcome in `?done=`.
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlencode

from aiohttp import web

from bot.app import RUNTIME
from bot.errors import InvalidInput
from bot.models import Contact, Event, Rep, Task
from bot.tables import format_cell
from bot.tasks import TASK_KIND_LABELS, TaskClosed, complete, dismiss, list_tasks, parse_duration, snooze, tomorrow_morning
from handlers.pagekit import NO_STORE, csrf_ok, error_page, page_viewer, render, zone

routes = web.RouteTableDef()

PRIORITY_LABELS = {1: "紧急", 2: "普通", 3: "低"}
STATUS_LABELS = {"open": "待办", "done": "已完成", "dismissed": "不相关"}
OUTCOMES = {"done": "已标记为完成。", "snoozed": "已推迟提醒。", "dismissed": "已标记为不相关。"}
SNOOZE_CHOICES = (("1h", "1 小时后"), ("明天", "明天早上"), ("3天", "3 天后"))


def _task_id(request: web.Request) -> int | None:
    raw = request.match_info["id"]
    return int(raw) if raw.isdigit() and len(raw) <= 15 else None


@routes.get("/tasks")
async def handle_my_tasks(request: web.Request) -> web.Response:
    """The viewer's open tasks (due and overdue first, snoozed ones last) and what they closed lately.
    A manager may add `?rep=<userid>` for a team member's list."""
    viewer = await page_viewer(request)
    if isinstance(viewer, web.Response):
        return viewer
    rt = request.app[RUNTIME]
    rep = request.query.get("rep") or viewer.userid
    if rep is None:
        return error_page(request, 400, "管理员令牌登录没有自己的任务；请用 ?rep=成员账号 查看某位成员的任务。", viewer=viewer)
    if not viewer.sees_owner(rep):
        return error_page(request, 403, "您只能查看自己（或您团队成员）的任务。", viewer=viewer)
    now = rt.clock.now()
    async with rt.read_sessions() as session:
        owner = await session.get(Rep, rep)
        if owner is None:
            return error_page(request, 404, f"没有这位成员：{rep[:64]}", viewer=viewer)
        open_rows = await list_tasks(session, rep=rep, status="open", limit=200)
        closed = [row for status in ("done", "dismissed") for row in await list_tasks(session, rep=rep, status=status, limit=20)]
    closed.sort(key=lambda row: row[0].completed_at or now, reverse=True)
    due = [row for row in open_rows if not _snoozed(row[0], now)]
    later = [row for row in open_rows if _snoozed(row[0], now)]
    return render(request, "tasks.html", viewer=viewer, nav="tasks", title="我的任务" if rep == viewer.userid else f"{owner.name or rep} 的任务",
                  due=due, later=later, closed=closed[:20], now=now, labels=_labels(), when=_when(request))  # fmt: skip


@routes.get(r"/tasks/{id}")
async def handle_task(request: web.Request) -> web.Response:
    viewer = await page_viewer(request)
    if isinstance(viewer, web.Response):
        return viewer
    task_id = _task_id(request)
    if task_id is None:
        return error_page(request, 404, "没有这个任务。", viewer=viewer)
    rt = request.app[RUNTIME]
    async with rt.read_sessions() as session:
        task = await session.get(Task, task_id)
        if task is None:
            return error_page(request, 404, f"没有编号为 {task_id} 的任务。", viewer=viewer)
        if not viewer.sees_owner(task.owner_userid):
            return error_page(request, 403, "这是其他成员的任务，您无权查看。", viewer=viewer)
        contact = await session.get(Contact, task.contact_id) if task.contact_id else None
        owner = await session.get(Rep, task.owner_userid)
        source = await session.get(Event, task.source_event_id) if task.source_event_id else None
    outcome = OUTCOMES.get(request.query.get("done", ""))
    return render(request, "task.html", viewer=viewer, nav="tasks", title=f"任务 #{task.id}", task=task, contact=contact,
                  owner=owner, source=source, now=rt.clock.now(), outcome=outcome, error=request.query.get("error", "")[:200],
                  can_act=viewer.userid == task.owner_userid, snooze_choices=SNOOZE_CHOICES, labels=_labels(), when=_when(request))  # fmt: skip


@routes.post(r"/tasks/{id}/{action:done|snooze|dismiss}")
async def handle_task_action(request: web.Request) -> web.Response:
    viewer = await page_viewer(request, member=True)
    if isinstance(viewer, web.Response):
        return viewer
    task_id = _task_id(request)
    if task_id is None:
        return error_page(request, 404, "没有这个任务。", viewer=viewer)
    form = await request.post()
    if not csrf_ok(request, viewer, str(form.get("csrf", ""))):
        return error_page(request, 403, "页面已过期，请刷新后重试。", viewer=viewer)
    rt = request.app[RUNTIME]
    action = request.match_info["action"]
    now = rt.clock.now()
    back = f"/tasks/{task_id}"
    async with rt.sessions() as session, session.begin():
        task = await session.get(Task, task_id, with_for_update=True)
        if task is None:
            return error_page(request, 404, f"没有编号为 {task_id} 的任务。", viewer=viewer)
        if task.owner_userid != viewer.userid:
            return error_page(request, 403, "只有任务负责人可以处理这个任务。", viewer=viewer)
        try:
            if action == "done":
                complete(task, now)
                outcome = "done"
            elif action == "dismiss":
                dismiss(task, now)
                outcome = "dismissed"
            else:
                snooze(task, _snooze_until(str(form.get("for", "")), now, rt.settings.scheduler.timezone), now)
                outcome = "snoozed"
        except InvalidInput as exc:
            return _back(back, error=exc.message)
        except TaskClosed:
            label = STATUS_LABELS.get(task.status, task.status)
            return _back(back, error=f"任务已是「{label}」，不能再推迟或改为不相关。")
    return _back(back, done=outcome)


def _snooze_until(text: str, now: dt.datetime, tz: str) -> dt.datetime:
    if text.strip() in ("tomorrow", "明天"):
        return tomorrow_morning(now, tz)
    until = parse_duration(text, now, tz)
    if until is None:
        raise InvalidInput("for", f"看不懂的时长 {text.strip()[:20]!r}：请写如 30分钟、2小时、1h30m、3天 或 明天（最长 30 天）")
    return until


def _back(path: str, **query: str) -> web.Response:
    return web.Response(status=303, headers={"Location": f"{path}?{urlencode(query)}", **NO_STORE})


def _snoozed(task: Task, now: dt.datetime) -> bool:
    return task.snoozed_until is not None and task.snoozed_until > now


def _when(request: web.Request):  # noqa: ANN202 (a template helper)
    tz = zone(request)
    return lambda value: format_cell(value, "dt", tz)


def _labels() -> dict[str, dict]:
    return {"kind": TASK_KIND_LABELS, "priority": PRIORITY_LABELS, "status": STATUS_LABELS}

