"""`python -m bot serve`: the HTTP server plus the scheduler, with graceful shutdown on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from bot.app import RUNTIME, create_app
from bot.config import Settings
from bot.scheduler import build_scheduler, catch_up, default_jobs

log = logging.getLogger("beacon.serve")


async def serve_forever(settings: Settings, *, host: str, port: int, ready: asyncio.Event | None = None) -> None:
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    rt = app[RUNTIME]
    scheduler = None
    from bot.sop.command import load_folder

    await load_folder(rt)
    if settings.scheduler.enabled:
        jobs = default_jobs(settings.scheduler.timezone, settings)
        scheduler = build_scheduler(rt, jobs)
        scheduler.start()
        rt.spawn(catch_up(rt, jobs), "scheduler-catch-up")
    log.info("serving on http://%s:%s (public %s)", host, port, settings.server.public_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("shutting down: finishing stored work")
        watchdog = asyncio.ensure_future(_report_slow_stop(after_s=8.0))
        try:
            if scheduler is not None:
                scheduler.shutdown(wait=False)
            await runner.cleanup()
        finally:
            watchdog.cancel()


async def _report_slow_stop(*, after_s: float) -> None:
    """If shutdown takes longer than it should, log where every task is waiting (once)."""
    await asyncio.sleep(after_s)
    me = asyncio.current_task()
    lines = [f"shutdown still running after {after_s:.0f} s; tasks:"]
    for task in asyncio.all_tasks():
        if task is me:
            continue
        lines.append(f"  {task.get_name()}: {_awaiting(task.get_coro())}")
    log.warning("\n".join(lines))


def _awaiting(coro: object) -> str:
    """The chain of awaits a suspended coroutine sits in, outermost first."""
    steps = []
    while coro is not None and len(steps) < 40:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            steps.append(type(coro).__name__)
            break
        steps.append(f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return " -> ".join(steps) or "(finished)"
