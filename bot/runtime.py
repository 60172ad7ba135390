"""The runtime: every shared resource of one Beacon process, built from settings, started and stopped once.

The app factory ties it to aiohttp's `cleanup_ctx`; the CLI uses it directly for jobs and commands.
Nothing is created at import time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiohttp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.batch import BatchWriter
from bot.clock import Clock, SystemClock
from bot.config import Settings
from bot.db import (WalCheckpointer, create_background_engine, create_engine, liveness, read_session_factory,
                    session_factory)
from bot.edge import EdgeLoad
from bot.inbox import InboxStore, InboxWorker
from bot.lifecycle import shown_score
from bot.limits import TokenBuckets
from bot.metrics import Metrics
from bot.notify import CommitWatch, CrossWake
from bot.outbox import OutboxWorker
from bot.pages import Pages, RenderedVersions
from bot.report_cache import ReportCache
from bot.shares import ShareResolver
from bot.sidebar import FollowCache
from bot.signing import Signer
from bot.scoring.hook import scoring_hook
from bot.scoring.service import ScoringService
from bot.tags import TagMirror
from bot.tracker import BATCH_BUDGET, Tracker
from bot.tracking import EventLog, RecentOpens
from bot.router import Dispatcher, Router
from bot.wecom.client import WeComClient
from bot.wecom.inbound import CallbackCrypto

log = logging.getLogger("beacon.runtime")
STOP_STEP_S = 5.0  # longest a shutdown waits for the database to hand back leases or close connections
SLOW_STOP_S = 2.0  # a stop slower than this is logged as a warning, with where the time went


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    read_sessions: async_sessionmaker[AsyncSession]
    # Reads that can wait (nightly jobs, digests): on SQLite, connections at background CPU priority.
    background_reads: async_sessionmaker[AsyncSession]
    metrics: Metrics
    dispatcher: Dispatcher
    http: aiohttp.ClientSession | None = None
    wecom: WeComClient = None  # type: ignore[assignment]  # set in start()
    crypto: CallbackCrypto | None = None
    writer: BatchWriter = None  # type: ignore[assignment]
    inbox_store: InboxStore = None  # type: ignore[assignment]
    inbox: InboxWorker = None  # type: ignore[assignment]
    outbox: OutboxWorker = None  # type: ignore[assignment]
    profiles: Any = None  # bot.profiles.ProfileWorker: customers' WeCom profiles
    events: EventLog = None  # type: ignore[assignment]
    tracker: Tracker = None  # type: ignore[assignment]
    links: ShareResolver = None  # type: ignore[assignment]
    signer: Signer = None  # type: ignore[assignment]
    pages: Pages = None  # type: ignore[assignment]
    rendered: RenderedVersions = None  # type: ignore[assignment]
    recent_opens: RecentOpens = None  # type: ignore[assignment]
    reports: ReportCache = None  # type: ignore[assignment]
    beacon_limiter: TokenBuckets = None  # type: ignore[assignment]  # per (link, browser)
    ip_limiter: TokenBuckets | None = None  # public pages per client address; None: [security] off
    login_limiter: TokenBuckets = None  # type: ignore[assignment]  # admin-token logins per address
    follows: FollowCache = None  # type: ignore[assignment]  # the sidebar's follow checks
    checkpointer: WalCheckpointer | None = None
    cross_wake: CrossWake | None = None  # PostgreSQL: wakes other processes' workers (bot/notify.py)
    commit_watch: CommitWatch | None = None  # SQLite, `serve --workers N`: other workers' commits wake ours
    background_engine: AsyncEngine | None = None  # background_reads' own (SQLite files only)
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}")
    edge: EdgeLoad = field(default_factory=EdgeLoad)  # edge requests in progress (bot.edge)
    services: dict[str, Any] = field(default_factory=dict)
    held_leases: dict[str, Any] = field(default_factory=dict)
    lease_retry_at: dict[str, Any] = field(default_factory=dict)  # leases another process holds
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _stoppers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings, *, routers: list[Router], clock: Clock | None = None) -> "Runtime":
        engine = create_engine(settings.database)
        background = create_background_engine(engine, settings.database)
        rt = cls(
            settings=settings,
            clock=clock or SystemClock(),
            engine=engine,
            sessions=session_factory(engine),
            read_sessions=read_session_factory(engine),
            background_reads=read_session_factory(background or engine),
            background_engine=background,
            metrics=Metrics(),
            dispatcher=Dispatcher(routers),
        )
        alive = liveness(engine)
        if alive is not None:
            alive.counter = rt.metrics.db_checks
        w = settings.wecom
        if w.configured:
            rt.crypto = CallbackCrypto(w.token, w.encoding_aes_key, w.corp_id, replay_window_s=w.replay_window_s)
        rt.checkpointer = WalCheckpointer.for_engine(engine, settings.database.checkpoint_interval_s)
        rt.writer = BatchWriter(engine, name="inbox")
        rt.inbox_store = InboxStore(rt.writer)
        rt.inbox = InboxWorker(rt)
        rt.outbox = OutboxWorker(rt, lease_s=settings.inbox.outbox_lease_s)
        from bot.profiles import ProfileWorker

        rt.profiles = ProfileWorker(rt)
        rt.events = EventLog(engine)
        batch, budget_s = BATCH_BUDGET.get(engine.dialect.name, BATCH_BUDGET["sqlite"])
        rt.tracker = Tracker(rt, batch=batch, max_batch_s=budget_s)
        rt.services["scoring"] = ScoringService(settings.scoring)
        rt.services["tags"] = TagMirror(rt)
        rt.tracker.hooks.append(scoring_hook(rt))
        from bot.alerts import AlertService

        rt.services["alerts"] = AlertService(rt)
        from bot.lifecycle import OwnerLoads

        rt.services["owner_loads"] = OwnerLoads()  # hand-offs' least loaded rep (bot.lifecycle.pick_owner)
        rt.tracker.hooks.append(rt.services["alerts"].tracker_hook())  # after scoring: alerts read the new ledger rows
        from bot.sop.triggers import sop_hook, sop_service

        sop_service(rt)
        rt.tracker.hooks.append(sop_hook(rt))  # after scoring: stops see the stage the event led to
        rt.links = ShareResolver(rt.read_sessions, ttl_s=settings.links.share_cache_s)
        rt.signer = Signer(settings.server.secret_key)
        rt.pages = Pages()
        rt.pages.env.filters["points"] = shown_score  # a score as reps read it: {{ c.score | points }}
        rt.rendered = RenderedVersions(rt.read_sessions)
        rt.recent_opens = RecentOpens(settings.links.reload_window_s)
        rt.reports = ReportCache(settings.pages.report_cache_s, stale_s=settings.pages.report_stale_s)
        rt.beacon_limiter = TokenBuckets(settings.links.beacons_per_minute, size=100_000)
        if settings.security.public_per_ip_per_minute:
            rt.ip_limiter = TokenBuckets(settings.security.public_per_ip_per_minute)
        rt.login_limiter = TokenBuckets(settings.pages.login_attempts_per_minute)
        rt.follows = FollowCache()
        return rt

    async def start(self, *, background: bool = True) -> None:
        """Open the outbound HTTP session and (unless told not to) start the background workers."""
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.wecom.timeout_s))
        if background and self.checkpointer is not None:
            self.checkpointer.take_over()  # before this process connects: its writers keep the backstop only
        w = self.settings.wecom
        self.wecom = WeComClient(
            self.http,
            api_base=w.api_base,
            corp_id=w.corp_id,
            secret=w.secret,
            timeout=w.timeout_s,
            on_call=self.metrics.on_wecom_call,
        )
        try:
            await self.sync_team()
        except Exception:  # the database may come back; /healthz reports it meanwhile
            log.exception("could not sync team members to the database")
        if background:
            if self.checkpointer is not None:
                self.spawn(self.checkpointer.run(), "wal-checkpointer")
            for n in range(self.settings.inbox.workers):
                self.spawn(self.inbox.run(), f"inbox-worker-{n}")
            self.spawn(self.outbox.run(), "outbox-worker")
            self.spawn(self.profiles.run(), "profile-worker")
            if self.tracker.runs_here():
                self.spawn(self.tracker.run(), "tracker")
            else:
                log.info("tracker off in this process ([tracker] enabled = false): another process attributes and scores its events")
            if self.engine.dialect.name == "postgresql" and self.settings.database.notify:
                wakes = {w.channel: w.wake_here for w in (self.tracker, self.inbox) if w.channel and w.runs_here()}
                self.cross_wake = CrossWake(self.engine, wakes, self.metrics)
                self.spawn(self.cross_wake.run(), "cross-wake")

    def watch_siblings(self) -> None:
        """This process is one of `serve --workers N`. On SQLite, where no NOTIFY wakes it, its tracker
        watches the file for the other workers' commits (bot/notify.py CommitWatch); on PostgreSQL,
        NOTIFY does. Not the inbox workers: each worker processes the callbacks it stores, and a claim
        is a write transaction, which every commit of every worker would otherwise start."""
        database = self.engine.url.database
        if self.engine.dialect.name != "sqlite" or not database or database == ":memory:" or not self.tracker.runs_here():
            return
        self.commit_watch = CommitWatch(database, [self.tracker.wake_here])
        self.spawn(self.commit_watch.run(), "commit-watch")

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        """A background task kept in a set (so it is not garbage collected) and cancelled on stop."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def on_stop(self, stopper: Callable[[], Awaitable[None]]) -> None:
        self._stoppers.append(stopper)

    async def stop(self) -> None:
        """Finish what was acknowledged: flush the writer, let the workers finish the row or batch in
        hand (claimed rows not started are handed back), cancel only a worker still busy after the grace
        period (its row is rolled back and picked up again), hand back leases, close connections.
        Every step that talks to the database is bounded, so a stop always ends."""
        clock = time.perf_counter
        began = clock()
        for stopper in reversed(self._stoppers):
            await stopper()
        await self.writer.close()
        await self.events.close()
        flushed = clock()
        for worker in (self.inbox, self.outbox, self.profiles, self.tracker, self.checkpointer):
            if worker is not None:
                worker.request_stop()
        if self.cross_wake is not None:
            await self.cross_wake.close()
        if self.commit_watch is not None:
            self.commit_watch.close()
        if self.reports is not None:
            await self.reports.close()  # reports being counted in the background: dropped, not kept
        tasks = list(self._tasks)
        if tasks:
            _, busy = await asyncio.wait(tasks, timeout=self.settings.server.stop_grace_s)
            for task in busy:
                log.warning("stop: %s still busy after %.1f s; cancelling it", task.get_name(),
                            self.settings.server.stop_grace_s)
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        workers_done = clock()
        try:
            from bot.leases import release_leases

            await asyncio.wait_for(release_leases(self), STOP_STEP_S)
        except Exception:  # the database may be gone or stuck; leases then expire by themselves
            log.warning("could not release leases on stop", exc_info=True)
        if self.http is not None:
            await self.http.close()
        try:
            await asyncio.wait_for(self.dispose_engines(), STOP_STEP_S)
        except TimeoutError:
            log.warning("stop: closing database connections took over %.0f s; leaving them to the OS", STOP_STEP_S)
        took = clock() - began
        log.log(logging.WARNING if took > SLOW_STOP_S else logging.INFO,
                "stopped in %.2f s (writes flushed %.2f s, workers finished %.2f s, leases and connections %.2f s)",
                took, flushed - began, workers_done - flushed, clock() - workers_done)

    async def dispose_engines(self) -> None:
        if self.background_engine is not None:
            await self.background_engine.dispose()
        await self.engine.dispose()

    async def db_ok(self) -> bool:
        try:
            async with self.read_sessions() as session:  # a read: not behind a long write (SQLite)
                await asyncio.wait_for(session.execute(text("SELECT 1")), 2.0)
            return True
        except Exception:  # any failure to answer means "not ok"; the caller reports it
            return False

    async def sync_team(self) -> None:
        """Upsert the configured team members as reps (config is the source of truth for them)."""
        from bot.team import upsert_members

        if not self.settings.team.members:
            return
        async with self.sessions() as session, session.begin():
            await upsert_members(session, self.settings.team.members)
