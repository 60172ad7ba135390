"""Dashboard leaderboards: content items, reps and SOP compliance, for a date range and a viewer's
scope. Counted by the database (GROUP BY over Core rows); only the follow-up durations of the tasks
done in the range are fetched, for a median no SQL dialect here computes portably. Definitions:
- **Content**: shares made in the range; opens, 100 % reads, CTA clicks and downloads in the range;
  read-through = reads to 100 % / opens; stage advances = forward stage moves in the range by
  contacts who had read the item (any depth) before the move. Activity counts for the reps whose
  share it was (a rep sees their own links, a manager their team's).
- **Reps**: tasks completed in the range, on time when completed by their due time; follow-up speed
  is the median time from a task's creation (an alert creates its task at once) to done, SOP tasks
  left out (they are scheduled ahead on purpose).
- **SOP compliance**: tasks of kind `sop` due in the range, per owner.
"""

from __future__ import annotations

import datetime as dt
import statistics
from typing import Any

from sqlalchemy import ColumnElement, and_, distinct, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from bot.models import COUNTED_BY_ITEM, READ_FULL, ContentItem, Event, Rep, Share, StageChange, Task
from bot.reports import DateRange, Scope, count_if, item_names, journey_rank, unindexed, within
from bot.tables import Column, Table, bar_chart, ratio


def _made_in(rng: DateRange, scope: Scope) -> ColumnElement[bool]:
    """Shares made (not forwarded) in the range by the reps in scope. A team's are found by the rep
    index, not by the parent index through every share ever made (0.23 s at a million contacts; the rep
    index 3 ms for a team of 11)."""
    root = unindexed(Share.parent_share_id, use_index=scope.team is None).is_(None)
    return and_(root, *within(Share.created_at, rng), *scope.on(Share.rep_userid))


async def content_leaderboard(session: AsyncSession, rng: DateRange, scope: Scope) -> Table:
    """Shares, opens, read-through, CTA clicks, downloads and stage advances after reading, per item."""
    shares = dict((await session.execute(
        select(Share.item_id, func.count())
        .where(_made_in(rng, scope))
        .group_by(Share.item_id)
    )).all())  # fmt: skip
    activity = await _item_activity(session, rng, scope)
    # Driven by the range's stage moves (by their time index), each contact's reads before its move by
    # the (contact, time) index. `unindexed(type)` keeps SQLite from driving it by the (type, time) index
    # instead, through every read ever logged: 19.5 s against 2.8 s at a million contacts.
    advances = dict((await session.execute(
        select(Event.item_id, func.count(distinct(StageChange.id)))
        .select_from(StageChange)
        .join(Event, and_(Event.contact_id == StageChange.contact_id, unindexed(Event.type) == "read",
                          Event.item_id.is_not(None), Event.occurred_at <= StageChange.at))
        .where(*within(StageChange.at, rng), journey_rank(StageChange.to_stage) > journey_rank(StageChange.from_stage),
               journey_rank(StageChange.to_stage) >= 1, *scope.on(Event.rep_userid))
        .group_by(Event.item_id)
    )).all())  # fmt: skip
    items = await item_names(session)
    out = []
    for item_id in set(shares) | set(activity) | set(advances):
        if item_id not in items:
            continue
        opens, read_full, cta, downloads = activity.get(item_id, (0, 0, 0, 0))
        out.append({"slug": items[item_id][0], "title": items[item_id][1], "shares": shares.get(item_id, 0), "opens": opens,
                    "read_100": read_full, "read_through": ratio(read_full, opens), "cta": cta, "downloads": downloads,
                    "advances": advances.get(item_id, 0)})  # fmt: skip
    out.sort(key=lambda r: (-r["opens"], -r["shares"], r["slug"]))
    columns = [Column("title", "内容"), Column("slug", "slug"), Column("shares", "分享", "int"), Column("opens", "打开", "int"),
               Column("read_100", "读完", "int"), Column("read_through", "读完率", "pct"), Column("cta", "CTA 点击", "int"),
               Column("downloads", "下载", "int"), Column("advances", "读后阶段推进", "int")]  # fmt: skip
    top = out[:10]
    chart = bar_chart([r["title"][:14] for r in top], {"打开": [r["opens"] for r in top], "读完": [r["read_100"] for r in top]},
                      horizontal=True)
    return Table("leaderboard", "内容排行", columns, out, chart=chart)


async def _item_activity(session: AsyncSession, rng: DateRange, scope: Scope) -> dict[int, tuple[int, int, int, int]]:
    """Per item with any: opens, reads to the end, CTA clicks and downloads in the range, by the reps in scope.

    A team's are found by the rep index. Everyone's are counted item by item and kind by kind from the
    partial index ix_events_item_counted alone (a read's depth is in its properties; the index holds
    only the reads to the end): grouping the range's events by item read each one's row, 4.4 s for
    30 days at a million contacts, this 0.06 s."""
    dialect = session.get_bind().dialect.name
    read_full = text(READ_FULL[dialect])
    if scope.team is not None:
        rows = await session.execute(
            select(Event.item_id, count_if(Event.type == "open"), count_if(read_full), count_if(Event.type == "cta"),
                   count_if(Event.type == "download"))
            .where(Event.item_id.is_not(None), Event.type.in_(("open", "read", "cta", "download")),
                   *within(Event.occurred_at, rng), *scope.on(Event.rep_userid))
            .group_by(Event.item_id)
        )  # fmt: skip
    else:
        counted = text(COUNTED_BY_ITEM[dialect])

        def of_item(kind: str) -> Any:
            return (select(func.count())
                    .where(Event.item_id == ContentItem.id, counted, Event.type == kind, *within(Event.occurred_at, rng))
                    .correlate(ContentItem).scalar_subquery())  # fmt: skip

        rows = await session.execute(select(ContentItem.id, *(of_item(kind) for kind in ("open", "read", "cta", "download"))))
    return {item_id: tuple(counts) for item_id, *counts in rows if any(counts)}  # type: ignore[misc]


async def team_reps(session: AsyncSession, scope: Scope) -> list[tuple[str, str]]:
    """(userid, name) of the active reps in scope, by userid."""
    rows = await session.execute(select(Rep.userid, Rep.name).where(Rep.active.is_(True), *scope.on(Rep.userid)).order_by(Rep.userid))
    return [(u, n or u) for u, n in rows]


async def rep_leaderboard(session: AsyncSession, rng: DateRange, scope: Scope, *, now: dt.datetime) -> Table:
    """Per rep: shares, opens of their links, tasks done (on time), open overdue tasks, follow-up speed."""
    reps = await team_reps(session, scope)
    shares = dict((await session.execute(
        select(Share.rep_userid, func.count())
        .where(_made_in(rng, scope))
        .group_by(Share.rep_userid)
    )).all())  # fmt: skip
    # Counted rep by rep from the (rep, type, time) index alone, driven by the reps in scope: grouping
    # the range's opens by rep read each one's row (2.4 s for everyone's 500k opens of 30 days at a
    # million contacts; this 0.17 s).
    opens_of_rep = (
        select(func.count()).where(Event.rep_userid == Rep.userid, Event.type == "open", *within(Event.occurred_at, rng))
        .correlate(Rep).scalar_subquery()
    )  # fmt: skip
    opens = dict((await session.execute(
        select(Rep.userid, opens_of_rep).where(Rep.active.is_(True), *scope.on(Rep.userid))
    )).all())  # fmt: skip
    # Everyone's tasks done in the range come from the covering (completed, ...) index alone; SQLite,
    # given the status equality, drove by the status index and read each done task's row (two statements
    # 0.15 s each at a million contacts, 99k tasks done in 30 days; this 0.06 s). A team's keep the owner index.
    done_in_range = [unindexed(Task.status, use_index=scope.team is not None) == "done", *within(Task.completed_at, rng),
                     *scope.on(Task.owner_userid)]
    done = {
        owner: (n, on_time)
        for owner, n, on_time in await session.execute(
            select(Task.owner_userid, func.count(), count_if(Task.completed_at <= Task.due_at))
            .where(*done_in_range)
            .group_by(Task.owner_userid)
        )
    }
    overdue = dict((await session.execute(
        select(Task.owner_userid, func.count())
        .where(Task.status == "open", Task.due_at < now, *scope.on(Task.owner_userid))
        .group_by(Task.owner_userid)
    )).all())  # fmt: skip
    spans: dict[str, list[float]] = {}
    for owner, created, completed in await session.execute(
        select(Task.owner_userid, Task.created_at, Task.completed_at)
        .where(*done_in_range, Task.kind != "sop")
    ):
        if completed is not None:
            spans.setdefault(owner, []).append((completed - created).total_seconds())
    out = []
    for userid, name in reps:
        n_done, on_time = done.get(userid, (0, 0))
        speed = statistics.median(spans[userid]) if spans.get(userid) else None
        out.append({"rep": name, "userid": userid, "shares": shares.get(userid, 0), "opens": opens.get(userid, 0),
                    "tasks_done": n_done, "on_time": on_time, "on_time_rate": ratio(on_time, n_done),
                    "overdue_open": overdue.get(userid, 0), "follow_up_median_s": speed})  # fmt: skip
    out.sort(key=lambda r: (-r["tasks_done"], -r["shares"], r["userid"]))
    columns = [Column("rep", "成员"), Column("userid", "userid"), Column("shares", "分享", "int"), Column("opens", "链接打开", "int"),
               Column("tasks_done", "完成任务", "int"), Column("on_time", "按时完成", "int"), Column("on_time_rate", "按时率", "pct"),
               Column("overdue_open", "当前逾期", "int"), Column("follow_up_median_s", "跟进速度（中位数）", "duration")]  # fmt: skip
    chart = bar_chart([r["rep"] for r in out], {"完成任务": [r["tasks_done"] for r in out], "按时完成": [r["on_time"] for r in out]})
    return Table("reps", "成员排行", columns, out, chart=chart)


async def sop_compliance(session: AsyncSession, rng: DateRange, scope: Scope, *, now: dt.datetime) -> Table:
    """SOP tasks due in the range per owner: done, done on time, overdue (still open), dismissed.

    Everyone's are found by the (kind, due) index: without it SQLite read every task ever made through
    the owner index (0.28 s for 650k tasks, 207k of them SOP, at a million contacts; this 0.09 s). A
    team's stay on the owner index (8 ms for 10 reps; by the (kind, due) index 42 ms)."""
    names = dict(await team_reps(session, scope))
    rows = await session.execute(
        select(Task.owner_userid, func.count(), count_if(Task.status == "done"),
               count_if(and_(Task.status == "done", Task.completed_at <= Task.due_at)),
               count_if(and_(Task.status == "open", Task.due_at < now)), count_if(Task.status == "dismissed"))
        .where(unindexed(Task.kind, use_index=scope.team is None) == "sop", *within(Task.due_at, rng), *scope.on(Task.owner_userid))
        .group_by(Task.owner_userid)
    )  # fmt: skip
    out = [
        {"rep": names.get(owner, owner), "userid": owner, "due": due, "done": n_done, "on_time": on_time, "overdue": late,
         "dismissed": dismissed, "compliance": ratio(on_time, due)}
        for owner, due, n_done, on_time, late, dismissed in rows
    ]  # fmt: skip
    out.sort(key=lambda r: (r["compliance"] if r["compliance"] is not None else 2, r["userid"]))
    columns = [Column("rep", "成员"), Column("userid", "userid"), Column("due", "到期", "int"), Column("done", "已完成", "int"),
               Column("on_time", "按时完成", "int"), Column("overdue", "逾期未完成", "int"), Column("dismissed", "不相关", "int"),
               Column("compliance", "按时完成率", "pct")]  # fmt: skip
    return Table("sop", "SOP 执行", columns, out, note="所选日期内到期的 SOP 任务")
