"""The WeCom callback edge: verify, decrypt, parse, store durably, acknowledge. Nothing else.

Processing happens behind the 200 in the inbox worker (WeCom redelivers after 5 s without an answer).
"""

from __future__ import annotations

import logging

from aiohttp import web

from bot.app import RUNTIME
from bot.edge import edge
from bot.wecom.inbound import CallbackForbidden, CallbackMalformed, parse_inbound
from handlers.unavailable import answered_unavailable

log = logging.getLogger("beacon.callback")
routes = web.RouteTableDef()


def _crypto_or_503(request: web.Request):
    crypto = request.app[RUNTIME].crypto
    if crypto is None:
        raise web.HTTPServiceUnavailable(text="WeCom callback is not configured ([wecom] token, encoding_aes_key, corp_id)")
    return crypto


def _refuse(request: web.Request, exc: Exception) -> web.Response:
    forbidden = isinstance(exc, CallbackForbidden)
    request.app[RUNTIME].metrics.callbacks_rejected.labels(reason="forbidden" if forbidden else "malformed").inc()
    log.warning("callback refused: %s", exc)
    status = 403 if forbidden else 400
    return web.Response(status=status, text="forbidden" if forbidden else f"bad request: {exc}")


@routes.get("/wecom/callback")
async def handle_verify_url(request: web.Request) -> web.Response:
    """WeCom's URL verification: answers the decrypted echostr as plain text (no quotes, no newline)."""
    crypto = _crypto_or_503(request)
    q = request.query
    try:
        plain = crypto.verify_url(
            q.get("msg_signature", ""),
            q.get("timestamp", ""),
            q.get("nonce", ""),
            q.get("echostr", ""),
            now=request.app[RUNTIME].clock.now().timestamp(),
        )
    except (CallbackForbidden, CallbackMalformed) as exc:
        return _refuse(request, exc)
    return web.Response(text=plain)


@routes.post("/wecom/callback")
@edge
async def handle_callback(request: web.Request) -> web.Response:
    """A message or event: 200 with an empty body once stored (or already stored); 403/400 if refused;
    503 if the database cannot take it, so that WeCom retries instead of the callback being lost."""
    rt = request.app[RUNTIME]
    crypto = _crypto_or_503(request)
    body = await request.read()
    q = request.query
    try:
        plaintext = crypto.decrypt_body(
            body, q.get("msg_signature", ""), q.get("timestamp", ""), q.get("nonce", ""),
            now=rt.clock.now().timestamp(),
        )
        msg = parse_inbound(plaintext)
    except (CallbackForbidden, CallbackMalformed) as exc:
        return _refuse(request, exc)
    try:
        await rt.inbox_store.put(msg, rt.clock.now())
    except Exception as exc:
        if not answered_unavailable(request, exc):
            log.exception("could not store callback %s; answering 503 so WeCom retries", msg.kind)
        return web.Response(status=503, text="temporarily unavailable")
    rt.metrics.callbacks_received.labels(source=msg.source).inc()
    rt.inbox.wake()
    return web.Response(text="")
