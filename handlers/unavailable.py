"""A database that cannot be reached answers 503 with Retry-After, not 500 with a traceback.

While PostgreSQL restarts or fails over, while another process holds SQLite's write lock past the busy
timeout, or while the pool has no connection to give, a request that needs the database fails through
no fault of its own and would succeed a moment later. Such failures (`transient_reason`) get 503 and
`Retry-After`: the friendly error page for a browser's pages and tracked links, a JSON error under /api
and for the pages' own fetch calls (the sidebar's). The log
gets one warning line for them every LOG_EVERY_S (with how many there were), not a traceback per
request: an outage at a few hundred requests a second would otherwise bury everything else.

The edge's own paths keep their handling: a link open or callback that cannot be stored already answers
503 (WeCom delivers again; the reader reloads), and /healthz reports `unavailable`.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import time
from typing import Awaitable, Callable

from aiohttp import web
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from bot.pages import page_lang

log = logging.getLogger("beacon.unavailable")

RETRY_AFTER_S = 5
LOG_EVERY_S = 10.0
# SQLSTATE classes of a server that cannot serve right now: connection exceptions (08…), operator
# intervention (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now: a restart or a
# failover in progress) and too many connections (53300).
_TRANSIENT_SQLSTATES = ("08", "57P", "53300")
_SQLITE_BUSY = ("database is locked", "database is busy")


def transient_reason(exc: BaseException) -> str | None:
    """Why `exc` is a database that cannot serve right now (a short phrase for the log), or None when
    it is any other error, which stays a 500."""
    if isinstance(exc, PoolTimeout):
        return "no pooled connection free within [database] pool_timeout"
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return "the database connection was lost"
        orig = exc.orig
        if isinstance(orig, sqlite3.OperationalError) and str(orig).startswith(_SQLITE_BUSY):
            return f"SQLite: {orig}"
        state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if isinstance(state, str) and state.startswith(_TRANSIENT_SQLSTATES):
            return f"the database cannot serve (SQLSTATE {state})"
        return None
    # The driver's connect, which raises the socket's own errors: refused, timed out, a host name that
    # does not resolve, or asyncio's summary of every address tried. Not a reset or broken pipe: those
    # are as likely the client gone while its response was streaming.
    if isinstance(exc, (ConnectionRefusedError, TimeoutError, socket.gaierror)) or (
        type(exc) is OSError and str(exc).startswith("Multiple exceptions")
    ):
        return f"cannot connect ({type(exc).__name__}: {exc})"
    return None


class Throttle:
    """One warning line every LOG_EVERY_S for the requests answered 503 this way, per app."""

    def __init__(self) -> None:
        self.last = float("-inf")
        self.suppressed = 0

    def log(self, request: web.Request, reason: str) -> None:
        now = time.monotonic()
        if now - self.last < LOG_EVERY_S:
            self.suppressed += 1
            return
        more = f" (and {self.suppressed} more since the last such line)" if self.suppressed else ""
        log.warning("%s %s answered 503: %s%s", request.method, request.path, reason, more)
        self.last, self.suppressed = now, 0


THROTTLE = web.AppKey("unavailable_log", Throttle)


def answered_unavailable(request: web.Request, exc: BaseException) -> bool:
    """For a handler that answers 503 itself when it cannot store (a link open, a callback): logs the
    failure, as one throttled line when it is transient (True), else not at all (False: the caller logs
    it with its traceback)."""
    reason = transient_reason(exc)
    if reason is None:
        return False
    request.app[THROTTLE].log(request, reason)
    return True


@web.middleware
async def unavailable(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:
        if not answered_unavailable(request, exc):
            raise
        return _answer(request)


_MESSAGE = {
    "api": "temporarily unavailable (the database cannot be reached); retry shortly",
    "zh": "服务暂时不可用，请稍后重试。",
    "en": "Temporarily unavailable. Please try again in a moment.",
}


def _answer(request: web.Request) -> web.Response:
    """The admin API gets its JSON error; a browser navigating (it asks for text/html) the error page in
    its language; any other client (the sidebar's fetch calls, scripts) a JSON error in its language."""
    from bot.app import RUNTIME

    if request.path == "/api" or request.path.startswith("/api/"):
        response = web.json_response({"error": _MESSAGE["api"]}, status=503)
    elif "text/html" in request.headers.get("Accept", ""):
        response = request.app[RUNTIME].pages.error(503, page_lang(request))
    else:
        response = web.json_response({"error": _MESSAGE[page_lang(request)]}, status=503)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response
