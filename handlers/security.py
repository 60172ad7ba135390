"""Security headers on every response; a strict Content-Security-Policy on pages."""

from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import web

from bot.app import RUNTIME

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)


@web.middleware
async def security_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
        _apply(response)
        raise
    _apply(response)
    return response


def _apply(response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("X-Frame-Options", "DENY")
    if (response.content_type or "").startswith("text/html"):
        headers.setdefault("Content-Security-Policy", CSP)


PUBLIC_PREFIXES = ("/l/", "/sidebar")


def client_ip(request: web.Request, trusted: list[str]) -> str:
    """The peer address; behind a trusted proxy, the last address it appended to X-Forwarded-For."""
    peer = request.remote or ""
    forwarded = request.headers.get("X-Forwarded-For", "")
    if peer in trusted and forwarded:
        return forwarded.split(",")[-1].strip() or peer
    return peer


@web.middleware
async def ip_rate_limit(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Public pages are reachable by anyone: one address gets at most N requests a minute (429)."""
    if not request.path.startswith(PUBLIC_PREFIXES):
        return await handler(request)
    rt = request.app[RUNTIME]
    limiter = rt.ip_limiter
    if limiter is None:
        return await handler(request)
    ip = client_ip(request, rt.settings.security.trusted_proxies)
    if not limiter.allow(ip, rt.clock.now().timestamp()):
        return web.Response(status=429, text="too many requests", headers={"Retry-After": "60"})
    return await handler(request)
