"""The digest jobs (`digest-reps`, `digest-managers`) and the building blocks the CLI shares with them.

Data is read in a read-only session, and charts are drawn in a child process. Only then does the job's
unit of work write the `digests` rows and the outbox rows, committing every CLAIM_CHUNK recipients or
sooner, before one more claim and the COMMIT (timed at the last one) would take the transaction past
CLAIM_BUDGET_S (a manager's digest carries its chart), so on SQLite the write lock is held for
milliseconds at a time, not for the whole build or all of a large team's claims at once. A claim is
idempotent (one `digests` row per kind, recipient and day): a run that fails half-way has queued the
digests it committed, and a later run queues the rest.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Settings
from bot.context import Context
from bot.digest.managers import render_team, summary
from bot.digest.send import Outgoing, claim_and_queue
from bot.digest.team import build_team_digests
from bot.digest.todo import build_todos, render_todo
from bot.digest.window import split_markdown, today, window_for
from bot.sop.calendar import BusinessCalendar

log = logging.getLogger("beacon.digest")
KINDS = ("reps", "managers")
CLAIM_CHUNK = 20  # recipients per write transaction at most (a few milliseconds each)
CLAIM_BUDGET_S = 0.02  # and a transaction commits before it would run longer than this, COMMIT included


async def build_outgoing(session: AsyncSession, settings: Settings, kind: str, day: dt.date) -> list[Outgoing]:
    """Every recipient's digest of `kind` for `day` (reps: that day's to-do list; managers: the day before)."""
    window = window_for(kind, day, settings)
    public = settings.server.public_url
    if kind == "reps":
        outs = []
        for todo in await build_todos(session, settings, window):
            bodies = [] if todo.empty else split_markdown(render_todo(todo, window, public))
            numbers = {"tasks": todo.total, "overdue": todo.overdue, "task_ids": [t.task_id for t in todo.lines],
                       "hot": len(todo.hot)}
            outs.append(Outgoing(kind, todo.userid, day, bodies, None, numbers))
        return outs
    teams = await build_team_digests(session, settings, window)
    charts: list[bytes | None] = [None] * len(teams)
    if settings.digest.chart and teams:
        from bot.digest.chart import draw_charts

        charts = list(await draw_charts([(team, f"{team.name} · {window.report_day.isoformat()}") for team in teams]))
    outs = []
    for team, chart in zip(teams, charts):
        body = render_team(team, window, public, settings.alerts.sla_hours)
        outs.append(Outgoing(kind, team.manager, day, split_markdown(body), chart, summary(team)))
    return outs


def should_send(settings: Settings, day: dt.date) -> bool:
    return not settings.digest.workdays_only or BusinessCalendar.from_settings(settings).is_business_day(day)


async def send_digests(ctx: Context, kind: str, day: dt.date) -> tuple[int, int]:
    """Build and queue the digests of `kind` for `day`. Returns (sent now, already sent or empty)."""
    if not should_send(ctx.settings, day):
        log.info("digest %s %s: not a business day, nothing sent", kind, day)
        return 0, 0
    async with ctx.runtime.read_sessions() as reader:
        outs = await build_outgoing(reader, ctx.settings, kind, day)
    now = ctx.clock.now()
    sent = skipped = 0
    clock = time.perf_counter
    began, claimed, commit_s = clock(), 0, 0.0
    for n, out in enumerate(outs, 1):
        if await claim_and_queue(ctx.session, out, now=now) and out.bodies:
            sent += 1
        else:
            skipped += 1
        claimed += 1
        if n == len(outs):
            break  # the caller's unit of work commits the last chunk
        elapsed = clock() - began
        # Commit now if one more claim and the COMMIT would overrun the budget: on SQLite the write
        # lock is held through COMMIT, which at a million contacts took as long as the claims.
        if claimed == CLAIM_CHUNK or elapsed + elapsed / claimed + commit_s > CLAIM_BUDGET_S:
            committing = clock()
            await ctx.session.commit()  # the job's session begins again with the next claim
            commit_s = clock() - committing
            await asyncio.sleep(0)  # let the loop serve requests between chunks
            began, claimed = clock(), 0
    log.info("digest %s %s: %d sent, %d already sent or empty", kind, day, sent, skipped)
    return sent, skipped


async def digest_reps(ctx: Context) -> None:
    """Each rep's to-do list for today."""
    await send_digests(ctx, "reps", today(ctx.settings, ctx.clock.now()))


async def digest_managers(ctx: Context) -> None:
    """Each manager's digest of yesterday."""
    await send_digests(ctx, "managers", today(ctx.settings, ctx.clock.now()))
