"""Scheduled jobs on APScheduler, run exactly once per run key across processes.

A job is a plain importable async function `job(ctx)`; the scheduler wraps it so that the run is first
claimed in `job_runs` (a unique run key such as "digest:managers:2026-11-23"): with several `serve`
processes on one PostgreSQL, the first claim wins and the others skip. Digests add a second guard: one
`digests` row per (kind, recipient, day), so even a run by hand (`digest managers`) sends nothing twice.

Run keys: daily jobs use the local day (`daily_key`, "digest-managers:2026-11-23"), `sop-tick` the local
minute (`minute_key`), the interval jobs `send-due-alerts` and `escalate-overdue` one slot of their
interval (`every_key`). Triggers are wall-clock CronTriggers in `[scheduler] timezone`, so a job at
08:30 fires at 08:30 local on both sides of a DST change (a different UTC instant), once per local day.

Misfire policy:
- While running, a fire delayed by a busy loop is still run up to one hour late, and a backlog runs
  only once (`coalesce=True`, `misfire_grace_time` one hour).
- The job store is in memory, so fire times missed while no process was up are not known to
  APScheduler. `catch_up` runs at start instead. It runs each daily job whose fire time today has
  passed, by less than CATCH_UP_S (6 h), and whose run key nobody claimed. So a digest missed at
  08:30 goes out when the server comes back at 10:00, but not in the evening. Yesterday's missed runs
  are not repeated: decay and dormancy bring themselves up to date on their next run.
- `sop-tick` needs no catch-up: it works through everything due, however late.
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
    from bot.config import Settings
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


def minute_key(job_id: str, rt: "Runtime") -> str:
    """A run key per local minute, for jobs that fire every minute (sop-tick)."""
    tz = ZoneInfo(rt.settings.scheduler.timezone)
    return f"{job_id}:{rt.clock.now().astimezone(tz):%Y-%m-%dT%H:%M}"


def daily_at(hhmm: str, tz: str) -> CronTrigger:
    """A trigger at local wall-clock time "HH:MM" every day."""
    hour, minute = hhmm.split(":")
    return CronTrigger(hour=int(hour), minute=int(minute), timezone=tz)


CATCH_UP_S = 6 * 3600


async def catch_up(rt: "Runtime", jobs: list[tuple[str, Job, CronTrigger, Callable[[str, "Runtime"], str]]], *,
                   grace_s: float = CATCH_UP_S) -> list[str]:
    """At start: run each daily job whose fire time today passed less than `grace_s` ago and whose
    run key is unclaimed (the process was down when it should have fired). Returns the jobs run."""
    tz = ZoneInfo(rt.settings.scheduler.timezone)
    now = rt.clock.now()
    midnight = dt.datetime.combine(now.astimezone(tz).date(), dt.time(0), tzinfo=tz)
    ran: list[str] = []
    for job_id, job, trigger, key in jobs:
        if key is not daily_key:
            continue
        fire = trigger.get_next_fire_time(None, midnight)
        if fire is None or fire > now or (now - fire).total_seconds() > grace_s:
            continue
        if await run_job(rt, job_id, job, key(job_id, rt)):
            log.info("caught up %s (missed at %s)", job_id, fire.isoformat())
            ran.append(job_id)
    return ran


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
    removed = await purge_done(ctx.runtime, cutoff)
    log.info("purged %d processed inbox rows", removed)


async def purge_outbox(ctx: Context) -> None:
    """Housekeeping: drop outbox rows sent (or skipped) and last attempted more than [inbox].outbox_keep_days ago."""
    from bot.outbox import purge_finished

    cutoff = ctx.clock.now() - dt.timedelta(days=ctx.settings.inbox.outbox_keep_days)
    removed = await purge_finished(ctx.runtime, cutoff)
    log.info("purged %d sent outbox rows", removed)


async def purge_job_runs(ctx: Context) -> None:
    """Housekeeping: drop run claims older than a week (sop-tick alone claims 1,440 a day)."""
    from sqlalchemy import delete

    cutoff = ctx.clock.now() - dt.timedelta(days=7)
    result = await ctx.session.execute(delete(JobRun).where(JobRun.claimed_at < cutoff))
    log.info("purged %d old job runs", result.rowcount or 0)


def every_key(seconds: int) -> Callable[[str, "Runtime"], str]:
    """Run keys of an interval job: one run per `seconds`-long slot, across processes."""

    def key(job_id: str, rt: "Runtime") -> str:
        return f"{job_id}:{int(rt.clock.now().timestamp() // seconds)}"

    return key


def default_jobs(tz: str, settings: "Settings | None" = None) -> list:
    from apscheduler.triggers.interval import IntervalTrigger

    from bot.alert_jobs import escalate_overdue, send_due_alerts
    from bot.config import Settings
    from bot.contact_sync import sync_customers
    from bot.digest.jobs import digest_managers, digest_reps
    from bot.scoring.jobs import decay_scores, mark_dormant_customers
    from bot.sop.jobs import sop_quiet_check, sop_tick

    s = settings or Settings()

    return [
        ("decay-scores", decay_scores, CronTrigger(hour=2, minute=0, timezone=tz), daily_key),
        ("mark-dormant", mark_dormant_customers, CronTrigger(hour=2, minute=30, timezone=tz), daily_key),
        ("purge-inbox", purge_inbox, CronTrigger(hour=3, minute=30, timezone=tz), daily_key),
        ("purge-outbox", purge_outbox, CronTrigger(hour=3, minute=40, timezone=tz), daily_key),
        ("purge-job-runs", purge_job_runs, CronTrigger(hour=3, minute=45, timezone=tz), daily_key),
        ("sync-customers", sync_customers, CronTrigger(day_of_week="sun", hour=4, minute=0, timezone=tz), daily_key),
        ("sop-tick", sop_tick, CronTrigger(minute="*", timezone=tz), minute_key),
        ("sop-quiet-check", sop_quiet_check, daily_at(s.sop.quiet_check_at, tz), daily_key),
        ("digest-reps", digest_reps, daily_at(s.digest.reps_at, tz), daily_key),
        ("digest-managers", digest_managers, daily_at(s.digest.managers_at, tz), daily_key),
        ("send-due-alerts", send_due_alerts, IntervalTrigger(seconds=30, timezone=tz), every_key(30)),
        ("escalate-overdue", escalate_overdue, IntervalTrigger(minutes=5, timezone=tz), every_key(300)),
    ]
