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
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        await runner.cleanup()
