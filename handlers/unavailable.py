"""A database that cannot be reached answers 503 with Retry-After, not 500 with a traceback.

While PostgreSQL restarts or fails over, while another process holds SQLite's write lock past the busy
timeout, or while the pool has no connection to give, a request that needs the database fails through
no fault of its own and would succeed a moment later. Such failures (`bot.db.unavailable_reason`) get 503 and
`Retry-After`: the friendly error page for a browser's pages and tracked links, a JSON error under /api
and for the pages' own fetch calls (the sidebar's). The log
gets one warning line for them every LOG_EVERY_S (with how many there were), not a traceback per
request: an outage at a few hundred requests a second would otherwise bury everything else.

The edge's own paths keep their handling: a link open or callback that cannot be stored already answers
503 (WeCom delivers again; the reader reloads), and /healthz reports `unavailable`.
"""

from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable

from aiohttp import web

from bot.app import RUNTIME
from bot.db import unavailable_reason
from bot.pages import page_lang

log = logging.getLogger("beacon.unavailable")

RETRY_AFTER_S = 5
LOG_EVERY_S = 10.0


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
    reason = unavailable_reason(exc)
    if reason is None:
        return False
    request.app[RUNTIME].metrics.unavailable_answers.inc()
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
    if request.path == "/api" or request.path.startswith("/api/"):
        response = web.json_response({"error": _MESSAGE["api"]}, status=503)
    elif "text/html" in request.headers.get("Accept", ""):
        response = request.app[RUNTIME].pages.error(503, page_lang(request))
    else:
        response = web.json_response({"error": _MESSAGE[page_lang(request)]}, status=503)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response
