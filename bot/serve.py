"""`python -m bot serve`: the HTTP server plus the scheduler, with graceful shutdown on SIGINT/SIGTERM.

`serve --workers N` runs N such processes on one port (SO_REUSEPORT: the kernel spreads connections
over them) under a small supervisor, so one machine's cores serve together without a proxy in front.
Only worker 0 runs the scheduler. A worker that dies is started again (after 1 s, doubling up to 30 s
while it keeps dying young); SIGTERM or SIGINT to the supervisor stops every worker gracefully.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import TYPE_CHECKING, Callable

from aiohttp import web

from bot.app import RUNTIME, create_app
from bot.clock import sleep_unless
from bot.config import Settings
from bot.scheduler import build_scheduler, catch_up, default_jobs

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from bot.runtime import Runtime

log = logging.getLogger("beacon.serve")


async def serve_forever(settings: Settings, *, host: str, port: int, ready: asyncio.Event | None = None,
                        sibling: bool = False) -> None:
    """Serve until SIGTERM or SIGINT. `sibling`: this process is one of `serve --workers N`, sharing the
    port with the others (SO_REUSEPORT), which store work for this one's workers (Runtime.watch_siblings)."""
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=True if sibling else None)
    await site.start()
    rt = app[RUNTIME]
    if sibling:
        rt.watch_siblings()
    from bot.sop.command import load_folder

    await load_folder(rt)
    frozen = freeze_startup_heap()
    scheduler = start_scheduler(rt)
    log.info("serving on http://%s:%s (public %s; %d startup objects frozen out of the garbage collector)",
             host, port, settings.server.public_url, frozen)
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


def start_scheduler(rt: "Runtime") -> "AsyncIOScheduler | None":
    """The scheduled jobs (bot/scheduler.py), started with a catch-up of missed daily runs, unless
    [scheduler] enabled = false. The caller shuts it down."""
    if not rt.settings.scheduler.enabled:
        return None
    jobs = default_jobs(rt.settings.scheduler.timezone, rt.settings)
    scheduler = build_scheduler(rt, jobs)
    scheduler.start()
    rt.spawn(catch_up(rt, jobs), "scheduler-catch-up")
    return scheduler


def freeze_startup_heap() -> int:
    """Take what startup built (modules, mappers, compiled templates, settings) out of the garbage
    collector's sight: it lives as long as the process, yet every full collection walked it all, about
    100 ms here, during which no request was answered and a write transaction in progress held SQLite's
    lock (issue 9). Objects made later are collected as before. Returns how many were frozen."""
    from sqlalchemy.orm import configure_mappers

    # The ORM's mappers first: SQLAlchemy configures them when the first ORM object is made or
    # queried, which cost that request or job (a fresh process's first nightly job) about 20 ms.
    configure_mappers()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


YOUNG_S = 5.0  # a worker that dies sooner than this after its start is "dying young"
RESTART_FIRST_S = 1.0  # wait before starting a dead worker again; doubles while it keeps dying young
RESTART_MAX_S = 30.0
GIVE_UP_AFTER = 5  # workers dying young this many times in a row: something is wrong (port taken, bad config)


async def supervise(worker_argv: Callable[[int], list[str]], workers: int, *, stop_timeout_s: float) -> int:
    """Run `workers` worker processes, restart those that die, stop them all on SIGTERM/SIGINT.
    Returns 0 when every worker stopped cleanly, 1 otherwise (or when workers keep dying at start)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    procs: dict[int, asyncio.subprocess.Process] = {}
    started: dict[int, float] = {}
    delay: dict[int, float] = {}
    young_deaths = 0
    failed = False

    async def start(index: int) -> None:
        procs[index] = await asyncio.create_subprocess_exec(*worker_argv(index))
        started[index] = loop.time()
        log.info("worker %d started (pid %d)", index, procs[index].pid)

    for index in range(workers):
        await start(index)
    log.info("supervising %d workers", workers)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            exits = {asyncio.ensure_future(p.wait()): i for i, p in procs.items()}
            done, _ = await asyncio.wait([stopping, *exits], return_when=asyncio.FIRST_COMPLETED)
            for waiter in exits:
                if waiter not in done:
                    waiter.cancel()
            if stop.is_set():
                break
            for waiter in done:
                index = exits[waiter]
                code = waiter.result()
                lived = loop.time() - started[index]
                young = lived < YOUNG_S
                young_deaths = young_deaths + 1 if young else 0
                delay[index] = min(RESTART_MAX_S, delay.get(index, RESTART_FIRST_S / 2) * 2) if young else RESTART_FIRST_S
                log.warning("worker %d (pid %d) exited with %s after %.1f s; starting it again in %.0f s",
                            index, procs[index].pid, code, lived, delay[index])
            if young_deaths >= GIVE_UP_AFTER:
                log.error("workers keep exiting at start (%d times in a row); stopping", young_deaths)
                failed = True
                break
            for waiter in done:
                index = exits[waiter]
                if await sleep_unless(stop, delay[index]):
                    break
                await start(index)
    finally:
        stopping.cancel()
        failed = await _stop_all(procs, stop_timeout_s) or failed
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 1 if failed else 0


async def _stop_all(procs: dict[int, asyncio.subprocess.Process], timeout_s: float) -> bool:
    """SIGTERM to every running worker, SIGKILL to those still running after `timeout_s`. True if any
    worker had to be killed or stopped with an error."""
    running = [p for p in procs.values() if p.returncode is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    waits = [asyncio.ensure_future(p.wait()) for p in running]
    _, late = await asyncio.wait(waits, timeout=timeout_s) if waits else (set(), set())
    bad = bool(late)
    for proc in running:
        if proc.returncode is None:
            log.error("worker pid %d did not stop within %.0f s; killing it", proc.pid, timeout_s)
            proc.kill()
            await proc.wait()
        elif proc.returncode != 0:
            bad = True
    log.info("all workers stopped")
    return bad


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
