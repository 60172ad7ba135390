"""The edge: the requests a person or WeCom is waiting on (link opens, tracking beacons, downloads,
gate forms, callbacks), counted while in progress, so that the background workers sharing the core
can give way to them.

The tracker (bot/tracker.py) and the inbox worker (bot/inbox.py) run on this process's event loop,
on the edge's core. After each transaction that leaves work waiting, they wait until no edge request
is in progress, but at most GIVE_WAY_FACTOR times as long as the transaction took (`EdgeLoad.give_way`).
Below saturation the edge empties within milliseconds and the worker goes on almost at once; while
requests keep arriving faster than the core answers them, the worker takes 1 / (1 + GIVE_WAY_FACTOR)
of the core and the rest answers them. Every event and callback is stored before its answer: what a
worker has not reached waits in its table, and it catches up as the burst eases.

Always, not only when a worker falls behind: a worker that keeps pace with the edge by taking its
core (the inbox worker's callbacks are cheap; the tracker on PostgreSQL, with long batches) makes the
edge answer only as fast as the worker works. Measured at a moderate load (500 opens a second, half of
what the pipeline sustains), the events' latency was the same as without giving way.

A request is counted once its body has arrived (bodies up to BODY_FIRST_MAX bytes of a declared
length: gate forms, beacons, callbacks): a slow client, or one that never finishes its body, costs
the core nothing meanwhile and must not slow the workers to a fifth of their pace. Larger or chunked
bodies are counted from the start (waiting for them would let the connection's flow control stop
the body midway).
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Awaitable, Callable

from aiohttp import web

# A worker's share of a saturated core is 1 / (1 + GIVE_WAY_FACTOR); one wait lasts at most
# GIVE_WAY_MAX_S, however long the transaction before it took (a lock wait, say: the inbox's claimed
# rows' lease runs meanwhile).
GIVE_WAY_FACTOR = 4.0
GIVE_WAY_MAX_S = 1.0
# Bodies of a declared length up to this are waited for before a request counts (below aiohttp's
# read buffer, 2 × 64 KiB, at which it stops reading from the connection until the handler reads).
BODY_FIRST_MAX = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class EdgeLoad:
    def __init__(self) -> None:
        self.busy = 0  # edge requests in progress
        self._idle = asyncio.Event()
        self._idle.set()

    def entered(self) -> None:
        self.busy += 1
        self._idle.clear()

    def left(self) -> None:
        self.busy -= 1
        if self.busy <= 0:
            self.busy = 0
            self._idle.set()

    async def give_way(self, worked: float, *, factor: float = GIVE_WAY_FACTOR, cap: float = GIVE_WAY_MAX_S,
                       stop: asyncio.Event | None = None) -> float:
        """After background work that took `worked` seconds: wait until no edge request is in
        progress, at most `factor` × `worked` (and at most `cap`) seconds, or until `stop` is set.
        Returns how long it waited."""
        if self.busy == 0 or (stop is not None and stop.is_set()):
            return 0.0
        began = time.perf_counter()
        waits = [asyncio.ensure_future(self._idle.wait())]
        if stop is not None:
            waits.append(asyncio.ensure_future(stop.wait()))
        try:
            await asyncio.wait(waits, timeout=min(worked * factor, cap), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        return time.perf_counter() - began


def edge(handler: Handler) -> Handler:
    """Marks an aiohttp handler as edge: while it runs, background workers give way (EdgeLoad)."""
    from bot.app import RUNTIME  # here: bot.app imports the runtime, which imports this module

    @functools.wraps(handler)
    async def counted(request: web.Request) -> web.StreamResponse:
        load = request.app[RUNTIME].edge
        length = request.content_length
        if length and length <= BODY_FIRST_MAX:
            await request.content.wait_eof()  # buffered, not read: the handler reads it as before
        load.entered()
        try:
            return await handler(request)
        finally:
            load.left()

    return counted
