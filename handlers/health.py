"""Operational endpoints: /healthz for load balancers, /metrics for Prometheus."""

from __future__ import annotations

import os

from aiohttp import web

from bot import __version__
from bot.app import RUNTIME
from bot.db import unavailable_reason
from bot.inbox import inbox_counts
from bot.outbox import outbox_counts
from bot.profiles import due_count
from bot.tracker import backlog

routes = web.RouteTableDef()


@routes.get("/healthz")
async def handle_healthz(request: web.Request) -> web.Response:
    """200 {"status": "ok", ...} when the database answers; 503 {"status": "unavailable"} otherwise."""
    rt = request.app[RUNTIME]
    if not await rt.db_ok():
        return web.json_response({"status": "unavailable", "database": "unreachable"}, status=503)
    async with rt.read_sessions() as session:
        counts = await inbox_counts(session)
        tracker = await backlog(session, rt.clock.now())
        outbox = await outbox_counts(session)
        profiles_due = await due_count(session)
    return web.json_response(
        {
            "status": "ok",
            "database": rt.engine.dialect.name,
            "version": __version__,
            "inbox": counts,
            "outbox": outbox,
            "tracker": tracker,
            "profiles_due": profiles_due,  # customers waiting for their WeCom profile (bot/profiles.py), up to 10,000
            "wecom_configured": rt.settings.wecom.configured,
            "pid": os.getpid(),  # which process answered (`serve --workers N` runs several on one port)
        }
    )


@routes.get("/metrics")
async def handle_metrics(request: web.Request) -> web.Response:
    """Prometheus text format; queue depths are read from the database at scrape time (while it cannot
    serve, they keep their last values and the process's own counters are served as ever)."""
    rt = request.app[RUNTIME]
    try:
        if await rt.db_ok():
            async with rt.read_sessions() as session:
                for status, count in (await inbox_counts(session)).items():
                    rt.metrics.inbox_depth.labels(status=status).set(count)
                tracker = await backlog(session, rt.clock.now())
                rt.metrics.tracker_backlog.set(tracker["unprocessed"])
                rt.metrics.tracker_lag.set(tracker["lag_s"])
                for status, count in (await outbox_counts(session)).items():
                    rt.metrics.outbox_depth.labels(status=status).set(count)
                rt.metrics.profiles_due.set(await due_count(session))
    except Exception as exc:
        if unavailable_reason(exc) is None:
            raise
        # The database went away after db_ok(): the process's own counters are what an outage needs most.
    if rt.checkpointer is not None:
        rt.metrics.wal_frames.set(rt.checkpointer.wal_frames)
        rt.metrics.wal_checkpoint_longest.set(rt.checkpointer.longest_s)
    return web.Response(body=rt.metrics.render(), content_type="text/plain", charset="utf-8")
