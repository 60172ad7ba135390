"""The digest jobs (`digest-reps`, `digest-managers`) and the building blocks the CLI shares with them.

Data is read in a read-only session, and charts are drawn in a child process. Only then are the
`digests` rows and the outbox rows written, committing every CLAIM_CHUNK recipients or sooner, before
one more claim and the COMMIT (timed at the last one) would take the transaction past CLAIM_BUDGET_S (a
manager's digest carries its chart), so on SQLite the write lock is held for milliseconds at a time, not
for the whole build or all of a large team's claims at once. A claim is idempotent (one `digests` row
per kind, recipient and day): a run that fails half-way has queued the digests it committed, and a
later run queues the rest.

On SQLite every row is converted for the driver first, and each transaction (BEGIN IMMEDIATE, its
claims, COMMIT) is one call on the connection's thread: no await inside it lets the event loop's other
work (link opens, the tracker) run while the lock is held, which under load stretched a 20 ms chunk
several times over. Elsewhere (PostgreSQL, where a transaction holds row locks only) the job's unit of
work makes the claims and commits the last chunk.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from bot.batch import prepared_statement, write_in_one_call
from bot.config import Settings
from bot.context import Context
from bot.db import write_gate, yield_to_writer
from bot.digest.managers import render_team, summary
from bot.digest.send import Outgoing, claim_and_queue, claim_statement, digest_row, messages
from bot.digest.team import build_team_digests
from bot.digest.todo import build_todos, render_todo
from bot.digest.window import split_markdown, today, window_for
from bot.models import OutboxItem
from bot.outbox import outbox_row
from bot.priority import in_turns
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
        async for todo in in_turns(await build_todos(session, settings, window), 50):
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
    async for team, chart in in_turns(zip(teams, charts), 20):
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
    async with ctx.runtime.background_reads() as reader:
        outs = await build_outgoing(reader, ctx.settings, kind, day)
    now = ctx.clock.now()
    claims = await _driver_claims(ctx.runtime.engine, outs, now) if outs else None
    flags = await (_claim_on_driver(ctx.runtime.engine, *claims) if claims is not None else _claim_in_session(ctx, outs, now))
    sent = sum(1 for claimed, out in zip(flags, outs) if claimed and out.bodies)
    log.info("digest %s %s: %d sent, %d already sent or empty", kind, day, sent, len(outs) - sent)
    return sent, len(outs) - sent


async def _claim_in_session(ctx: Context, outs: list[Outgoing], now: dt.datetime) -> list[bool]:
    """Each claim's outcome, made in the job's unit of work, which commits the last chunk."""
    flags: list[bool] = []
    clock = time.perf_counter
    began, claimed, commit_s = clock(), 0, 0.0
    for n, out in enumerate(outs, 1):
        flags.append(await claim_and_queue(ctx.session, out, now=now))
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
    return flags


_OUTBOX_INSERT = insert(OutboxItem.__table__)


class DriverClaim:
    """One recipient's claim as SQLite's driver takes it: the `digests` row and its outbox rows."""

    __slots__ = ("out", "digest", "outbox")

    def __init__(self, out: Outgoing, digest: list[Any], outbox: list[list[Any]]) -> None:
        self.out, self.digest, self.outbox = out, digest, outbox


async def _driver_claims(engine: Any, outs: list[Outgoing], now: dt.datetime) -> tuple[list[DriverClaim], str, str] | None:
    """SQLite: every claim converted for the driver, with the two statements' SQL; else None."""
    if write_gate(engine) is None:
        return None
    first = digest_row(outs[0], now)
    claim = prepared_statement(claim_statement("sqlite"), tuple(first), engine.dialect, repeated=True)
    queue = prepared_statement(_OUTBOX_INSERT, tuple(outbox_row("", {}, key="", now=now)), engine.dialect, repeated=True)
    if claim is None or queue is None:
        return None
    claims = [
        DriverClaim(out, claim.row(digest_row(out, now)), [queue.row(outbox_row(path, payload, key=key, now=now))
                                                          for path, payload, key in messages(out)])
        async for out in in_turns(outs, 100)
    ]
    return claims, claim.sql, queue.sql


async def _claim_on_driver(engine: Any, claims: list[DriverClaim], claim_sql: str, queue_sql: str) -> list[bool]:
    """Each claim's outcome (whether this run claimed it), written a transaction of one call at a time."""
    flags: list[bool] = []
    commit_s = 0.0
    while len(flags) < len(claims):
        await yield_to_writer(engine)  # between chunks: any write transaction in progress first
        done, _held, commit_s = await write_in_one_call(
            engine, _claim_chunk, claims[len(flags):len(flags) + CLAIM_CHUNK], claim_sql, queue_sql, CLAIM_BUDGET_S,
            commit_s, time.perf_counter, sql=claim_sql, clock=time.perf_counter,
        )
        flags += done
    return flags


def _claim_chunk(conn: Any, claims: list[DriverClaim], claim_sql: str, queue_sql: str, budget_s: float,
                 commit_s: float, clock: Any) -> list[bool]:
    """Inside one transaction, on SQLite's thread: claims until one more and a COMMIT as long as the
    last (`commit_s`) would pass `budget_s`. Returns each claim's outcome."""
    began = clock()
    done: list[bool] = []
    for claim in claims:
        done.append(_claim_one(conn, claim, claim_sql, queue_sql))
        elapsed = clock() - began
        if elapsed + elapsed / len(done) + commit_s > budget_s:
            break
    return done


def _claim_one(conn: Any, claim: DriverClaim, claim_sql: str, queue_sql: str) -> bool:
    """claim_and_queue, on the driver: the `digests` row, and if it went in, the messages."""
    if not conn.execute(claim_sql, claim.digest).fetchall():
        return False
    if claim.outbox:
        conn.executemany(queue_sql, claim.outbox)
    return True


async def digest_reps(ctx: Context) -> None:
    """Each rep's to-do list for today."""
    await send_digests(ctx, "reps", today(ctx.settings, ctx.clock.now()))


async def digest_managers(ctx: Context) -> None:
    """Each manager's digest of yesterday."""
    await send_digests(ctx, "managers", today(ctx.settings, ctx.clock.now()))
