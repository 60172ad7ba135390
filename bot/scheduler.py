"""Scheduled jobs on APScheduler, run exactly once per run key across processes.

A job is a plain importable async function `job(ctx)`; the scheduler wraps it so that the run is first
claimed in `job_runs` (a unique run key such as "digest:managers:2026-11-23"): with several `serve`
processes on one PostgreSQL, the first claim wins and the others skip. Misfires (the process was down
at fire time) are caught up once on start (`coalesce=True`, `misfire_grace_time` one hour).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Awaitable, Callable
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.exc import IntegrityError

from bot.context import Context
from bot.models import JobRun

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger("beacon.scheduler")

Job = Callable[[Context], Awaitable[None]]


async def claim_run(rt: "Runtime", job_id: str, run_key: str) -> bool:
    """True if this process won the run; False if another process (or an earlier run) has it."""
    try:
        async with rt.sessions() as session, session.begin():
            session.add(JobRun(run_key=run_key, job_id=job_id, claimed_by=rt.worker_id, claimed_at=rt.clock.now()))
    except IntegrityError:
        return False
    return True


async def run_job(rt: "Runtime", job_id: str, job: Job, run_key: str) -> bool:
    """Claim, run in one unit of work, record the outcome. Returns whether this process ran it."""
    if not await claim_run(rt, job_id, run_key):
        log.info("job %s run %s already claimed elsewhere", job_id, run_key)
        return False
    error: str | None = None
    async with rt.sessions() as session:
        ctx = Context(rt, session, origin=f"job:{run_key}")
        try:
            await job(ctx)
            await session.commit()
        except Exception as exc:
            await session.rollback()
            error = f"{type(exc).__name__}: {exc}"
            log.exception("job %s run %s failed", job_id, run_key)
    async with rt.sessions() as session, session.begin():
        row = await session.get(JobRun, run_key)
        if row is not None:
            row.finished_at = rt.clock.now()
            row.error = error
    rt.outbox.wake()
    return True


def daily_key(job_id: str, rt: "Runtime") -> str:
    tz = ZoneInfo(rt.settings.scheduler.timezone)
    return f"{job_id}:{rt.clock.now().astimezone(tz).date().isoformat()}"


def build_scheduler(rt: "Runtime", jobs: list[tuple[str, Job, CronTrigger, Callable[[str, "Runtime"], str]]]) -> AsyncIOScheduler:
    """An AsyncIOScheduler with one entry per job (stable ids, replace_existing)."""
    tz = ZoneInfo(rt.settings.scheduler.timezone)
    scheduler = AsyncIOScheduler(timezone=tz, job_defaults={"coalesce": True, "misfire_grace_time": 3600, "max_instances": 1})
    for job_id, job, trigger, key in jobs:
        async def fire(job_id: str = job_id, job: Job = job, key=key) -> None:
            await run_job(rt, job_id, job, key(job_id, rt))

        scheduler.add_job(fire, trigger, id=job_id, replace_existing=True, name=job_id)
    return scheduler


async def purge_inbox(ctx: Context) -> None:
    """Housekeeping: drop processed inbox rows older than [inbox].keep_days."""
    from bot.inbox import purge_done

    cutoff = ctx.clock.now() - dt.timedelta(days=ctx.settings.inbox.keep_days)
    removed = await purge_done(ctx.session, cutoff)
    log.info("purged %d processed inbox rows", removed)


def default_jobs(tz: str) -> list:
    from bot.scoring.jobs import decay_scores, mark_dormant_customers

    return [
        ("decay-scores", decay_scores, CronTrigger(hour=2, minute=0, timezone=tz), daily_key),
        ("mark-dormant", mark_dormant_customers, CronTrigger(hour=2, minute=30, timezone=tz), daily_key),
        ("purge-inbox", purge_inbox, CronTrigger(hour=3, minute=30, timezone=tz), daily_key),
    ]
