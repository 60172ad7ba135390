"""Each rep's morning to-do list: open tasks due by the end of the day, overdue first, plus hot leads
that nobody has a task for.

Two grouped queries for all reps at once (a window function keeps the first N tasks per rep), never a
loop over reps or contacts. The message is WeCom markdown (≤ 2048 bytes), one link per task to
`{public_url}/tasks/{id}` (the rep's task page; done / snooze from there or from the alert card).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Settings
from bot.digest.window import DigestWindow, md_text, weekday_label
from bot.lifecycle import STAGE_LABELS, shown_score
from bot.models import Contact, Rep, Task
from bot.priority import in_turns

KIND_LABELS = {"sop": "SOP", "follow_up": "跟进", "hot_lead": "热线索", "dormant": "沉睡唤醒", "manual": "待办"}
HOT_STAGES = ("nurturing", "mql", "sql")


@dataclass
class TodoLine:
    task_id: int
    kind: str
    title: str
    due_at: dt.datetime
    priority: int
    overdue: bool


@dataclass
class HotLead:
    name: str
    score: float
    stage: str


@dataclass
class RepTodo:
    userid: str
    name: str
    total: int = 0
    overdue: int = 0
    lines: list[TodoLine] = field(default_factory=list)
    hot: list[HotLead] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.total and not self.hot


async def build_todos(session: AsyncSession, settings: Settings, window: DigestWindow) -> list[RepTodo]:
    """The to-do list of every active rep and manager for `window.day`, as of `window.as_of`."""
    reps = (await session.execute(
        select(Rep.userid, Rep.name).where(Rep.active.is_(True), Rep.role.in_(["rep", "manager"])).order_by(Rep.userid)
    )).all()
    todos = {userid: RepTodo(userid, name or userid) for userid, name in reps}
    if not todos:
        return []
    due_today = and_(
        Task.status == "open", Task.owner_userid.in_(list(todos)), Task.due_at < window.end,
        or_(Task.snoozed_until.is_(None), Task.snoozed_until < window.end),
    )  # fmt: skip
    is_overdue = case((Task.due_at < window.as_of, 1), else_=0)
    for owner, total, overdue in (await session.execute(
        select(Task.owner_userid, func.count(), func.sum(is_overdue)).where(due_today).group_by(Task.owner_userid)
    )).all():
        todos[owner].total, todos[owner].overdue = total, int(overdue or 0)
    rank = func.row_number().over(
        partition_by=Task.owner_userid, order_by=(is_overdue.desc(), Task.priority, Task.due_at, Task.id)
    ).label("rn")
    ranked = select(Task.id, Task.owner_userid, Task.kind, Task.title, Task.due_at, Task.priority, rank).where(due_today).subquery()
    # On the connection, not through the ORM: the rows (one per line of every to-do list, tens of
    # thousands at 2,000 reps) are then converted as they are iterated, in turns, not all at once.
    conn = await session.connection()
    rows = await conn.execute(
        select(ranked).where(ranked.c.rn <= settings.digest.max_tasks).order_by(ranked.c.owner_userid, ranked.c.rn)
    )
    async for row in in_turns(rows, 500):
        due = _aware(row.due_at)
        todos[row.owner_userid].lines.append(TodoLine(row.id, row.kind, row.title, due, row.priority, due < window.as_of))
    await _hot_leads(session, settings, todos)
    return list(todos.values())


async def _hot_leads(session: AsyncSession, settings: Settings, todos: dict[str, RepTodo]) -> None:
    has_task = select(Task.id).where(Task.contact_id == Contact.id, Task.status == "open").exists()
    rank = func.row_number().over(partition_by=Contact.owner_userid, order_by=(Contact.score.desc(), Contact.id)).label("rn")
    hot = select(Contact.owner_userid, Contact.name, Contact.company, Contact.external_userid, Contact.id, Contact.score,
                 Contact.stage, rank).where(
        Contact.owner_userid.in_(list(todos)), Contact.temperature == "hot", Contact.stage.in_(HOT_STAGES),
        Contact.merged_into_id.is_(None), Contact.erased_at.is_(None), ~has_task,
    ).subquery()  # fmt: skip
    conn = await session.connection()  # as for the tasks: rows converted in turns
    async for row in in_turns(await conn.execute(select(hot).where(hot.c.rn <= settings.digest.top_items)), 500):
        name = row.name or row.external_userid or f"#{row.id}"
        label = f"{name}（{row.company}）" if row.company else name
        todos[row.owner_userid].hot.append(HotLead(label, row.score, row.stage))


def render_todo(todo: RepTodo, window: DigestWindow, public_url: str) -> str:
    """The rep's markdown message (the caller splits it if it is too long)."""
    lines = [f"**今日待办 · {window.day.month}月{window.day.day}日 {weekday_label(window.day)}**"]
    if todo.total:
        late = f"，其中 <font color=\"warning\">{todo.overdue} 项已逾期</font>" if todo.overdue else ""
        lines.append(f"{md_text(todo.name)}，你今天有 **{todo.total}** 项待办{late}：")
        for n, line in enumerate(todo.lines, 1):
            flag = "<font color=\"warning\">逾期</font> " if line.overdue else ""
            kind = KIND_LABELS.get(line.kind, line.kind)
            lines.append(f"{n}. {flag}【{kind}】[{md_text(line.title)}]({public_url}/tasks/{line.task_id}) · {_due(line.due_at, window)}")
        if todo.total > len(todo.lines):
            lines.append(f"…还有 {todo.total - len(todo.lines)} 项，[查看全部待办]({public_url}/tasks?rep={todo.userid})")
    else:
        lines.append(f"{md_text(todo.name)}，今天没有到期的待办。")
    if todo.hot:
        lines.append("**热线索（尚无跟进任务）**")
        for lead in todo.hot:
            lines.append(f"> {md_text(lead.name)} · {shown_score(lead.score)} 分 · {STAGE_LABELS.get(lead.stage, lead.stage)}")
    return "\n".join(lines)


def _due(when: dt.datetime, window: DigestWindow) -> str:
    local = when.astimezone(window.tz)
    if local.date() == window.day:
        return f"今天 {local:%H:%M}"
    return f"{local:%m-%d %H:%M} 到期"


def _aware(value: Any) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
